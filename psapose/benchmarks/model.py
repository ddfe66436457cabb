"""``python tools/benchmark.py model``: model throughput and the cost of attention.

    python tools/benchmark.py model                                   # HRNet-W32, 256x192, batch 8
    python tools/benchmark.py model --all --repeats 5                 # every backbone at both sizes
    python tools/benchmark.py model --backbones resnet50 --input-sizes 384x288 --json
    python tools/benchmark.py model --threads 1 --clock cpu --psa-time   # + time inside PSA

For each backbone x attention x input size it measures a training step
(forward, MSE loss against a random target, backward, Adam step) and an
inference forward (eval mode, no grad), in images per second, and the peak
memory of each. Every PSA model is timed twice, on the same weights: with the
reference PSA (``fast=False``, the official code's operations) and with the
fast PSA (the default), so the table gives both overheads against ``none``.

Timings are interleaved: each repeat runs every configuration of a backbone
and input size in turn, so machine load falls on all of them alike. The table
shows the best repeat (and the median beside it); ratios are step times
divided by ``none``'s, of the same backbone and size, in the same run.
``--psa-time`` also times the PSA blocks inside each step (forward and
backward) and gives that time as a share of ``none``'s step: PSA's own part of
the ratio, steadier than the ratio on a busy machine; and the same time split
by the blocks' input shape (``C x H x W``, with the number of blocks of each),
to show where it goes.

Peak memory: the growth over the built model (parameters, inputs) during
the model's first step, in a fresh state: for training that is activations,
gradients and Adam's state, for inference the activations. On the CPU each
configuration and mode runs in its own subprocess and the figure is the growth
of the peak resident set size (the kernel's high-water mark, reset after the
model is built; what the operating system had to provide, allocator caching
included). On CUDA it is ``torch.cuda.max_memory_allocated`` less what was
allocated before the step, for a freshly built model.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from psapose.config import CONFIG_DIR, build_model, compose_config
from psapose.engine.components import fused_optimizer_supported
from psapose.models.attention import PolarizedSelfAttention, set_fast_psa

BACKBONES = ("hrnet_w32", "hrnet_w48", "resnet50", "resnet101", "resnet152")
ATTENTIONS = ("none", "psa_parallel", "psa_sequential")
INPUT_SIZES = ("256x192", "384x288")
# The issue's goal: a PSA training step at most this many times plain HRNet-W32's.
GOAL_RATIO = 1.12
NUM_KEYPOINTS = 17


@dataclass(frozen=True)
class Config:
    """One measured configuration; ``psa`` is ``reference``, ``fast`` or ``None`` (no PSA)."""

    backbone: str
    attention: str
    input_size: tuple[int, int]
    psa: str | None

    @property
    def label(self) -> str:
        return self.attention if self.psa is None else f"{self.attention} ({self.psa})"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``model`` sub-command to ``tools/benchmark.py``."""
    p = subparsers.add_parser(
        "model",
        help="training / inference images/s and peak memory per backbone x attention",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--backbones",
        nargs="+",
        choices=sorted(f.stem for f in (CONFIG_DIR / "model").glob("*.yaml")),
        default=None,
        help=f"model configs (default hrnet_w32; --all: {' '.join(BACKBONES)})",
    )
    p.add_argument("--attention", nargs="+", choices=ATTENTIONS, default=list(ATTENTIONS))
    p.add_argument(
        "--input-sizes", nargs="+", default=None, metavar="HxW", help="e.g. 256x192 384x288"
    )
    p.add_argument(
        "--all",
        action="store_true",
        help="every backbone at 256x192 and 384x288 (default: hrnet_w32 at 256x192)",
    )
    p.add_argument("--variant", choices=("official", "paper"), default="official")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds per mode")
    p.add_argument("--steps", type=int, default=1, help="steps per configuration per round")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per configuration")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="model and inputs in channels-last memory format, as the trainer (default on)",
    )
    p.add_argument(
        "--reference",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time the reference PSA beside the fast one (default on)",
    )
    p.add_argument(
        "--memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure peak memory (on the CPU: one subprocess per configuration)",
    )
    p.add_argument("--modes", nargs="+", choices=("train", "infer"), default=["train", "infer"])
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="what the table's figures are: elapsed time (default) or this process's CPU "
        "time, which other jobs on a shared machine disturb less (use with --threads 1); "
        "the JSON has both",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile every model")
    p.add_argument(
        "--psa-time",
        action="store_true",
        help="also time the PSA blocks inside each step (forward and backward, by hooks on "
        "each block, with the --clock clock): PSA's own share of the ratio; the hooks add a "
        "little to the steps they time",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action="store_true", help="print each round's times to stderr")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=bench_model, print_table=print_model)


def parse_size(text: str) -> tuple[int, int]:
    """``"256x192"`` -> ``(256, 192)`` (height, width)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as err:
        raise SystemExit(f"input size {text!r}: expected HxW, e.g. 256x192") from err
    if h % 32 or w % 32 or h <= 0 or w <= 0:
        raise SystemExit(f"input size {text!r}: height and width must be positive multiples of 32")
    return h, w


def configurations(args: argparse.Namespace) -> list[list[Config]]:
    """Groups of configurations that are timed together (one backbone and input size each)."""
    backbones = args.backbones or (list(BACKBONES) if args.all else ["hrnet_w32"])
    sizes = args.input_sizes or (list(INPUT_SIZES) if args.all else ["256x192"])
    groups = []
    for size_text in sizes:
        size = parse_size(size_text)
        for backbone in backbones:
            group = []
            for attention in args.attention:
                if attention == "none":
                    group.append(Config(backbone, attention, size, None))
                    continue
                if args.reference:
                    group.append(Config(backbone, attention, size, "reference"))
                group.append(Config(backbone, attention, size, "fast"))
            groups.append(group)
    return groups


def build(config: Config, args: argparse.Namespace, device: torch.device) -> nn.Module:
    overrides = [f"model={config.backbone}", f"attention={config.attention}"]
    if config.attention != "none":
        overrides.append(f"attention.variant={args.variant}")
    torch.manual_seed(args.seed)
    model = build_model(compose_config(overrides)).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


class Runner:
    """One model with its optimizer, fixed inputs and step functions."""

    def __init__(self, model: nn.Module, args: argparse.Namespace, device: torch.device) -> None:
        self.model = model
        self.device = device
        # The trainer's optimizer: Adam, fused where torch can (CPU and CUDA).
        fused = {"fused": True} if fused_optimizer_supported(device) else {}
        self.optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, **fused)
        self.precision = args.precision
        self.compiled = torch.compile(model) if args.compile else model
        generator = torch.Generator().manual_seed(args.seed)
        self.images: dict[tuple[int, int], torch.Tensor] = {}
        self.targets: dict[tuple[int, int], torch.Tensor] = {}
        self.batch_size = args.batch_size
        self.channels_last = args.channels_last
        self.generator = generator

    def inputs(self, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        if size not in self.images:
            h, w = size
            images = torch.randn(self.batch_size, 3, h, w, generator=self.generator)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            target = torch.rand(
                self.batch_size, NUM_KEYPOINTS, h // 4, w // 4, generator=self.generator
            )
            self.images[size] = images.to(self.device)
            self.targets[size] = target.to(self.device)
        return self.images[size], self.targets[size]

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self, size: tuple[int, int]) -> None:
        images, target = self.inputs(size)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            heatmaps = self.compiled(images)
        loss = nn.functional.mse_loss(heatmaps.float(), target)
        loss.backward()
        self.optimizer.step()

    def infer_step(self, size: tuple[int, int]) -> None:
        images, _ = self.inputs(size)
        self.model.eval()
        with torch.no_grad(), self.autocast():
            self.compiled(images)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _use_psa(model: nn.Module, config: Config) -> None:
    if config.psa is not None:
        set_fast_psa(model, config.psa == "fast")


class PSATimer:
    """Seconds spent in a model's PSA blocks while installed (``--psa-time``).

    Forward: from a block's forward pre-hook to its forward hook. Backward: from
    the gradient of a block's output to the gradient of its input (tensor hooks);
    the autograd engine runs a block's backward between the two, as the block's
    input feeds nothing else in the backbones' residual blocks. On CUDA each hook
    synchronises the device.
    """

    def __init__(self, model: nn.Module, clock: Callable[[], float]) -> None:
        self.clock = clock
        # By the blocks' input shape (C, H, W): [forward s, backward s], and which blocks.
        self.by_shape: dict[tuple[int, ...], list[float]] = {}
        self.blocks: dict[tuple[int, ...], set[int]] = {}
        self.handles = []
        for module in model.modules():
            if isinstance(module, PolarizedSelfAttention):
                starts: list[float] = []
                self.handles.append(module.register_forward_pre_hook(self._pre(starts)))
                self.handles.append(module.register_forward_hook(self._post(starts)))

    def _now(self, tensor: torch.Tensor) -> float:
        _sync(tensor.device)
        return self.clock()

    def _pre(self, starts: list[float]) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            starts.append(self._now(args[0]))

        return hook

    def _post(self, starts: list[float]) -> Callable:
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            shape = tuple(args[0].shape[1:])
            self.blocks.setdefault(shape, set()).add(id(module))
            self.by_shape.setdefault(shape, [0.0, 0.0])[0] += self._now(out) - starts.pop()
            if out.requires_grad and args[0].requires_grad:
                backward_start: list[float] = []
                out.register_hook(lambda grad: backward_start.append(self._now(grad)))
                args[0].register_hook(lambda grad: self._backward_done(grad, backward_start, shape))

        return hook

    def _backward_done(
        self, grad: torch.Tensor, backward_start: list[float], shape: tuple[int, ...]
    ) -> None:
        self.by_shape[shape][1] += self._now(grad) - backward_start.pop()

    @property
    def forward(self) -> float:
        """Seconds in the PSA blocks' forward, all shapes."""
        return sum(forward for forward, _ in self.by_shape.values())

    @property
    def backward(self) -> float:
        """Seconds in the PSA blocks' backward, all shapes."""
        return sum(backward for _, backward in self.by_shape.values())

    def shapes(self, steps: int) -> list[dict[str, object]]:
        """Per step, the PSA time of each input shape (``C x H x W``), largest first."""
        rows = []
        for shape, (forward, backward) in self.by_shape.items():
            rows.append({
                "shape": list(shape),
                "blocks": len(self.blocks[shape]),
                "forward_ms": round(forward / steps * 1e3, 2),
                "backward_ms": round(backward / steps * 1e3, 2),
            })  # fmt: skip
        return sorted(rows, key=lambda r: -(r["forward_ms"] + r["backward_ms"]))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def time_group(
    group: list[Config], runners: dict[Config, Runner], args: argparse.Namespace, mode: str
) -> dict[str, dict[Config, list]]:
    """Seconds per step of each configuration, per round, interleaved round-robin,
    by clock: ``wall`` (elapsed) and ``cpu`` (this process's CPU time, all threads);
    with ``--psa-time`` also ``psa``: (forward, backward) seconds in PSA blocks per step,
    and ``psa_shapes``: that time by the blocks' input shape, per round."""
    device = next(iter(runners.values())).device

    def step(config: Config) -> Callable[[], None]:
        runner = runners[config]
        fn = runner.train_step if mode == "train" else runner.infer_step
        return lambda: fn(config.input_size)

    for config in group:
        _use_psa(runners[config].model, config)
        for _ in range(args.warmup):
            step(config)()
    times: dict[Config, list[float]] = {c: [] for c in group}
    cpu_times: dict[Config, list[float]] = {c: [] for c in group}
    psa_times: dict[Config, list[tuple[float, float]]] = {c: [] for c in group if c.psa}
    psa_shapes: dict[Config, list[list[dict]]] = {c: [] for c in group if c.psa}
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    for round_index in range(args.repeats):
        # Rotate the order too, so no configuration always follows the same one.
        order = group[round_index % len(group) :] + group[: round_index % len(group)]
        for config in order:
            _use_psa(runners[config].model, config)
            fn = step(config)
            timer = PSATimer(runners[config].model, clock) if args.psa_time and config.psa else None
            _sync(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                fn()
            _sync(device)
            times[config].append((time.perf_counter() - start) / args.steps)
            cpu_times[config].append((time.process_time() - cpu_start) / args.steps)
            if timer is not None:
                timer.remove()
                psa_times[config].append((timer.forward / args.steps, timer.backward / args.steps))
                psa_shapes[config].append(timer.shapes(args.steps))
        if args.progress:
            done = ", ".join(f"{c.label} {times[c][-1] * 1e3:.0f} ms" for c in group)
            print(
                f"[{group[0].backbone} {'x'.join(map(str, group[0].input_size))} {mode} "
                f"round {round_index + 1}/{args.repeats}] {done}",
                file=sys.stderr,
                flush=True,
            )
    if args.psa_time:
        return {"wall": times, "cpu": cpu_times, "psa": psa_times, "psa_shapes": psa_shapes}
    return {"wall": times, "cpu": cpu_times}


def peak_memory(config: Config, args: argparse.Namespace) -> dict[str, float]:
    """Peak memory growth in MiB of each mode (see the module docstring)."""
    if args.device.startswith("cuda"):
        return _peak_memory_cuda(config, args)
    out: dict[str, float] = {}
    for mode in args.modes:  # a fresh process per mode: nothing cached from another
        spec = {"config": asdict(config), "args": _probe_args(args), "mode": mode}
        result = subprocess.run(
            [sys.executable, "-m", "psapose.benchmarks.model", "--memory-probe", json.dumps(spec)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"memory probe for {config.label} failed:\n{result.stderr[-2000:]}")
        out[f"{mode}_peak_mib"] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


def _probe_args(args: argparse.Namespace) -> dict[str, object]:
    keys = ("variant", "batch_size", "threads", "device", "precision", "channels_last", "seed")
    return {k: getattr(args, k) for k in keys} | {"compile": False}


class _PeakRSS:
    """Growth of the peak resident set size from ``reset()`` on, in MiB.

    On Linux the kernel's high-water mark is reset through ``/proc/self/clear_refs``,
    so peaks from imports and model building do not count; elsewhere the
    process-lifetime ``ru_maxrss`` is used, less the resident size at ``reset()``.
    """

    def __init__(self) -> None:
        self.linux = Path("/proc/self/clear_refs").exists()

    @staticmethod
    def _status_kib(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise RuntimeError(f"{key} not in /proc/self/status")

    def reset(self) -> None:
        if self.linux:
            try:
                Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS
            except OSError:
                self.linux = False
        if self.linux:
            self.baseline_kib = self._status_kib("VmRSS")
        else:
            scale = 1 if sys.platform != "darwin" else 1 / 1024  # macOS reports bytes
            self.baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale

    def growth_mib(self) -> float:
        if self.linux:
            peak = self._status_kib("VmHWM")
        else:
            scale = 1 if sys.platform != "darwin" else 1 / 1024
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
        return round((peak - self.baseline_kib) / 1024, 1)


def _memory_probe(spec_json: str) -> None:
    """Subprocess entry: the CPU peak-RSS growth of one configuration and mode, on stdout."""
    spec = json.loads(spec_json)
    args = argparse.Namespace(**spec["args"])
    if args.threads:
        torch.set_num_threads(args.threads)
    config = Config(**{**spec["config"], "input_size": tuple(spec["config"]["input_size"])})
    device = torch.device(args.device)
    runner = Runner(build(config, args, device), args, device)
    _use_psa(runner.model, config)
    runner.inputs(config.input_size)
    step = runner.train_step if spec["mode"] == "train" else runner.infer_step
    peak = _PeakRSS()
    peak.reset()
    step(config.input_size)
    print(json.dumps(peak.growth_mib()))


def _peak_memory_cuda(config: Config, args: argparse.Namespace) -> dict[str, float]:
    device = torch.device(args.device)
    out: dict[str, float] = {}
    for mode in args.modes:
        runner = Runner(build(config, args, device), args, device)
        _use_psa(runner.model, config)
        runner.inputs(config.input_size)
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        (runner.train_step if mode == "train" else runner.infer_step)(config.input_size)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        out[f"{mode}_peak_mib"] = round(peak / 2**20, 1)
        del runner
        torch.cuda.empty_cache()
    return out


@contextlib.contextmanager
def _threads(count: int | None) -> Iterator[None]:
    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def bench_model(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    if args.psa_time and args.compile:
        raise SystemExit("--psa-time hooks every PSA block: it cannot time a compiled model")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    started = time.perf_counter()
    load_before = os.getloadavg()
    rows = []
    with _threads(args.threads):
        for group in configurations(args):
            # One model per attention; the reference and fast PSA share its weights.
            models: dict[str, Runner] = {}
            runners: dict[Config, Runner] = {}
            for config in group:
                if config.attention not in models:
                    models[config.attention] = Runner(build(config, args, device), args, device)
                runners[config] = models[config.attention]
            timings = {mode: time_group(group, runners, args, mode) for mode in args.modes}
            del models, runners
            for config in group:
                row: dict[str, object] = {
                    "backbone": config.backbone,
                    "attention": config.attention,
                    "psa": config.psa,
                    "input_size": list(config.input_size),
                }
                baseline = [c for c in group if c.attention == "none"]
                for mode, by_clock in timings.items():
                    psa_times = by_clock.get("psa", {}).get(config)
                    if psa_times:
                        # The round with the least PSA time, its split and its shapes.
                        best_round = min(range(len(psa_times)), key=lambda i: sum(psa_times[i]))
                        forward, backward = psa_times[best_round]
                        row[f"{mode}_psa_by_shape"] = by_clock["psa_shapes"][config][best_round]
                        row[f"{mode}_psa_ms_best"] = round((forward + backward) * 1e3, 2)
                        row[f"{mode}_psa_forward_ms"] = round(forward * 1e3, 2)
                        row[f"{mode}_psa_backward_ms"] = round(backward * 1e3, 2)
                        median = statistics.median(f + b for f, b in psa_times)
                        row[f"{mode}_psa_ms_median"] = round(median * 1e3, 2)
                        if baseline:  # PSA's own part of the ratio
                            base = min(by_clock[args.clock][baseline[0]])
                            row[f"{mode}_psa_share"] = round((forward + backward) / base, 3)
                    for clock, times in by_clock.items():
                        if clock in ("psa", "psa_shapes"):
                            continue
                        # The chosen clock's figures carry plain names, the other's its name.
                        prefix = mode if clock == args.clock else f"{mode}_{clock}"
                        best, median = min(times[config]), statistics.median(times[config])
                        row[f"{prefix}_ms_best"] = round(best * 1e3, 2)
                        row[f"{prefix}_ms_median"] = round(median * 1e3, 2)
                        row[f"{prefix}_images_per_s"] = round(args.batch_size / best, 2)
                        if baseline:
                            base = times[baseline[0]]
                            row[f"{prefix}_ratio"] = round(best / min(base), 3)
                            row[f"{prefix}_ratio_median"] = round(
                                median / statistics.median(base), 3
                            )
                if args.memory:
                    row.update(peak_memory(config, args))
                rows.append(row)
    return {
        "benchmark": "model",
        "device": str(device),
        "batch_size": args.batch_size,
        "precision": args.precision,
        "channels_last": args.channels_last,
        "compile": args.compile,
        "psa_time": args.psa_time,
        "variant": args.variant,
        "repeats": args.repeats,
        "steps": args.steps,
        "clock": args.clock,
        "threads": args.threads or torch.get_num_threads(),
        "goal_ratio": GOAL_RATIO,
        "memory": _memory_note(device) if args.memory else None,
        "rows": rows,
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "elapsed_s": round(time.perf_counter() - started, 1),
        "machine": f"{platform.machine()}, {platform.processor() or platform.platform()}, "
        f"{os.cpu_count()} CPUs",
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__,
    }


def _memory_note(device: torch.device) -> str:
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated during one step, less what was allocated before it"
    return (
        "growth of the peak RSS over the built model during a fresh process's first step "
        "(training: activations, gradients and Adam state)"
    )


def print_model(result: dict) -> None:
    modes = [m for m in ("train", "infer") if any(f"{m}_ms_best" in r for r in result["rows"])]
    print(
        f"model throughput on {result['device']} ({result['gpu'] or result['machine']}), batch "
        f"{result['batch_size']}, {result['precision']}, "
        f"{'channels_last' if result['channels_last'] else 'contiguous'}, "
        f"{result['threads']} threads, PSA variant {result['variant']}, {result['clock']} clock, "
        f"best of {result['repeats']} interleaved rounds (median in brackets)"
    )
    header = f"{'backbone':<10} {'input':<8} {'attention':<28}"
    psa_modes = [m for m in modes if any(f"{m}_psa_ms_best" in r for r in result["rows"])]
    for mode in modes:
        header += f" {mode + ' img/s':>11} {mode + ' ratio':>20}"
        if mode in psa_modes:
            header += f" {mode + ' PSA ms (share)':>24}"
    if result["memory"]:
        header += "  peak MiB (train / infer)"
    print(header)
    for r in result["rows"]:
        label = r["attention"] if r["psa"] is None else f"{r['attention']} ({r['psa']})"
        line = f"{r['backbone']:<10} {'x'.join(map(str, r['input_size'])):<8} {label:<28}"
        for mode in modes:
            ratio = r.get(f"{mode}_ratio")
            ratio_text = f"{ratio:.3f} ({r[f'{mode}_ratio_median']:.3f})" if ratio else "-"
            line += f" {r[f'{mode}_images_per_s']:>11.2f} {ratio_text:>20}"
            if mode in psa_modes:
                psa = r.get(f"{mode}_psa_ms_best")
                share = r.get(f"{mode}_psa_share")
                psa_text = (
                    "-" if psa is None else f"{psa:.0f}" + (f" ({share:.3f})" if share else "")
                )
                line += f" {psa_text:>24}"
        if result["memory"]:
            line += f"  {r.get('train_peak_mib', '-')} / {r.get('infer_peak_mib', '-')}"
        print(line)
    print(
        f"ratio: step time / attention none's, same backbone and size; goal <= {result['goal_ratio']} "
        f"for training. Peak memory: {result['memory'] or 'not measured'}."
    )
    if psa_modes:
        print(
            "PSA ms: time inside the PSA blocks per step, forward and backward (best round); "
            "share: that time / none's step time, PSA's own part of the ratio (the rest is "
            "the optimizer's extra parameters and PSA's effect on the other layers)."
        )
        _print_psa_shapes(result, psa_modes)
    print(
        f"load average {result['load_average_before']} before, {result['load_average_after']} after; "
        f"{result['elapsed_s']} s"
    )


def _print_psa_shapes(result: dict, modes: list[str]) -> None:
    """The PSA time of each row by the blocks' input shape (the best round's)."""
    print(
        "PSA ms by block input shape (C x H x W), per step: forward + backward = total (per block)"
    )
    for r in result["rows"]:
        for mode in modes:
            shapes = r.get(f"{mode}_psa_by_shape")
            if not shapes:
                continue
            print(f"  {r['backbone']} {r['attention']} ({r['psa']}) {mode}:")
            for s in shapes:
                total = s["forward_ms"] + s["backward_ms"]
                print(
                    f"    {'x'.join(map(str, s['shape'])):>12} x{s['blocks']:<3} "
                    f"{s['forward_ms']:8.1f} + {s['backward_ms']:8.1f} = {total:8.1f} "
                    f"({total / s['blocks']:.2f})"
                )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--memory-probe":
        _memory_probe(sys.argv[2])
    else:
        raise SystemExit("run through tools/benchmark.py model")
