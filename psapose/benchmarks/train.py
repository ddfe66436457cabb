"""``train``: the quick start's training speed on a quiet machine and beside busy processes.

    python tools/benchmark.py train                         # quiet, 1 and 3 busy processes
    python tools/benchmark.py train --busy 0 1 --epochs 4 --modes psapose fixed --json

Each measurement is a real ``tools/train.py experiment=quickstart`` run of a few
epochs (no evaluation) on the built-in synthetic data, started beside N
single-threaded busy processes (``while True: pass``) that the benchmark starts
before and stops after it. The figure is training images/s: the median over the
epochs after the first (worker start-up and first-touch costs) of each epoch's
rate, as the trainer records it in its history.

Modes, each a way to set the same run's threads:

* ``psapose``: the defaults (threads and workers chosen from the usable cores and
  re-chosen from the load);
* ``fixed``: what psapose did before: ``threads=<cores> workers=2``.

Both run with OpenMP's own wait policy (spinning for a while before sleeping): a
user's ``OMP_WAIT_POLICY`` is not passed on, so every mode measures the same runtime.

The report gives each rate, its ratio to the same mode's quiet rate (fair share
beside one busy process on 2 cores: 0.5), and the quiet rate of ``psapose``
against ``fixed`` (the change on a quiet machine).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from psapose.checkpoint import load_checkpoint_file
from psapose.threads import usable_cores

# The repository: the runs are `python tools/train.py` there, writing data/synthetic as the
# quick start does (an editable install, as `make venv` makes).
ROOT = Path(__file__).resolve().parents[2]

MODES = ("psapose", "fixed")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` sub-command to ``tools/benchmark.py``."""
    p = subparsers.add_parser(
        "train",
        help="quick-start training img/s quiet and beside busy processes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--busy", type=int, nargs="+", default=[0, 1, 3], help="busy processes")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run (the first not counted)")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument(
        "--overrides", nargs="*", default=[], help="more tools/train.py overrides for every run"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=bench_train, print_table=print_train)


def _busy_processes(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def _stop(processes: list[subprocess.Popen]) -> None:
    for proc in processes:
        proc.kill()
    for proc in processes:
        proc.wait()


def _mode(mode: str) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ}
    env.pop("OMP_NUM_THREADS", None)
    env.pop("OMP_WAIT_POLICY", None)
    if mode == "fixed":
        return [f"threads={usable_cores()}", "workers=2"], env
    return [], env


def _train(mode: str, busy: int, epochs: int, extra: list[str], out: Path) -> dict:
    overrides, env = _mode(mode)
    args = [
        sys.executable, "tools/train.py", "experiment=quickstart", f"schedule.epochs={epochs}",
        "eval.interval=0", "data.val.ann_file=missing.json", "eval.images=0",
        f"output_dir={out}", *overrides, *extra,
    ]  # fmt: skip
    background = _busy_processes(busy)
    try:
        time.sleep(1.0 if busy else 0.0)  # let the load settle before the run measures it
        start = time.perf_counter()
        proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
    finally:
        _stop(background)
    if proc.returncode != 0:
        raise SystemExit(f"train run failed ({mode}, {busy} busy):\n{proc.stdout[-2000:]}")
    state = load_checkpoint_file(out / "checkpoints/latest.pth")  # checksum verified
    rates = [float(r["images_per_s"]) for r in state["history"]]
    counted = rates[1:] if len(rates) > 1 else rates
    return {
        "mode": mode,
        "busy": busy,
        "images_per_s": statistics.median(counted),
        "epoch_rates": [round(r, 2) for r in rates],
        "threads": [r.get("threads") for r in state["history"]],
        "wall_s": round(wall, 1),
    }


def bench_train(args: argparse.Namespace) -> dict:
    rows = []
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    with tempfile.TemporaryDirectory(prefix="psapose-bench-train-") as tmp:
        # Interleaved by load level, so slow drift in the machine hits every mode alike.
        for busy in args.busy:
            for mode in args.modes:
                out = Path(tmp) / f"{mode}-{busy}"
                rows.append(_train(mode, busy, args.epochs, args.overrides, out))
    quiet = {r["mode"]: r["images_per_s"] for r in rows if r["busy"] == 0}
    for row in rows:
        base = quiet.get(row["mode"])
        row["ratio_to_quiet"] = round(row["images_per_s"] / base, 3) if base else None
    result = {
        "machine": platform.processor() or platform.machine(),
        "cores": usable_cores(),
        "torch": torch.__version__,
        "load_before": load_before,
        "load_after": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "epochs": args.epochs,
        "rows": rows,
    }
    if "psapose" in quiet and "fixed" in quiet:
        result["quiet_psapose_vs_fixed"] = round(quiet["psapose"] / quiet["fixed"], 3)
    return result


def print_train(result: dict) -> None:
    print(f"{result['cores']} cores, torch {result['torch']}, {result['epochs']} epochs per run")
    print(f"{'mode':<9}{'busy':>5}{'img/s':>9}{'x quiet':>9}{'threads':>10}  epoch rates")
    for r in result["rows"]:
        ratio = "" if r["ratio_to_quiet"] is None else f"{r['ratio_to_quiet']:.3f}"
        threads = ",".join(str(t) for t in r["threads"])
        print(
            f"{r['mode']:<9}{r['busy']:>5}{r['images_per_s']:>9.1f}{ratio:>9}{threads:>10}  "
            f"{r['epoch_rates']}"
        )
    if "quiet_psapose_vs_fixed" in result:
        print(f"quiet: psapose / fixed = {result['quiet_psapose_vs_fixed']:.3f} (goal >= 0.95)")
    print(f"load average {result['load_before']} before, {result['load_after']} after")
