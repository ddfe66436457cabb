"""One prepared GPU check: the CUDA tests, training-step and loop throughput, a short train +
evaluate run, and a val2017-sized evaluation; everything as JSON plus a log.

    bash tools/gpu_check.sh                          # on the GPU machine (see its header)
    bash tools/gpu_check.sh --cpu-small              # every part at tiny sizes on the CPU
    python tools/gpu_check.py --device cpu --small --parts step eval --out /tmp/check

Parts, in this order, each in its own process group under its own time limit (its share of
``--budget`` plus what earlier parts left unused). A part that fails or runs out of time is
recorded in the JSON with its error and whatever it measured before; the next part runs.

``env``     torch, CUDA, GPU, driver, cores, and which optional packages import.
``pytest``  ``pytest -m gpu tests/test_gpu.py``: counts and failures. On the CPU it runs the
            same tests against the CPU itself (``PSAPOSE_GPU_TEST_DEVICE=cpu``): that proves
            the tests run, it compares nothing.
``step``    the training step (forward under autocast, the trainer's loss, backward, Adam
            step) of HRNet-W32 at 256x192 on a resident batch, for ``attention=none``,
            ``psa_parallel`` and ``psa_sequential``, bf16, channels-last, at batch 64 and 128
            eager, then ``torch.compile``d at the faster batch (each compile in a process of
            its own, so a slow one is cut off alone): images/s, the ratio of each step time
            to ``none``'s at the same settings, peak memory, the first step's time (cuDNN
            autotuning or compilation).
``loop``    the trainer's own ``train_step`` fed by a DataLoader over real JPEGs (the
            trainer's loader settings: pinned memory, persistent workers, as many workers as
            cores less one) with the full augmentation and device-side targets, beside the
            same ``train_step`` on one resident batch, the loader alone, and one worker's
            samples/s in one process; it names the limit and the workers the step would need.
``e2e``     ``tools/train.py experiment=quickstart device=...`` on the built-in synthetic
            data (written to a temporary folder), then its AP table (detector boxes, flip
            test, OKS-NMS).
``eval``    ``tools/benchmark.py eval --device ...`` at val2017 size (5,000 images, 104,125
            boxes): flip averaging, decoding and OKS-NMS on the device, against the
            per-instance NumPy reference on a share of the images.

Real JPEGs for ``loop``: ``--coco-mini DIR`` (a COCO layout; ``../shared/data/coco_mini``
copied into the ignored ``data/coco_mini`` and carried to the GPU machine), else
``$PSAPOSE_COCO_MINI``, ``data/coco_mini``, ``../shared/data/coco_mini``; without one it
writes synthetic JPEGs and says so in the JSON (``loop.result.data``).

Output: ``gpu_check.json`` and ``gpu_check.log`` in ``--out`` (default ``$OUT``, else
``runs/gpu_check/<time>``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import importlib
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# The repository (an editable install, or PYTHONPATH=$PWD as tools/gpu_check.sh sets): the
# parts run its tests and `python tools/train.py` there.
ROOT = Path(__file__).resolve().parents[2]
# Each part, and each step measurement, runs in a process of its own: `python -m SELF ...`.
SELF = "psapose.commands.gpu_check"

PARTS = ("env", "pytest", "step", "loop", "e2e", "eval")
ATTENTIONS = ("none", "psa_parallel", "psa_sequential")
# Each part's share of --budget (seconds at the default 400): compile and cuDNN autotuning
# dominate ``step``; the rest is bounded by the step counts below.
SHARES = {"env": 15, "pytest": 70, "step": 135, "loop": 60, "e2e": 75, "eval": 45}
DEFAULT_BUDGET = 400.0  # well inside the 8 minutes of one device call
SMALL_BUDGET = 420.0  # the CPU-small mode on a shared 2-core machine
GOALS = {"psa_step_img_s": 2000.0, "psa_step_ratio": 1.10, "loop_to_step": 0.90}

# Sizes: the full check on a GPU, and the CPU-small mode that proves the script runs.
FULL = {
    "step": {
        "backbone": "hrnet_w32", "input_size": [256, 192], "batches": [64, 128],
        "warmup": 5, "steps": 20, "step_seconds": 6.0,
        "compile": ["psa_parallel", "none", "psa_sequential"],  # the goal's pair first
        "compile_backend": "inductor",
    },
    "loop": {
        "backbone": "hrnet_w32", "attention": "psa_parallel", "input_size": [256, 192],
        "batch": 64, "steps": 200, "loop_seconds": 25.0, "step_alone": 30,
        "loader_batches": 100, "loader_seconds": 10.0, "worker_samples": 200,
        "synthetic_images": 64,
    },
    "e2e": {"images": None, "val_images": None, "overrides": ["workers=8"]},
    "eval": {"images": 5000, "chunk": 2048, "reference_fraction": 0.02},
}  # fmt: skip
SMALL = {
    "step": {
        "backbone": "quickstart", "input_size": [96, 64], "batches": [2, 4],
        "warmup": 1, "steps": 3, "step_seconds": 3.0, "compile": ["psa_parallel"],
        "compile_backend": "eager",
    },
    "loop": {
        "backbone": "quickstart", "attention": "psa_parallel", "input_size": [96, 64],
        "batch": 4, "steps": 6, "loop_seconds": 10.0, "step_alone": 3,
        "loader_batches": 4, "loader_seconds": 5.0, "worker_samples": 12,
        "synthetic_images": 8,
    },
    "e2e": {
        "images": 6, "val_images": 3,
        "overrides": ["schedule.epochs=1", "schedule.batch_size=4", "workers=0", "eval.images=1"],
    },
    "eval": {"images": 12, "chunk": 128, "reference_fraction": 1.0},
}  # fmt: skip


# ============================================================================ shared helpers
def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _sync(device: Any) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class _PartResult:
    """A part's result dict, written to its file after every update, so a part cut off by
    its time limit still leaves what it measured."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {}

    def update(self, **values: Any) -> None:
        self.data.update(values)
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=_json_default))
        os.replace(tmp, self.path)


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become None (strict JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


# ============================================================================ env
def part_env(cfg: dict, out: _PartResult) -> None:
    import cv2
    import numpy as np
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cores": _cores(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "device": cfg["device"],
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
        )
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,power.limit",
                 "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20, check=False,
            )  # fmt: skip
            info["nvidia_smi"] = smi.stdout.strip()
    packages = {}
    for name in ("hydra", "omegaconf", "pycocotools", "tensorboard", "yaml"):
        try:
            module = importlib.import_module(name)
            packages[name] = {
                "version": getattr(module, "__version__", "?"),
                "from": str(Path(module.__file__).parent),
            }
        except Exception as err:  # any import failure is the finding itself
            packages[name] = {"error": f"{type(err).__name__}: {err}"}
    info["packages"] = packages
    # torchvision may not import with this torch build (it crashes some): ask a child process.
    probe = subprocess.run(
        [sys.executable, "-c", "import torchvision; print(torchvision.__version__)"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    info["torchvision"] = (
        probe.stdout.strip() if probe.returncode == 0 else f"no ({probe.stderr.strip()[-200:]})"
    )
    out.update(**info)


# ============================================================================ pytest
def part_pytest(cfg: dict, out: _PartResult) -> None:
    """Two pytest runs: every gpu test but the compile one, then that one with the time left
    (a compile that outlasts the budget must not take the other tests' results with it)."""
    env = dict(os.environ)
    dry_run = cfg["device"] == "cpu"
    if dry_run:
        env["PSAPOSE_GPU_TEST_DEVICE"] = "cpu"
    out.update(command="pytest -m gpu tests/test_gpu.py", dry_run_on_cpu=dry_run, runs=[])
    deadline = time.perf_counter() + cfg["limit_s"] - 5
    totals = dict.fromkeys(("tests", "passed", "failures", "errors", "skipped"), 0)
    failed: list[dict[str, str]] = []
    extra = f" and ({cfg['pytest_k']})" if cfg.get("pytest_k") else ""
    for index, select in enumerate((f"not compile{extra}", f"compile{extra}")):
        junit = Path(cfg["tmp"]) / f"pytest_gpu_{index}.xml"
        command = [
            sys.executable, "-m", "pytest", "-m", "gpu", "tests/test_gpu.py", "-k", select,
            "-q", "-rfEs", "-p", "no:cacheprovider", f"--junitxml={junit}",
        ]  # fmt: skip
        start = time.perf_counter()
        try:
            proc = subprocess.run(
                command, cwd=ROOT, env=env, capture_output=True, text=True,
                timeout=max(5.0, deadline - start), check=False,
            )  # fmt: skip
            returncode, log = proc.returncode, proc.stdout[-20000:] + proc.stderr[-5000:]
        except subprocess.TimeoutExpired as err:
            returncode, log = None, f"-k {select!r}: not finished within {err.timeout:.0f} s"
        print(log, flush=True)
        counts, failures = _junit_summary(junit)
        for key in totals:
            totals[key] += counts.get(key, 0)
        failed += failures
        out.data["runs"].append({"select": select, "returncode": returncode,
                                 "seconds": round(time.perf_counter() - start, 1), **counts})  # fmt: skip
        out.update(**totals, failed_tests=failed)
    bad = [r for r in out.data["runs"] if r["returncode"] not in (0, 5)]
    if bad or totals["failures"] or totals["errors"]:
        raise RuntimeError(f"pytest -m gpu: {totals}, failed: {[f['test'] for f in failed]}")


def _junit_summary(path: Path) -> tuple[dict[str, int], list[dict[str, str]]]:
    if not path.is_file():
        return {}, []
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    failed = []
    for case in suite.iter("testcase"):
        for tag in ("failure", "error"):
            node = case.find(tag)
            if node is not None:
                message = (node.get("message") or node.text or "")[:600]
                failed.append({"test": f"{case.get('classname')}::{case.get('name')}",
                               "kind": tag, "message": message})  # fmt: skip
    return counts, failed


# ============================================================================ step
def _build_model(backbone: str, attention: str, device: Any) -> Any:
    import torch

    from psapose.config import build_model, compose_config

    torch.manual_seed(0)
    model = build_model(compose_config([f"model={backbone}", f"attention={attention}"]))
    return model.to(device).to(memory_format=torch.channels_last).train()


def _resident_batch(batch: int, size: list[int], device: Any) -> tuple[Any, Any, Any]:
    """Normalised channels-last images and UDP targets of random visible keypoints."""
    import torch

    from psapose.codecs import UDPHeatmap

    h, w = size
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, h, w, generator=g).contiguous(memory_format=torch.channels_last)
    keypoints = torch.rand(batch, 17, 2, generator=g) * torch.tensor([w - 1.0, h - 1.0])
    visible = (torch.rand(batch, 17, generator=g) < 0.8).float()
    targets, weights = UDPHeatmap(input_size=(h, w)).encode(keypoints, visible)
    return images.to(device), targets.to(device), weights.to(device)


class _PeakMemory:
    """Peak memory over a span: ``torch.cuda.max_memory_allocated`` on a GPU; on the CPU the
    peak resident set size (the kernel's high-water mark, reset through clear_refs)."""

    def __init__(self, device: Any) -> None:
        import torch

        self.device = torch.device(device)

    def reset(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")

    def peak_mib(self) -> dict[str, float | None]:
        import torch

        if self.device.type == "cuda":
            return {
                "peak_allocated_mib": round(torch.cuda.max_memory_allocated(self.device) / 2**20),
                "peak_reserved_mib": round(torch.cuda.max_memory_reserved(self.device) / 2**20),
            }
        try:
            status = Path("/proc/self/status").read_text().splitlines()
            hwm = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
            return {"peak_rss_mib": round(hwm / 1024)}
        except (OSError, StopIteration):
            return {"peak_rss_mib": None}


def measure_step(spec: dict) -> dict[str, Any]:
    """Training-step throughput of one configuration on a resident batch (see ``step``)."""
    import torch

    from psapose.data import load_keypoint_spec
    from psapose.engine.inference import autocast
    from psapose.engine.loss import build_loss

    device = torch.device(spec["device"])
    torch.backends.cudnn.benchmark = spec.get("cudnn_benchmark", True)
    model = _build_model(spec["backbone"], spec["attention"], device)
    joint_weights = torch.from_numpy(load_keypoint_spec("coco").joint_weights_array)
    loss_fn = build_loss(1, joint_weights).to(device)
    images, targets, weights = _resident_batch(spec["batch"], spec["input_size"], device)
    # The trainer's default: Adam, fused where torch can.
    from psapose.engine.components import fused_optimizer_supported

    fused = {"fused": True} if fused_optimizer_supported(device) else {}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, **fused)
    backend = spec.get("compile_backend")
    forward = torch.compile(model, backend=backend) if backend else model
    precision = spec["precision"]

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            heatmaps = forward(images)
        loss_fn(heatmaps, targets, weights).backward()
        optimizer.step()

    memory = _PeakMemory(device)
    start = time.perf_counter()
    step()  # compilation, cuDNN autotuning, allocator warm-up
    _sync(device)
    first = time.perf_counter() - start
    for _ in range(spec["warmup"]):
        step()
    _sync(device)
    times: list[float] = []
    with contextlib.ExitStack() as stack:
        if spec.get("lock"):  # the device to this process alone while it is timed
            import fcntl

            fcntl.flock(stack.enter_context(open(spec["lock"], "a")), fcntl.LOCK_EX)
        memory.reset()
        deadline = time.perf_counter() + spec["step_seconds"]
        while len(times) < spec["steps"] and (len(times) < 3 or time.perf_counter() < deadline):
            t0 = time.perf_counter()
            step()
            _sync(device)
            times.append(time.perf_counter() - t0)
    times.sort()
    median = times[len(times) // 2]
    return {
        "attention": spec["attention"],
        "batch": spec["batch"],
        "compile": backend or False,
        "cudnn_benchmark": torch.backends.cudnn.benchmark if device.type == "cuda" else None,
        "first_step_s": round(first, 2),
        "steps": len(times),
        "step_ms_median": round(median * 1e3, 2),
        "step_ms_best": round(times[0] * 1e3, 2),
        "images_per_s": round(spec["batch"] / median, 1),
        **memory.peak_mib(),
    }


def part_step(cfg: dict, out: _PartResult) -> None:
    import torch

    sizes = cfg["sizes"]["step"]
    device = cfg["device"]
    base = {
        "device": device, "backbone": sizes["backbone"], "input_size": sizes["input_size"],
        "precision": cfg["precision"], "warmup": sizes["warmup"], "steps": sizes["steps"],
        "step_seconds": sizes["step_seconds"],
    }  # fmt: skip
    out.update(
        backbone=sizes["backbone"], input_size=sizes["input_size"], precision=cfg["precision"],
        channels_last=True, optimizer="Adam (the trainer's default)",
        timing="median of the timed steps after warm-up, synchronised; resident batch",
        rows=[], skipped=[],
    )  # fmt: skip
    deadline = time.perf_counter() + cfg["limit_s"] - 5
    rows: list[dict] = out.data["rows"]
    for batch in sizes["batches"]:
        for attention in ATTENTIONS:
            if time.perf_counter() > deadline - 10:
                out.data["skipped"].append(f"{attention} batch {batch}: time budget")
                continue
            try:
                rows.append(measure_step({**base, "attention": attention, "batch": batch}))
            except torch.OutOfMemoryError as err:
                rows.append({"attention": attention, "batch": batch, "compile": False,
                             "error": f"out of memory: {str(err)[:200]}"})  # fmt: skip
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            _add_ratios(rows)
            out.save()
    best = _best_batch(rows, sizes["batches"])
    out.update(best_eager_batch=best)
    if device != "cpu" and deadline - time.perf_counter() > 30:
        # The trainer as it is leaves cudnn.benchmark off; this row shows what that costs.
        rows.append(measure_step({**base, "attention": "psa_parallel", "batch": best,
                                  "cudnn_benchmark": False}))  # fmt: skip
        _add_ratios(rows)
        out.save()
    if cfg.get("skip_compile"):
        return
    # Compiled runs: each in a process of its own, all compiling at once (compilation is host
    # work), their timed steps one at a time (a file lock); one that outlasts the budget is
    # cut off alone, without losing the rows above.
    specs = [{**base, "attention": attention, "batch": best, "lock": cfg["tmp"] + "/gpu.lock",
              "compile_backend": sizes["compile_backend"]} for attention in sizes["compile"]]  # fmt: skip
    for row in _run_isolated(specs, deadline - time.perf_counter(), Path(cfg["tmp"])):
        rows.append(row)
        _add_ratios(rows)
        out.save()


def _run_isolated(specs: list[dict], limit: float, tmp: Path) -> Iterator[dict]:
    """``measure_step`` of each spec in a child process, all started at once, within ``limit``
    seconds in all; yields their rows in order (a failure or timeout becomes the row's error)."""
    # Inductor's compile workers per process: the host keeps cores free for the timed steps.
    env = {**os.environ, "TORCHINDUCTOR_COMPILE_THREADS": str(max(1, _cores() // (len(specs) + 1)))}
    deadline = time.perf_counter() + limit
    running = []
    for index, spec in enumerate(specs):
        stdout, stderr = tmp / f"measure_{index}.out", tmp / f"measure_{index}.err"
        with open(stdout, "w") as so, open(stderr, "w") as se:  # files, not pipes: no stalls
            proc = subprocess.Popen(
                [sys.executable, "-m", SELF, "--measure-step", json.dumps(spec)],
                cwd=ROOT, stdout=so, stderr=se, env=env, start_new_session=True,
            )  # fmt: skip
        running.append((spec, proc, stdout, stderr))
    for spec, proc, stdout, stderr in running:
        row = {"attention": spec["attention"], "batch": spec["batch"],
               "compile": spec.get("compile_backend") or False}  # fmt: skip
        try:
            proc.wait(timeout=max(1.0, deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            yield {**row, "error": f"not finished within {limit:.0f} s (time budget)"}
            continue
        err = stderr.read_text()
        print(err[-3000:], flush=True)
        lines = stdout.read_text().strip().splitlines()
        if proc.returncode != 0 or not lines:
            yield {**row, "error": f"exit {proc.returncode}: {err.strip()[-600:]}"}
        else:
            yield json.loads(lines[-1])


def _add_ratios(rows: list[dict]) -> None:
    """Each row's step time over ``none``'s at the same batch, compile and cuDNN setting."""
    key = ("batch", "compile", "cudnn_benchmark")
    base = {tuple(r.get(k) for k in key): r for r in rows if r["attention"] == "none"}
    for r in rows:
        none = base.get(tuple(r.get(k) for k in key))
        if "step_ms_median" in r and none is not None and "step_ms_median" in none:
            r["ratio_to_none"] = round(r["step_ms_median"] / none["step_ms_median"], 3)


def _best_batch(rows: list[dict], batches: list[int]) -> int:
    """The batch at which the eager psa_parallel step is fastest (images/s)."""
    psa = [r for r in rows if r["attention"] == "psa_parallel" and "images_per_s" in r]
    if not psa:
        return batches[0]
    return max(psa, key=lambda r: r["images_per_s"])["batch"]


# ============================================================================ loop
def _find_coco_mini(cfg: dict) -> Path | None:
    candidates = [cfg.get("coco_mini"), os.environ.get("PSAPOSE_COCO_MINI"),
                  ROOT / "data" / "coco_mini", ROOT.parent / "shared" / "data" / "coco_mini"]  # fmt: skip
    for c in candidates:
        if c and (Path(c) / "annotations" / "person_keypoints_train2017.json").is_file():
            return Path(c).resolve()
    return None


class _Repeated:
    """A dataset read ``length`` times over: item ``i`` is sample ``i % n`` drawn for epoch
    ``i // n``, so every pass has a fresh augmentation and the loader never restarts."""

    def __init__(self, dataset: Any, length: int) -> None:
        self.dataset, self.length = dataset, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Any:
        n = len(self.dataset)
        return self.dataset[(index % n, index // n)]


def part_loop(cfg: dict, out: _PartResult) -> None:
    import cv2
    import torch
    from torch.utils.data import DataLoader

    from psapose.config import compose_config
    from psapose.engine.trainer import Trainer

    sizes = cfg["sizes"]["loop"]
    device = cfg["device"]
    batch = int(cfg.get("batch") or sizes["batch"])
    workers = cfg["workers"] if cfg["workers"] is not None else max(1, _cores() - 1)
    root = _find_coco_mini(cfg)
    if root is not None:
        data = {"source": "coco_mini", "root": str(root), "real_jpegs": True}
    else:
        from psapose.data.synthetic import generate_synthetic_coco

        root = Path(cfg["tmp"]) / "synthetic_jpegs"
        generate_synthetic_coco(
            root, images=sizes["synthetic_images"], val_images=1, difficulty="standard",
            force=True, workers=min(8, _cores()),
        )  # fmt: skip
        data = {"source": "synthetic", "root": str(root), "real_jpegs": False,
                "images": sizes["synthetic_images"],
                "note": "no COCO data found (--coco-mini): synthetic JPEGs of 320x256, smaller "
                "than COCO's (~600x480), so decoding is cheaper than on real data"}  # fmt: skip
    h, w = sizes["input_size"]
    overrides = [
        f"model={sizes['backbone']}", f"attention={sizes['attention']}", "data=coco",
        f"data.root={root}", "data.val.use_gt_boxes=true", f"input_size=[{h},{w}]",
        f"device={device}", f"precision={cfg['precision']}", f"schedule.batch_size={batch}",
        f"workers={workers}", "compile=false", f"output_dir={Path(cfg['tmp']) / 'loop_run'}",
    ]  # fmt: skip
    trainer = Trainer(compose_config(overrides), Path(cfg["tmp"]) / "loop_run")
    # As the step part: the trainer itself leaves cuDNN autotuning off (see the report).
    torch.backends.cudnn.benchmark = device != "cpu"
    dataset = trainer.train_set
    settings = {k: getattr(trainer.loader, k) for k in
                ("num_workers", "pin_memory", "persistent_workers", "prefetch_factor")}  # fmt: skip
    out.update(data=data, samples=len(dataset), batch=batch, workers=workers,
               backbone=sizes["backbone"], attention=sizes["attention"], input_size=[h, w],
               precision=cfg["precision"], trainer_loader=settings)  # fmt: skip

    # One worker in one process, as a DataLoader worker: read, augment, crop, to tensors.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    count = sizes["worker_samples"]
    for i in range(min(8, count)):
        dataset[(i % len(dataset), 0)]
    t0 = time.perf_counter()
    for i in range(count):
        dataset[(i % len(dataset), 1 + i // len(dataset))]
    per_worker = count / (time.perf_counter() - t0)
    torch.set_num_threads(threads)
    cv2.setNumThreads(-1)
    out.update(per_worker_samples_per_s=round(per_worker, 1))

    total = batch * (sizes["step_alone"] + sizes["loader_batches"] + 4 * sizes["steps"] + 200)
    loader = DataLoader(
        _Repeated(dataset, total), batch_size=batch, shuffle=False, drop_last=True,
        num_workers=settings["num_workers"], pin_memory=settings["pin_memory"],
        persistent_workers=settings["persistent_workers"],
        prefetch_factor=settings["prefetch_factor"],
        worker_init_fn=trainer.loader.worker_init_fn,
    )  # fmt: skip
    depth = workers * (settings["prefetch_factor"] or 2) if workers else 1
    batches = iter(loader)
    t0 = time.perf_counter()
    first = next(batches)
    out.update(first_batch_s=round(time.perf_counter() - t0, 2))

    # The trainer's step alone, on one batch kept in memory (as the loop, minus the loader).
    for _ in range(2):
        trainer.train_step(first)
    _sync(trainer.device)
    n, t0 = 0, time.perf_counter()
    while n < sizes["step_alone"]:
        trainer.train_step(first)
        n += 1
    _sync(trainer.device)
    step_alone = n * batch / (time.perf_counter() - t0)
    out.update(step_alone_images_per_s=round(step_alone, 1))

    # The loader alone, past the batches prefetched meanwhile.
    for _ in range(depth):
        next(batches)
    n, t0 = 0, time.perf_counter()
    deadline = t0 + sizes["loader_seconds"]
    while n < sizes["loader_batches"] and (n < 2 or time.perf_counter() < deadline):
        next(batches)
        n += 1
    loader_alone = n * batch / (time.perf_counter() - t0)
    out.update(loader_alone_images_per_s=round(loader_alone, 1), loader_batches=n)

    # The loop: the loader feeding the trainer's step, as in Trainer.train_epoch.
    for _ in range(min(depth, sizes["steps"])):
        trainer.train_step(next(batches))
    _sync(trainer.device)
    n, wait = 0, 0.0
    t0 = time.perf_counter()
    deadline = t0 + sizes["loop_seconds"]
    while n < sizes["steps"] and (n < 3 or time.perf_counter() < deadline):
        t1 = time.perf_counter()
        item = next(batches)
        wait += time.perf_counter() - t1
        trainer.train_step(item)
        n += 1
    _sync(trainer.device)
    elapsed = time.perf_counter() - t0
    loop = n * batch / elapsed
    ratio = loop / step_alone
    if ratio >= GOALS["loop_to_step"]:
        limit = "the model step (the loader keeps up)"
    elif loader_alone < step_alone:
        limit = "the input pipeline (the loader alone is slower than the step)"
    else:
        limit = "neither alone: host contention between the loader and the step"
    out.update(
        loop_images_per_s=round(loop, 1), loop_steps=n,
        loop_data_wait_fraction=round(wait / elapsed, 3),
        loop_to_step_ratio=round(ratio, 3), limit=limit,
        workers_needed_for_step=float(f"{step_alone / per_worker:.3g}"),
    )  # fmt: skip
    del batches, loader


# ============================================================================ e2e
def _quickstart_synthetic_options() -> dict[str, Any]:
    """The synthetic dataset the quick-start preset writes (its size, seed and difficulty)."""
    from omegaconf import OmegaConf

    from psapose.config import compose_config

    data = compose_config(["experiment=quickstart"]).data
    for key in ("synthetic", "generate"):  # where the generator's options live in the config
        node = data.get(key)
        if OmegaConf.is_dict(node):
            return dict(OmegaConf.to_container(node, resolve=True))
    return {}


def part_e2e(cfg: dict, out: _PartResult) -> None:

    from psapose.data.synthetic import generate_synthetic_coco

    sizes = cfg["sizes"]["e2e"]
    tmp = Path(cfg["tmp"])
    run_dir, data_root = tmp / "e2e_run", tmp / "e2e_synthetic"
    # The quick start's dataset, written here (not under data/), with all cores.
    options = _quickstart_synthetic_options()
    for key in ("images", "val_images"):
        if sizes[key] is not None:
            options[key] = sizes[key]
    start = time.perf_counter()
    generate_synthetic_coco(data_root, workers=min(8, _cores()), **options)
    out.update(synthetic=options, generate_s=round(time.perf_counter() - start, 1))
    command = [
        sys.executable, "tools/train.py", "experiment=quickstart", f"device={cfg['device']}",
        f"data.root={data_root}", f"output_dir={run_dir}", f"hydra.run.dir={tmp / 'e2e_hydra'}",
        *sizes["overrides"],
    ]  # fmt: skip
    out.update(command=" ".join(command[1:]))
    start = time.perf_counter()
    proc = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True,
        timeout=max(10.0, cfg["limit_s"] - 10), check=False,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    log = proc.stdout + proc.stderr
    print(log[-6000:], flush=True)
    out.update(seconds=round(seconds, 1), returncode=proc.returncode)
    if proc.returncode != 0:
        raise RuntimeError(f"tools/train.py exited {proc.returncode}: {log.strip()[-800:]}")
    from psapose.checkpoint import load_checkpoint_file

    state = load_checkpoint_file(run_dir / "checkpoints" / "latest.pth")  # checksum verified
    history = state["history"]
    last = history[-1]
    from psapose.evaluation import STAT_NAMES

    stats = {k: round(float(last[k]), 4) for k in STAT_NAMES if k in last}
    table = log[log.find("AP table") :].splitlines()[1:3] if "AP table" in log else []
    # The trainer's progress lines: "epoch E/N B/T R img/s ...".
    rates = re.findall(r"epoch \d+/\d+ \d+/\d+ ([\d.]+) img/s", log)
    out.update(epochs=len(history), stats=stats, table=table,
               images_per_s_last_logged=float(rates[-1]) if rates else None)  # fmt: skip
    if not stats:
        raise RuntimeError("no AP table in the run's history")


# ============================================================================ eval
def part_eval(cfg: dict, out: _PartResult) -> None:
    import psapose.benchmarks.eval as bench_eval

    sizes = cfg["sizes"]["eval"]
    parser = argparse.ArgumentParser()
    bench_eval.register(parser.add_subparsers(dest="part"))
    argv = [
        "eval", "--images", str(sizes["images"]), "--chunk", str(sizes["chunk"]),
        "--reference-fraction", str(sizes["reference_fraction"]), "--device", cfg["device"],
        "--threads", str(max(1, min(8, _cores()))),
    ]  # fmt: skip
    out.update(command="tools/benchmark.py " + " ".join(argv))
    result = bench_eval.run_eval(parser.parse_args(argv))
    bench_eval.print_eval(result)
    out.update(**result)
    if not (result["same_ap"] and result["same_results"]["same_people_and_order"]):
        raise RuntimeError("the device path and the reference disagree (see same_results)")


PART_FUNCTIONS: dict[str, Callable[[dict, _PartResult], None]] = {
    "env": part_env, "pytest": part_pytest, "step": part_step, "loop": part_loop,
    "e2e": part_e2e, "eval": part_eval,
}  # fmt: skip


def _run_part_here(name: str, cfg_path: Path, result_path: Path) -> int:
    """Child-process entry: run one part, its result (or error) in ``result_path``."""
    cfg = json.loads(cfg_path.read_text())
    out = _PartResult(result_path)
    out.save()
    try:
        PART_FUNCTIONS[name](cfg, out)
    except BaseException as err:  # recorded, then the parent goes on with the next part
        import traceback

        traceback.print_exc()
        out.update(error=f"{type(err).__name__}: {err}"[:2000])
        return 1
    return 0


# ============================================================================ the driver
def _stream(proc: subprocess.Popen, log: Any) -> None:
    for line in proc.stdout:
        sys.stdout.write(line)
        log.write(line)
    sys.stdout.flush()
    log.flush()


def run_part(name: str, cfg: dict, limit: float, log: Any) -> dict[str, Any]:
    """One part in its own process group, killed (with its workers) at ``limit`` seconds."""
    tmp = Path(cfg["tmp"])
    cfg_path, result_path = tmp / f"{name}.config.json", tmp / f"{name}.result.json"
    cfg_path.write_text(json.dumps({**cfg, "limit_s": limit}))
    header = f"\n===== {name} (limit {limit:.0f} s) {_now()} =====\n"
    sys.stdout.write(header)
    log.write(header)
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", SELF, "--run-part", name, str(cfg_path), str(result_path)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    reader = threading.Thread(target=_stream, args=(proc, log), daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        timed_out = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the part and everything it started
        proc.wait()
    reader.join(timeout=10)
    seconds = time.perf_counter() - start
    result = json.loads(result_path.read_text()) if result_path.is_file() else {}
    error = result.pop("error", None)
    if timed_out:
        status, error = "timeout", f"stopped at its time limit of {limit:.0f} s"
    elif proc.returncode != 0 or error:
        status = "failed"
        error = error or f"exit {proc.returncode}"
    else:
        status = "ok"
    return _clean({"status": status, "seconds": round(seconds, 1), "limit_s": round(limit),
                   "error": error, "result": result})  # fmt: skip


def _goals(parts: dict[str, dict]) -> dict[str, Any]:
    """The issue's GPU goals from the parts' figures (None where a figure is missing)."""
    goals: dict[str, Any] = {}
    rows = parts.get("step", {}).get("result", {}).get("rows", [])
    psa = [r for r in rows if r["attention"] == "psa_parallel" and "images_per_s" in r
           and r.get("cudnn_benchmark") is not False]  # fmt: skip
    best = max(psa, key=lambda r: r["images_per_s"]) if psa else None
    goals["psa_parallel_step_images_per_s"] = {
        "goal": f">= {GOALS['psa_step_img_s']:.0f}",
        "value": best["images_per_s"] if best else None,
        "at": {k: best[k] for k in ("batch", "compile")} if best else None,
        "met": best["images_per_s"] >= GOALS["psa_step_img_s"] if best else None,
    }
    # The ratio at the fastest PSA setting that has a plain row beside it.
    paired = [r for r in psa if "ratio_to_none" in r]
    fastest = max(paired, key=lambda r: r["images_per_s"]) if paired else None
    ratio = fastest["ratio_to_none"] if fastest else None
    goals["psa_parallel_step_ratio_to_none"] = {
        "goal": f"<= {GOALS['psa_step_ratio']:.2f}", "value": ratio,
        "at": {k: fastest[k] for k in ("batch", "compile")} if fastest else None,
        "met": ratio <= GOALS["psa_step_ratio"] if ratio is not None else None,
    }  # fmt: skip
    loop = parts.get("loop", {}).get("result", {})
    value = loop.get("loop_to_step_ratio")
    goals["loop_to_step_ratio"] = {
        "goal": f">= {GOALS['loop_to_step']:.2f}", "value": value,
        "real_jpegs": loop.get("data", {}).get("real_jpegs"),
        "met": value >= GOALS["loop_to_step"] if value is not None else None,
    }  # fmt: skip
    ev = parts.get("eval", {}).get("result", {})
    goals["eval_on_device"] = {
        "fast_total_s": ev.get("fast_total_s"), "boxes": ev.get("boxes"),
        "same_results_as_reference": ev.get("same_ap"),
    }  # fmt: skip
    return goals


def _summary(report: dict) -> str:
    lines = [f"gpu_check {report['mode']} on {report['device']}: {report['wall_s']} s"]
    for name, part in report["parts"].items():
        lines.append(f"  {name:<7} {part['status']:<8} {part['seconds']:>7.1f} s"
                     + (f"  {part['error'][:160]}" if part["error"] else ""))  # fmt: skip
    rows = report["parts"].get("step", {}).get("result", {}).get("rows", [])
    if rows:
        lines.append("  step: attention, batch, compile -> img/s, ratio to none, peak MiB")
        for r in rows:
            memory = r.get("peak_allocated_mib", r.get("peak_rss_mib"))
            figures = (f"{r['images_per_s']:>8.1f} img/s  ratio {r.get('ratio_to_none', '-')}"
                       f"  peak {memory} MiB" if "images_per_s" in r else r.get("error", ""))  # fmt: skip
            extra = " (cudnn.benchmark off)" if r.get("cudnn_benchmark") is False else ""
            lines.append(f"    {r['attention']:<15} {r['batch']:>4} {r['compile']!s:<9} "
                         f"{figures}{extra}")  # fmt: skip
    loop = report["parts"].get("loop", {}).get("result", {})
    if "loop_images_per_s" in loop:
        lines.append(
            f"  loop ({loop['data']['source']}, {loop['workers']} workers, batch {loop['batch']}):"
            f" loop {loop['loop_images_per_s']} img/s, step alone "
            f"{loop['step_alone_images_per_s']}, loader alone {loop['loader_alone_images_per_s']},"
            f" one worker {loop['per_worker_samples_per_s']}/s; ratio "
            f"{loop['loop_to_step_ratio']}; limit: {loop['limit']}"
        )
    e2e = report["parts"].get("e2e", {}).get("result", {})
    if e2e.get("stats"):
        lines.append(f"  e2e AP table ({e2e.get('epochs')} epochs):")
        names = list(e2e["stats"])
        lines.append("    " + " ".join(f"{k:>6}" for k in names))
        lines.append("    " + " ".join(f"{e2e['stats'][k]:>6.4f}" for k in names))
    ev = report["parts"].get("eval", {}).get("result", {})
    if "fast_s" in ev:
        stages = ", ".join(f"{k} {v:.2f}" for k, v in ev["fast_s"].items())
        lines.append(f"  eval ({ev['boxes']} boxes on {ev['device']}, NMS on "
                     f"{ev['nms_device']}): {ev['fast_total_s']:.2f} s ({stages}); same "
                     f"results as the reference: {ev['same_ap']}")  # fmt: skip
    for name, goal in report["goals"].items():
        lines.append(f"  goal {name}: {json.dumps(goal)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default=None, help="cuda (default when there is one) or cpu")
    parser.add_argument("--small", action="store_true", help="tiny sizes (the CPU-small mode)")
    parser.add_argument("--out", default=None, help="output folder (default $OUT)")
    parser.add_argument("--budget", type=float, default=None,
                        help=f"seconds for all parts (default {DEFAULT_BUDGET:.0f}; "
                        f"{SMALL_BUDGET:.0f} with --small)")  # fmt: skip
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--coco-mini", default=None, help="COCO-layout folder of real JPEGs")
    parser.add_argument("--skip-compile", action="store_true", help="no torch.compile rows")
    parser.add_argument("--pytest-k", default=None, help="only the gpu tests matching this -k")
    parser.add_argument("--workers", type=int, default=None,
                        help="loop DataLoader workers (default: cores less one)")  # fmt: skip
    parser.add_argument(
        "--precision", choices=("bf16", "fp16", "fp32"), default=None,
        help="autocast of the step, loop and e2e parts (default bf16 on a GPU; fp32 on the "
        "CPU, where bf16 is emulated and slow: the tests' dry run covers autocast there)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    precision = args.precision or ("fp32" if device == "cpu" else "bf16")
    mode = "small" if args.small else "full"
    out_dir = Path(args.out or os.environ.get("OUT") or
                   ROOT / "runs" / "gpu_check" / dt.datetime.now().strftime("%Y%m%d-%H%M%S"))  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    budget = args.budget or (SMALL_BUDGET if args.small else DEFAULT_BUDGET)
    started, wall = _now(), time.perf_counter()
    report: dict[str, Any] = {
        "schema": 1, "mode": mode, "device": device, "precision": precision,
        "started": started, "budget_s": budget,
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "parts": {},
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp, \
            open(out_dir / "gpu_check.log", "w") as log:  # fmt: skip
        cfg = {
            "device": device, "tmp": tmp, "coco_mini": args.coco_mini, "workers": args.workers,
            "skip_compile": args.skip_compile, "pytest_k": args.pytest_k,
            "precision": precision, "sizes": SMALL if args.small else FULL,
        }  # fmt: skip
        shares = {p: SHARES[p] for p in args.parts}
        scale = budget / sum(shares.values())
        spare = 0.0
        for name in args.parts:
            limit = shares[name] * scale + spare
            if name == "loop":  # the loop runs at the step part's fastest batch
                step = report["parts"].get("step", {}).get("result", {})
                cfg["batch"] = step.get("best_eager_batch")
            part = run_part(name, cfg, limit, log)
            spare = max(0.0, limit - part["seconds"])
            report["parts"][name] = part
            report["wall_s"] = round(time.perf_counter() - wall, 1)
            report["goals"] = _goals(report["parts"])
            (out_dir / "gpu_check.json").write_text(json.dumps(report, indent=1))
        text = _summary(report)
        print("\n" + text, flush=True)
        log.write("\n" + text + "\n")
    print(f"\nwrote {out_dir / 'gpu_check.json'} and {out_dir / 'gpu_check.log'}")
    return 0 if all(p["status"] == "ok" for p in report["parts"].values()) else 1


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--run-part":
        raise SystemExit(_run_part_here(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])))
    if len(sys.argv) == 3 and sys.argv[1] == "--measure-step":
        print(json.dumps(measure_step(json.loads(sys.argv[2]))), flush=True)
        raise SystemExit(0)
    raise SystemExit(main())
