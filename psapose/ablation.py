"""Ablations: sweep Hydra overrides, train every variant the same way, compare AP against cost.

``tools/ablate.py`` is the command line; this module holds the logic:

* :func:`plan_ablation` parses Hydra's multirun grammar (``key=a,b``, ``range()``,
  ``choice()``, ``glob()`` for config groups; several swept keys give their cross
  product) into :class:`Variant` objects, each a full list of overrides for
  ``tools/train.py``;
* :func:`run_ablation` trains every variant x seed as a ``tools/train.py``
  subprocess in its own run folder (sequentially or N at a time), with
  ``resume=auto``, and marks a run done (``ablation_done.json``, holding what was
  read from it) only after it exited 0 and its result was read: a second
  invocation skips done runs and resumes unfinished ones;
* :func:`read_run_result` reads a finished run: its final evaluation from
  ``checkpoints/latest.pth`` (``history``) and its per-epoch training
  throughput from the TensorBoard scalar ``train/images_per_s``;
* :func:`measure_inference` times every run's model in this process, in
  interleaved rounds with the same batch and threads, so the figures compare;
* :func:`build_report` joins all of it with parameters and GFLOPs in the paper's
  convention (:mod:`psapose.models.complexity`), per seed and as mean and
  standard deviation, and :func:`write_report` writes ``report.json``,
  ``report.md`` and ``ablation.png``.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

__all__ = [
    "DEFAULT_EXPERIMENT",
    "DEFAULT_SCHEDULE",
    "DEFAULT_SWEEP",
    "DONE_FILE",
    "LOG_FILE",
    "SPEC_FILE",
    "AblationError",
    "AblationInterrupted",
    "Plan",
    "RunOutcome",
    "RunSpec",
    "Variant",
    "ablate",
    "build_report",
    "check_configs",
    "check_run_folders",
    "default_out_dir",
    "measure_inference",
    "plan_ablation",
    "plot_ablation",
    "read_run_result",
    "read_scalars",
    "run_ablation",
    "run_complexity",
    "run_specs",
    "write_report",
]

ROOT = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = ROOT / "tools" / "train.py"

# Without overrides: the quick start's model and data for the three layouts, on a
# 15-epoch schedule so that one seed of the three takes about 15 minutes on 2 slow cores
# (5 min per run measured; the quick start's 46 epochs would take 40 there). A schedule
# key given by the user replaces the default schedule whole (the preset's, plus theirs).
DEFAULT_EXPERIMENT = "experiment=quickstart"
DEFAULT_SCHEDULE = ("schedule.epochs=15", "schedule.milestones=[12,14]")
DEFAULT_SWEEP = "attention=none,psa_parallel,psa_sequential"

DONE_FILE = "ablation_done.json"  # written after the run exited 0 and its result was read
SPEC_FILE = "ablation_run.json"  # the overrides a run folder was made with
LOG_FILE = "train.log"  # the run's stdout and stderr (appended on resume)

# Set by the ablation for each run: a user value would send every variant to one folder.
_RESERVED_KEYS = ("output_dir", "resume", "hydra.run.dir")
# History keys that are not evaluation metrics (the trainer's per-epoch record).
_NOT_METRICS = ("epoch", "loss", "skipped_samples", "nonfinite_steps")


def _extra_metric(key: str) -> bool:
    """Pixel metrics shown beside AP when a run's evaluation reports them
    (psapose.evaluation.pixel_metrics): the mean end-point error and box-relative PCK."""
    return key == "EPE" or (key.startswith("PCK@") and not key.endswith("px"))


class AblationError(ValueError):
    """Bad input to an ablation (overrides, options, an output folder made by another command)."""


class AblationInterrupted(Exception):  # noqa: N818 (a requested stop, not an error)
    """SIGINT or SIGTERM stopped the ablation; running trainings wrote resumable checkpoints."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


# ----------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class Variant:
    """One point of the sweep: its swept values and every override for ``tools/train.py``."""

    index: int
    sweep: dict[str, str]  # swept key (as written, e.g. "attention" or "+foo") -> value
    overrides: tuple[str, ...]  # without seed, output_dir, resume (set per run)

    @property
    def label(self) -> str:
        return " / ".join(self.sweep.values()) if self.sweep else "default"

    @property
    def slug(self) -> str:
        text = "_".join(f"{k.lstrip('+~')}-{v}" for k, v in self.sweep.items()) or "default"
        text = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:80]
        return f"{self.index:02d}-{text}"


@dataclass(frozen=True)
class Plan:
    """Every variant, the seeds each is trained with, and the overrides as parsed."""

    variants: list[Variant]
    seeds: list[int]
    swept_keys: list[str]
    overrides: list[str]  # the full command's overrides, defaults added, seed removed


@dataclass(frozen=True)
class RunSpec:
    """One training: a variant with one seed, in its own folder."""

    variant: Variant
    seed: int
    run_dir: Path

    @property
    def overrides(self) -> list[str]:
        return [*self.variant.overrides, f"seed={self.seed}"]

    def argv(self, python: str = sys.executable, script: Path = TRAIN_SCRIPT) -> list[str]:
        return [
            python,
            str(script),
            *self.overrides,
            f"output_dir={_hydra_quote(str(self.run_dir))}",
            "resume=auto",
            f"hydra.run.dir={_hydra_quote(str(self.run_dir / 'hydra'))}",
        ]


def _hydra_quote(value: str) -> str:
    """``value`` as a Hydra override value: as is when plain, else single-quoted."""
    if re.fullmatch(r"[A-Za-z0-9_./+-]+", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _sweep_values(override: Any, config_dir: Path) -> list[str]:
    from hydra.core.override_parser.types import Glob

    value = override.value()
    if isinstance(value, Glob):
        # glob() picks config-group options, which are the YAML files of the group's folder.
        folder = config_dir / override.key_or_group
        options = sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
        chosen = value.filter(options)
        if not chosen:
            raise AblationError(f"{override.input_line}: matches no config in {folder}")
        return chosen
    if not override.is_discrete_sweep():
        raise AblationError(f"{override.input_line}: only lists, range() and choice() can be swept")
    return list(override.sweep_string_iterator())


def plan_ablation(overrides: Sequence[str], seeds: int = 1, config_dir: Path | None = None) -> Plan:
    """The variants of Hydra multirun-style ``overrides`` (``key=a,b,c``; several swept keys
    give their cross product, in the order written), each trained with ``seeds`` seeds.

    Defaults: ``experiment=quickstart`` on a 15-epoch schedule unless an experiment is
    named (a ``schedule.epochs``/``milestones`` given keeps the preset's), and the three
    attention layouts as the sweep when nothing is swept and attention is not set.
    ``seed=S`` sets the first seed; seeds are repeated with ``seeds``, not swept.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from psapose.config import CONFIG_DIR

    config_dir = Path(config_dir or CONFIG_DIR)
    if seeds < 1:
        raise AblationError(f"--seeds must be at least 1, got {seeds}")
    args = list(overrides)
    parser = OverridesParser.create()
    parsed = []
    for arg in args:  # one at a time, so that an error names its override
        try:
            parsed += parser.parse_overrides([arg])
        except HydraException as err:
            raise AblationError(f"cannot parse {arg!r}: {_first_line(err)}") from None
    keys = [o.key_or_group for o in parsed]
    if not any(k == "experiment" for k in keys):
        user_schedule = any(k in ("schedule.epochs", "schedule.milestones") for k in keys)
        args[:0] = [DEFAULT_EXPERIMENT, *(() if user_schedule else DEFAULT_SCHEDULE)]
    if not any(o.is_sweep_override() for o in parsed) and "attention" not in keys:
        args.append(DEFAULT_SWEEP)
    parsed = parser.parse_overrides(args)

    first_seed = 0
    lines: list[str] = []
    sweeps: list[tuple[str, list[str]]] = []  # (key as written, values)
    slots: list[int | None] = []  # per kept override: index into sweeps, or None (fixed)
    seen: set[str] = set()
    for override in parsed:
        key = override.key_or_group
        if key in _RESERVED_KEYS or key.startswith("hydra."):
            raise AblationError(
                f"{override.input_line}: {key} is set by the ablation for each run "
                "(use --out for the output folder)"
            )
        if key in seen:
            raise AblationError(f"{key} is given twice")
        seen.add(key)
        if key == "seed":
            if override.is_sweep_override():
                raise AblationError(
                    f"{override.input_line}: repeat seeds with --seeds N (seed=S sets the first)"
                )
            try:
                first_seed = int(override.value())
            except (TypeError, ValueError):
                raise AblationError(f"{override.input_line}: seed must be an integer") from None
            continue
        if override.is_sweep_override():
            values = _sweep_values(override, config_dir)
            if not values:
                raise AblationError(f"{override.input_line}: an empty sweep")
            slots.append(len(sweeps))
            sweeps.append((override.get_key_element(), values))
        else:
            slots.append(None)
        lines.append(override.input_line)

    variants = []
    for index, combo in enumerate(itertools.product(*(values for _, values in sweeps))):
        chosen = [f"{sweeps[i][0]}={combo[i]}" for i in range(len(sweeps))]
        final = [
            line if slot is None else chosen[slot] for line, slot in zip(lines, slots, strict=True)
        ]
        sweep = {sweeps[i][0]: combo[i] for i in range(len(sweeps))}
        variants.append(Variant(index, sweep, tuple(final)))
    return Plan(
        variants=variants,
        seeds=[first_seed + i for i in range(seeds)],
        swept_keys=[k for k, _ in sweeps],
        overrides=lines,
    )


def default_out_dir(plan: Plan) -> Path:
    """``runs/ablation-<hash>``: the same overrides give the same folder, so a rerun resumes.
    The seed count is left out, so adding seeds reuses the runs already made."""
    digest = hashlib.sha1("\n".join(plan.overrides).encode()).hexdigest()[:8]
    return Path("runs") / f"ablation-{digest}"


def run_specs(plan: Plan, out_dir: Path) -> list[RunSpec]:
    """Every training, seed by seed (so that runs compared with each other run close in time)."""
    out_dir = Path(out_dir).resolve()
    return [
        RunSpec(v, seed, out_dir / v.slug / f"seed{seed}")
        for seed in plan.seeds
        for v in plan.variants
    ]


def check_configs(plan: Plan) -> list[DictConfig]:
    """Compose and validate every variant's config now, so a typo stops the ablation at
    start (one line, exit 2) instead of failing one run after others have trained; and
    write the synthetic dataset once here, not in several parallel runs at the same time."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from psapose.config import ConfigError, compose_config, validate_config
    from psapose.data.builder import ensure_generated

    configs = []
    generated: set[str] = set()
    for variant in plan.variants:
        try:
            cfg = compose_config([*variant.overrides, f"seed={plan.seeds[0]}"])
            validate_config(cfg)
        except (ConfigError, HydraException, OmegaConfBaseException) as err:
            raise AblationError(f"variant {variant.label}: {_first_line(err)}") from None
        root = str(Path(str(cfg.data.root)).expanduser().resolve())
        if root not in generated:
            generated.add(root)
            ensure_generated(cfg.data)
        configs.append(cfg)
    return configs


def check_run_folders(specs: Sequence[RunSpec]) -> None:
    """A run folder made by another command (other overrides, same name) is not reused."""
    for spec in specs:
        path = spec.run_dir / SPEC_FILE
        if not path.is_file():
            continue
        try:
            made_with = json.loads(path.read_text())["overrides"]
        except (OSError, ValueError, KeyError, TypeError):
            raise AblationError(f"{path}: unreadable; remove it or choose another --out") from None
        if made_with != spec.overrides:
            raise AblationError(
                f"{spec.run_dir} was trained with other overrides ({' '.join(made_with)}); "
                "choose another --out"
            )


# ----------------------------------------------------------------------------- running


@dataclass
class RunOutcome:
    """How one training ended, and what was read from it."""

    spec: RunSpec
    status: str  # done | failed | interrupted
    exit_code: int | None = None
    seconds: float | None = None
    result: dict[str, Any] | None = None
    error: str = ""
    skipped: bool = False  # done before this invocation: not retrained

    @property
    def log(self) -> Path:
        return self.spec.run_dir / LOG_FILE


def _write_json(path: Path, data: Any) -> None:
    # Atomic: a done marker is either whole or absent, whatever stops the ablation.
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _load_done(spec: RunSpec) -> dict[str, Any] | None:
    path = spec.run_dir / DONE_FILE
    if not path.is_file():
        return None
    try:
        done = json.loads(path.read_text())
    except ValueError:
        return None  # a damaged marker: the run is read again after resume=auto
    return done if done.get("overrides") == spec.overrides else None


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`AblationInterrupted` in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    watched = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.getsignal(s) for s in watched}

    def stop(signum: int, frame: Any) -> None:
        for s, handler in previous.items():  # a second signal acts as it would have
            signal.signal(s, handler)
        raise AblationInterrupted(signum)

    for s in watched:
        signal.signal(s, stop)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _child_env(processes: int) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if processes > 1 and "OMP_NUM_THREADS" not in os.environ:
        # N trainings with all cores each would oversubscribe the machine N times over.
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // processes))
    return env


def _last_error(log: Path) -> str:
    """The log's last error line (or its last line): what the report shows for a failed run."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    errors = [ln for ln in lines if "ERROR" in ln or "Error" in ln]
    line = (errors or lines or [""])[-1]
    return line if len(line) <= 300 else line[:297] + "..."


def _finish(spec: RunSpec, code: int, seconds: float) -> RunOutcome:
    if code != 0:
        why = _last_error(spec.run_dir / LOG_FILE)
        error = f"exit code {code}" + (f": {why}" if why else "")
        return RunOutcome(spec, "failed", code, seconds, error=error)
    try:
        result = read_run_result(spec.run_dir)
    except (OSError, KeyError, ValueError, RuntimeError) as err:
        return RunOutcome(spec, "failed", code, seconds, error=f"unreadable result: {err}")
    _write_json(
        spec.run_dir / DONE_FILE,
        {"overrides": spec.overrides, "exit_code": code, "seconds": seconds, "result": result},
    )
    return RunOutcome(spec, "done", code, seconds, result)


def run_ablation(
    specs: Sequence[RunSpec],
    processes: int = 1,
    echo: Callable[[str], None] = print,
    python: str = sys.executable,
    script: Path = TRAIN_SCRIPT,
) -> list[RunOutcome]:
    """Train every run not yet done, ``processes`` at a time; returns one outcome per spec.

    Each training is ``tools/train.py <overrides> seed=S output_dir=RUN resume=auto`` in
    its own session, its output appended to ``RUN/train.log``. A failed run is recorded
    and the rest still run. SIGINT/SIGTERM are passed on to the running trainings (which
    write resumable checkpoints) and raise :class:`AblationInterrupted`.
    """
    if processes < 1:
        raise AblationError(f"--processes must be at least 1, got {processes}")
    outcomes: dict[int, RunOutcome] = {}
    pending: list[int] = []
    for i, spec in enumerate(specs):
        done = _load_done(spec)
        if done is not None:
            outcomes[i] = RunOutcome(
                spec, "done", done["exit_code"], done["seconds"], done["result"], skipped=True
            )
            echo(f"[{i + 1}/{len(specs)}] {spec.variant.label} seed {spec.seed}: done before")
        else:
            pending.append(i)
    env = _child_env(processes)
    running: dict[int, tuple[subprocess.Popen, float, Any]] = {}
    try:
        with _stop_on_signals():
            while pending or running:
                while pending and len(running) < processes:
                    i = pending.pop(0)
                    spec = specs[i]
                    spec.run_dir.mkdir(parents=True, exist_ok=True)
                    _write_json(spec.run_dir / SPEC_FILE, {"overrides": spec.overrides})
                    log = open(spec.run_dir / LOG_FILE, "a")  # closed when the run ends
                    log.write(f"\n=== {datetime.now().isoformat(timespec='seconds')} "
                              f"{' '.join(spec.argv(python, script))}\n")  # fmt: skip
                    log.flush()
                    # Own session: a terminal's Ctrl-C reaches only this process, which
                    # passes exactly one signal on (a second would skip the checkpoint).
                    proc = subprocess.Popen(
                        spec.argv(python, script), stdout=log, stderr=subprocess.STDOUT,
                        env=env, start_new_session=True,
                    )  # fmt: skip
                    running[i] = (proc, time.perf_counter(), log)
                    echo(
                        f"[{i + 1}/{len(specs)}] {spec.variant.label} seed {spec.seed}: "
                        f"training in {spec.run_dir} (log {LOG_FILE})"
                    )
                for i in list(running):
                    proc, start, log = running[i]
                    code = proc.poll()
                    if code is None:
                        continue
                    log.close()
                    del running[i]
                    outcome = _finish(specs[i], code, time.perf_counter() - start)
                    outcomes[i] = outcome
                    summary = _outcome_line(outcome)
                    echo(
                        f"[{i + 1}/{len(specs)}] {specs[i].variant.label} seed {specs[i].seed}: {summary}"
                    )
                if running:
                    time.sleep(0.2)
    except AblationInterrupted as stop:
        for proc, _, _ in running.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(stop.signum)
        for i, (proc, _, log) in running.items():
            proc.wait()
            log.close()
            echo(
                f"[{i + 1}/{len(specs)}] {specs[i].variant.label} seed {specs[i].seed}: "
                f"stopped (exit code {proc.returncode}); the next run of this command resumes it"
            )
        raise
    return [outcomes[i] for i in range(len(specs))]


def _outcome_line(outcome: RunOutcome) -> str:
    if outcome.status != "done":
        return f"FAILED ({outcome.error}); log {outcome.log}"
    ap = (outcome.result or {}).get("stats", {}).get("AP")
    text = f"done in {outcome.seconds:.0f} s"
    return text + (f", AP {ap:.4f}" if ap is not None else ", no evaluation")


# ----------------------------------------------------------------------------- reading a run


def read_scalars(tb_dir: Path, tag: str) -> list[tuple[int, float]]:
    """A TensorBoard scalar as ``(step, value)`` pairs, by step; a step written twice (an
    epoch trained again after a resume) keeps its last value."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: dict[int, float] = {}
    # Event files one by one, in name (= creation) order: a resumed run adds a file.
    for path in sorted(Path(tb_dir).glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            for event in acc.Scalars(tag):
                values[int(event.step)] = float(event.value)
    return sorted(values.items())


def read_run_result(run_dir: Path) -> dict[str, Any]:
    """What a finished run gives the report.

    * ``stats``: its last evaluation (every metric of the history record of the last
      evaluated epoch: the final evaluation when the run evaluates at the end);
    * ``loss``: the last epoch's mean training loss;
    * ``train_images_per_s``: the median over epochs of ``train/images_per_s``
      (the median, as one slow epoch, say the first with its start-up, should not move it),
      and ``train_images_per_s_epochs``, every epoch's figure.
    """
    from psapose.checkpoint import load_checkpoint_file

    run_dir = Path(run_dir)
    state = load_checkpoint_file(run_dir / "checkpoints" / "latest.pth")
    if not isinstance(state, dict) or not state.get("history"):
        raise ValueError(f"{run_dir}: latest.pth holds no training history")
    history = state["history"]
    evaluated = [r for r in history if "AP" in r]
    final = evaluated[-1] if evaluated else None
    rates = [v for _, v in read_scalars(run_dir / "tb", "train/images_per_s")]
    return {
        "epochs": int(state["epoch"]),
        "evaluated_epoch": int(final["epoch"]) if final else None,
        "stats": {k: float(v) for k, v in final.items() if k not in _NOT_METRICS} if final else {},
        "loss": float(history[-1]["loss"]),
        "train_images_per_s": statistics.median(rates) if rates else None,
        "train_images_per_s_epochs": rates,
    }


def _run_config(run_dir: Path) -> DictConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no config.yaml")
    return OmegaConf.load(path)


def run_complexity(run_dir: Path) -> dict[str, Any]:
    """Parameters and GFLOPs (the paper's convention) of a run's model at its input size."""
    from psapose.config import build_model, input_size
    from psapose.models.complexity import measure_complexity

    cfg = _run_config(run_dir)
    # Counted on the meta device: shapes only, no memory (build first: initialisers run on CPU).
    model = build_model(cfg).to("meta")
    size = input_size(cfg)
    c = measure_complexity(model, size)
    return {
        "params": int(c.params),
        "gflops": float(c.paper_gflops),
        "true_gmacs": float(c.true_gmacs),
        "input_size": list(size),
    }


# ----------------------------------------------------------------------------- inference


def _load_run_model(run_dir: Path, device: torch.device) -> tuple[torch.nn.Module, DictConfig]:
    from psapose.checkpoint import load_pose_checkpoint
    from psapose.config import build_model

    cfg = _run_config(run_dir)
    model = build_model(cfg)
    load_pose_checkpoint(model, Path(run_dir) / "checkpoints" / "latest.pth", strict=True)
    model = model.eval().to(device)
    if cfg.get("channels_last", True):
        model = model.to(memory_format=torch.channels_last)
    return model, cfg


def measure_inference(
    run_dirs: Sequence[Path],
    batch_size: int = 32,
    rounds: int = 5,
    steps: int = 2,
    warmup: int = 1,
    device: str = "cpu",
    threads: int | None = None,
) -> list[dict[str, Any]]:
    """Inference images/s of each run's model (eval mode, no grad, fp32, no flip test),
    on one fixed random batch per input size, in this process.

    Round-robin: each round times every model once (``steps`` forwards), the order
    rotating from round to round, so machine load falls on all alike. Returns per run
    ``best`` (the fastest round, as in docs/benchmarks.md), ``median`` and every round's figure.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    models = []
    for run_dir in run_dirs:
        model, cfg = _load_run_model(run_dir, dev)
        h, w = (int(v) for v in cfg.input_size)
        models.append((model, (h, w), bool(cfg.get("channels_last", True))))
    inputs: dict[tuple[tuple[int, int], bool], torch.Tensor] = {}
    for _, size, channels_last in models:
        if (size, channels_last) not in inputs:
            g = torch.Generator().manual_seed(0)
            x = torch.randn(batch_size, 3, *size, generator=g)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            inputs[(size, channels_last)] = x.to(dev)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    times: list[list[float]] = [[] for _ in models]
    with torch.no_grad():
        for model, size, channels_last in models:
            for _ in range(warmup):
                model(inputs[(size, channels_last)])
        for r in range(rounds):
            order = list(range(len(models)))
            order = order[r % len(order) :] + order[: r % len(order)] if order else order
            for k in order:
                model, size, channels_last = models[k]
                x = inputs[(size, channels_last)]
                sync()
                start = time.perf_counter()
                for _ in range(steps):
                    model(x)
                sync()
                times[k].append((time.perf_counter() - start) / steps)
    return [
        {
            "best": batch_size / min(t),
            "median": batch_size / statistics.median(t),
            "rounds": [batch_size / s for s in t],
        }
        for t in times
    ]


# ----------------------------------------------------------------------------- the report


def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    # NaN: a metric with nothing to score (e.g. EPE without labelled keypoints).
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return None, None
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def machine_info() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average": [round(v, 2) for v in load] if load else None,
    }


def build_report(
    plan: Plan,
    outcomes: Sequence[RunOutcome],
    complexity: dict[Path, dict[str, Any]],
    inference: dict[Path, dict[str, Any]],
    settings: dict[str, Any],
) -> dict[str, Any]:
    """The report as a dict (``report.json``): per variant, every seed's figures, their
    mean and standard deviation, and the change against the first variant."""
    by_variant: dict[int, list[RunOutcome]] = {v.index: [] for v in plan.variants}
    for outcome in outcomes:
        by_variant[outcome.spec.variant.index].append(outcome)
    metrics = ["AP"]
    for outcome in outcomes:
        for key in (outcome.result or {}).get("stats", {}):
            if _extra_metric(key) and key not in metrics:
                metrics.append(key)
    variants = []
    for variant in plan.variants:
        runs = []
        for o in by_variant[variant.index]:
            row: dict[str, Any] = {
                "seed": o.spec.seed,
                "status": o.status,
                "run_dir": str(o.spec.run_dir),
                "log": str(o.log),
                "exit_code": o.exit_code,
                "seconds": o.seconds,
                "resumed_from_earlier_invocation": o.skipped,
            }
            if o.status != "done":
                row["error"] = o.error
            if o.result is not None:
                row.update(
                    {m: o.result["stats"].get(m) for m in metrics},
                    stats=o.result["stats"],
                    loss=o.result["loss"],
                    epochs=o.result["epochs"],
                    evaluated_epoch=o.result["evaluated_epoch"],
                    train_images_per_s=o.result["train_images_per_s"],
                    train_images_per_s_epochs=o.result["train_images_per_s_epochs"],
                )
            c = complexity.get(o.spec.run_dir)
            if c is not None:
                row.update(params=c["params"], gflops=c["gflops"], true_gmacs=c["true_gmacs"])
            inf = inference.get(o.spec.run_dir)
            if inf is not None:
                row.update(infer_images_per_s=inf["best"], infer_images_per_s_median=inf["median"],
                           infer_images_per_s_rounds=inf["rounds"])  # fmt: skip
            runs.append(row)
        done = [r for r in runs if r["status"] == "done"]
        mean, std = {}, {}
        for key in [
            *metrics,
            "loss",
            "params",
            "gflops",
            "train_images_per_s",
            "infer_images_per_s",
        ]:
            mean[key], std[key] = _mean_std([r.get(key) for r in done])
        status = "done" if len(done) == len(runs) else ("failed" if not done else "partial")
        variants.append(
            {
                "index": variant.index,
                "label": variant.label,
                "sweep": dict(variant.sweep),
                "overrides": list(variant.overrides),
                "status": status,
                "n": len(done),
                "runs": runs,
                "mean": mean,
                "std": std,
            }
        )
    base = variants[0] if variants else None
    for v in variants:
        v["delta"] = _delta(v, base, metrics) if base is not None else None
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),  # noqa: UP017 (py3.10)
        "settings": settings,
        "seeds": plan.seeds,
        "swept_keys": plan.swept_keys,
        "overrides": plan.overrides,
        "metrics": metrics,
        "variants": variants,
    }


def _delta(v: dict[str, Any], base: dict[str, Any], metrics: Sequence[str]) -> dict[str, Any]:
    """Change against the first variant: metrics as differences of the means, with the
    standard error of that difference when both have several seeds (Welch's, the noise to
    compare a difference with); cost as differences and ratios."""
    m, b = v["mean"], base["mean"]
    out: dict[str, Any] = {}
    for key in metrics:
        out[key] = m[key] - b[key] if m[key] is not None and b[key] is not None else None
        sv, sb = v["std"][key], base["std"][key]
        out[f"{key}_se"] = (
            math.sqrt(sv**2 / v["n"] + sb**2 / base["n"])
            if sv is not None and sb is not None
            else None
        )
    out["params"] = m["params"] - b["params"] if m["params"] is not None and b["params"] else None
    for key, name in (
        ("gflops", "gflops_ratio"),
        ("params", "params_ratio"),
        ("train_images_per_s", "train_speed_ratio"),
        ("infer_images_per_s", "infer_speed_ratio"),
    ):
        out[name] = m[key] / b[key] if m[key] is not None and b[key] else None
    return out


def _fmt(value: float | None, digits: int, std: float | None = None, signed: bool = False) -> str:
    if value is None:
        return "—"
    text = f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    return text + (f" ± {std:.{digits}f}" if std is not None else "")


def _pct(ratio: float | None) -> str:
    return "" if ratio is None else f" ({100 * (ratio - 1):+.1f}%)"


def format_markdown(report: dict[str, Any]) -> str:
    """``report.md``: the settings, one row per variant, then every seed's figures."""
    s = report["settings"]
    keys = report["swept_keys"] or ["variant"]
    metrics = report["metrics"]
    seeds = report["seeds"]
    several = len(seeds) > 1
    lines = [
        "# Ablation",
        "",
        f"Command: `{s['command']}`",
        "",
        f"- {s['created_local']}; machine: {s['machine']['processor']}, "
        f"{s['machine']['cpu_count']} cores, torch {s['machine']['torch']}, "
        f"load average {s['machine']['load_average']} at start, {s.get('load_average_end')} at the end",
        f"- overrides: `{' '.join(report['overrides'])}`; seeds {', '.join(map(str, seeds))}",
        f"- training: {s['processes']} at a time"
        + (" (train img/s measured with trainings sharing the machine)" if s["processes"] > 1 else ""),
        f"- inference: batch {s['inference']['batch_size']}, threads {s['inference']['threads']}, "
        f"{s['inference']['device']}, fp32, no flip test, best of {s['inference']['rounds']} "
        "interleaved rounds, every model in this one process",
        "- AP: the run's final evaluation; GFLOPs in the paper's convention "
        "(convolution multiply-adds / 2^30, psapose.models.complexity)"
        + ("; mean ± standard deviation over seeds, ΔAP ± the standard error of the difference"
           if several else ""),
        "",
    ]  # fmt: skip
    head = [*keys, *metrics, "ΔAP", "params", "GFLOPs", "train img/s", "infer img/s"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in report["variants"]:
        values = list(v["sweep"].values()) or [v["label"]]
        if v["status"] == "failed":
            runs = v["runs"]
            why = "; ".join(
                f"seed {r['seed']}: failed, exit code {r['exit_code']}, log `{r['log']}`"
                for r in runs
            )
            lines.append(
                "| " + " | ".join([*values, why] + [""] * (len(head) - len(values) - 1)) + " |"
            )
            continue
        m, sd, d = v["mean"], v["std"], v["delta"] or {}
        cells = [*values]
        cells += [_fmt(m[k], 4, sd[k]) for k in metrics]
        delta = "" if v["index"] == 0 else _fmt(d.get("AP"), 4, d.get("AP_se"), signed=True)
        cells.append(delta)
        params = "—" if m["params"] is None else f"{m['params'] / 1e6:.3f}M"
        if v["index"] and d.get("params_ratio") is not None:
            params += _pct(d["params_ratio"])
        gflops = _fmt(m["gflops"], 3) + (_pct(d.get("gflops_ratio")) if v["index"] else "")
        cells += [params, gflops]
        cells.append(_fmt(m["train_images_per_s"], 1, sd["train_images_per_s"])
                     + (_pct(d.get("train_speed_ratio")) if v["index"] else ""))  # fmt: skip
        cells.append(_fmt(m["infer_images_per_s"], 1, sd["infer_images_per_s"])
                     + (_pct(d.get("infer_speed_ratio")) if v["index"] else ""))  # fmt: skip
        if v["status"] == "partial":
            cells[0] += f" ({v['n']} of {len(v['runs'])} seeds)"
        lines.append("| " + " | ".join(cells) + " |")
    stats_keys = ["AP", "AP50", "AP75", "AR"]
    lines += [
        "",
        "## Every run",
        "",
        "| " + " | ".join([*keys, "seed", *stats_keys, "loss", "train img/s", "infer img/s", "run"]) + " |",
        "|" + "---|" * (len(keys) + len(stats_keys) + 5),
    ]  # fmt: skip
    for v in report["variants"]:
        for r in v["runs"]:
            values = list(v["sweep"].values()) or [v["label"]]
            if r["status"] != "done":
                why = r.get("error", "").replace("|", "\\|")  # a log line must not split the row
                cells = [*values, str(r["seed"]), f"{r['status']}: {why}"]
                cells += [""] * (len(stats_keys) + 2) + [f"`{r['log']}`"]
            else:
                stats = r.get("stats", {})
                cells = [*values, str(r["seed"])]
                cells += [_fmt(stats.get(k), 4) for k in stats_keys]
                cells += [f"{r['loss']:.4e}", _fmt(r.get("train_images_per_s"), 1),
                          _fmt(r.get("infer_images_per_s"), 1), f"`{r['run_dir']}`"]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


def ablate(
    plan: Plan,
    out_dir: Path,
    processes: int = 1,
    infer_batch: int = 32,
    infer_rounds: int = 5,
    infer_device: str = "cpu",
    threads: int | None = None,
    command: str = "",
    echo: Callable[[str], None] = print,
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Check, train what is not done, measure, and write the report; returns it and its files.

    Raises :class:`AblationError` on bad input (before anything trains) and
    :class:`AblationInterrupted` on SIGINT/SIGTERM.
    """
    out_dir = Path(out_dir).resolve()
    specs = run_specs(plan, out_dir)
    check_run_folders(specs)
    check_configs(plan)
    start_machine = machine_info()
    outcomes = run_ablation(specs, processes, echo)
    done = [o for o in outcomes if o.status == "done"]
    # Cost depends on the variant only: counted once, from its first finished run's config.
    complexity: dict[Path, dict[str, Any]] = {}
    per_variant: dict[int, dict[str, Any]] = {}
    for o in done:
        index = o.spec.variant.index
        if index not in per_variant:
            per_variant[index] = run_complexity(o.spec.run_dir)
        complexity[o.spec.run_dir] = per_variant[index]
    inference: dict[Path, dict[str, Any]] = {}
    if done:
        echo(f"timing inference of {len(done)} models (batch {infer_batch}, {infer_rounds} rounds)")
        figures = measure_inference(
            [o.spec.run_dir for o in done], infer_batch, infer_rounds,
            device=infer_device, threads=threads,
        )  # fmt: skip
        inference = {o.spec.run_dir: f for o, f in zip(done, figures, strict=True)}
    end_load = os.getloadavg() if hasattr(os, "getloadavg") else None
    settings = {
        "command": command,
        "created_local": datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "out_dir": str(out_dir),
        "processes": processes,
        "machine": start_machine,
        "load_average_end": [round(v, 2) for v in end_load] if end_load else None,
        "inference": {
            "batch_size": infer_batch,
            "rounds": infer_rounds,
            "device": infer_device,
            "threads": torch.get_num_threads(),
            "precision": "fp32",
            "flip_test": False,
        },
    }
    report = build_report(plan, outcomes, complexity, inference, settings)
    return report, write_report(report, out_dir)


def write_report(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """``report.json``, ``report.md`` and ``ablation.png`` in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "report.json",
        "md": out_dir / "report.md",
        "png": out_dir / "ablation.png",
    }
    _write_json(paths["json"], report)
    paths["md"].write_text(format_markdown(report))
    image = plot_ablation(report)
    cv2.imwrite(str(paths["png"]), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return paths


# ----------------------------------------------------------------------------- the plot

_COLORS = [  # RGB, distinguishable on white
    (31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
]  # fmt: skip
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    raw = (hi - lo) / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    value = first
    while value <= hi + 1e-9 * step:
        ticks.append(round(value, 10))
        value += step
    return ticks


def _range(values: list[tuple[float, float]]) -> tuple[float, float]:
    lo = min(v - e for v, e in values)
    hi = max(v + e for v, e in values)
    span = hi - lo
    if span <= 0:  # one point, or equal values: a window around them
        span = max(abs(hi) * 0.1, 1e-3)
        return lo - span, hi + span
    return lo - 0.12 * span, hi + 0.12 * span


def _tick_text(value: float, step: float) -> str:
    """As many decimals as the tick step needs (0.05 -> 2, 2.5 -> 1, 20 -> 0)."""
    decimals = 0
    while decimals < 6 and abs(round(step, decimals) - step) > 1e-9 * max(1.0, abs(step)):
        decimals += 1
    return f"{value:.{decimals}f}"


def _put(img: np.ndarray, text: str, x: int, y: int, scale: float = 0.4, color=(40, 40, 40),
         thickness: int = 1, align: str = "left") -> None:  # fmt: skip
    (w, _), _ = cv2.getTextSize(text, _FONT, scale, thickness)
    if align == "center":
        x -= w // 2
    elif align == "right":
        x -= w
    cv2.putText(img, text, (int(x), int(y)), _FONT, scale, color, thickness, cv2.LINE_AA)


def _panel(
    points: list[dict[str, Any]], xlabel: str, ylabel: str, title: str, size=(440, 560)
) -> np.ndarray:
    """One scatter panel with error bars and labels, white background, RGB."""
    height, width = size
    img = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 78, 24, 40, 56
    _put(img, title, width // 2, 24, 0.5, (0, 0, 0), 1, "center")
    _put(img, xlabel, left + (width - left - right) // 2, height - 12, 0.45, align="center")
    label = np.full((24, height - top - bottom, 3), 255, np.uint8)
    _put(label, ylabel, label.shape[1] // 2, 16, 0.45, align="center")
    rotated = np.ascontiguousarray(np.rot90(label))  # reads bottom to top
    img[top : top + rotated.shape[0], 4 : 4 + rotated.shape[1]] = rotated
    cv2.rectangle(img, (left, top), (width - right, height - bottom), (0, 0, 0), 1)
    if not points:
        _put(img, "no finished variant", width // 2, height // 2, 0.5, align="center")
        return img
    x_lo, x_hi = _range([(p["x"], p["xerr"]) for p in points])
    y_lo, y_hi = _range([(p["y"], p["yerr"]) for p in points])

    def px(x: float, y: float) -> tuple[int, int]:
        u = left + (x - x_lo) / (x_hi - x_lo) * (width - left - right)
        v = height - bottom - (y - y_lo) / (y_hi - y_lo) * (height - top - bottom)
        return int(round(u)), int(round(v))

    for axis, (lo, hi) in (("x", (x_lo, x_hi)), ("y", (y_lo, y_hi))):
        ticks = _nice_ticks(lo, hi)
        step = ticks[1] - ticks[0] if len(ticks) > 1 else abs(hi - lo)
        for t in ticks:
            if axis == "x":
                u, _ = px(t, y_lo)
                cv2.line(img, (u, top), (u, height - bottom), (230, 230, 230), 1)
                _put(img, _tick_text(t, step), u, height - bottom + 16, align="center")
            else:
                _, v = px(x_lo, t)
                cv2.line(img, (left, v), (width - right, v), (230, 230, 230), 1)
                _put(img, _tick_text(t, step), left - 6, v + 4, align="right")
    cv2.rectangle(img, (left, top), (width - right, height - bottom), (0, 0, 0), 1)
    for k, p in enumerate(points):
        color = p["color"]
        u, v = px(p["x"], p["y"])
        if p["yerr"] > 0:
            (_, v0), (_, v1) = px(p["x"], p["y"] - p["yerr"]), px(p["x"], p["y"] + p["yerr"])
            cv2.line(img, (u, v0), (u, v1), color, 2, cv2.LINE_AA)
            cv2.line(img, (u - 5, v0), (u + 5, v0), color, 2, cv2.LINE_AA)
            cv2.line(img, (u - 5, v1), (u + 5, v1), color, 2, cv2.LINE_AA)
        if p["xerr"] > 0:
            (u0, _), (u1, _) = px(p["x"] - p["xerr"], p["y"]), px(p["x"] + p["xerr"], p["y"])
            cv2.line(img, (u0, v), (u1, v), color, 2, cv2.LINE_AA)
            cv2.line(img, (u0, v - 5), (u0, v + 5), color, 2, cv2.LINE_AA)
            cv2.line(img, (u1, v - 5), (u1, v + 5), color, 2, cv2.LINE_AA)
        cv2.circle(img, (u, v), 6, color, -1, cv2.LINE_AA)
        cv2.circle(img, (u, v), 6, (0, 0, 0), 1, cv2.LINE_AA)
        # Labels alternate above and below, so that close points keep readable labels.
        dy = -12 if k % 2 == 0 else 20
        (tw, _), _ = cv2.getTextSize(p["label"], _FONT, 0.42, 1)
        x_text = min(max(u + 9, left + 2), width - right - tw - 2)
        _put(img, p["label"], x_text, v + dy, 0.42, color)
    return img


def plot_ablation(report: dict[str, Any]) -> np.ndarray:
    """``ablation.png`` as an RGB array: AP against GFLOPs and against inference img/s,
    one point per variant at its mean, error bars one standard deviation across seeds."""
    flops, speed = [], []
    for v in report["variants"]:
        m, sd = v["mean"], v["std"]
        if m["AP"] is None:
            continue
        color = _COLORS[v["index"] % len(_COLORS)]
        common = {"label": v["label"], "y": m["AP"], "yerr": sd["AP"] or 0.0, "color": color}
        if m["gflops"] is not None:
            flops.append({**common, "x": m["gflops"], "xerr": sd["gflops"] or 0.0})
        if m["infer_images_per_s"] is not None:
            speed.append(
                {**common, "x": m["infer_images_per_s"], "xerr": sd["infer_images_per_s"] or 0.0}
            )
    n = len(report["seeds"])
    note = f"mean of {n} seeds, bars: 1 s.d." if n > 1 else "one seed"
    left = _panel(flops, "GFLOPs (paper convention)", "AP", f"AP vs GFLOPs ({note})")
    right = _panel(speed, "inference img/s", "AP", f"AP vs inference speed ({note})")
    return np.concatenate([left, np.full((left.shape[0], 8, 3), 255, np.uint8), right], axis=1)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
