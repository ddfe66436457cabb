"""Training checkpoint files: atomic writes with a checksum, validation on read, resume candidates.

A run keeps ``checkpoints/latest.pth`` (every epoch, and mid-epoch on a stop
signal), the one before it as ``previous.pth``, and ``best.pth``. Each is written
to a temporary file, fsynced and renamed, so a crash or a full disk never
leaves half a file in place of a good one; each carries a checksum of its
contents (:func:`psapose.checkpoint.with_checksum`), verified on every load.

Reading a training checkpoint checks its whole structure before anything is
applied: a truncated, corrupt, tampered or junk file is a
:class:`~psapose.checkpoint.CheckpointError` naming the file and the field, so
``resume=auto`` can set it aside and fall back to the older one.

The trainer's state goes in and out here too: :func:`training_state` gathers what
an exact resume needs (model, optimiser, scaler, position, RNG states, best score,
fault counts) plus the config and the plain inference config
(:meth:`psapose.runtime.RunSetup.inference_config`); :func:`save_checkpoint` writes
it; :func:`resume` and :func:`restore_training_state` put it back.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from omegaconf import OmegaConf

from psapose.checkpoint import (
    CheckpointError,
    UnsafeCheckpointError,
    load_checkpoint_file,
    with_checksum,
)
from psapose.engine.faults import NonFiniteLossError

if TYPE_CHECKING:
    from psapose.engine.trainer import Trainer

__all__ = [
    "LATEST",
    "PREVIOUS",
    "OutputWriteError",
    "atomic_save",
    "find_resume_checkpoint",
    "get_rng_state",
    "read_training_checkpoint",
    "restore_training_state",
    "resume",
    "resume_candidates",
    "save_checkpoint",
    "set_aside",
    "set_rng_state",
    "training_state",
]

log = logging.getLogger("psapose")

LATEST, PREVIOUS = "latest.pth", "previous.pth"
CORRUPT_SUFFIX = ".corrupt"


class OutputWriteError(OSError):
    """A run's output could not be written (disk full, quota, read-only, permission).

    The file it was meant to replace is left as it was.
    """

    def __init__(self, path: Path, err: OSError, kept: Path | None = None) -> None:
        reason = "no space left on device" if err.errno in (errno.ENOSPC, errno.EDQUOT) else None
        reason = reason or err.strerror or str(err)
        kept_note = f"; {kept} is kept as it was" if kept is not None and kept.is_file() else ""
        super().__init__(err.errno, f"cannot write {path}: {reason}{kept_note}")
        self.path, self.kept = path, kept

    def __str__(self) -> str:
        return str(self.strerror)


def _fsync_dir(directory: Path) -> None:
    # The renames themselves must reach the disk too, or a power cut can undo them.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: Path, keep_previous: Path | None = None) -> None:
    """``torch.save`` to a temporary file, fsync, then rename: a crash never leaves half a file.

    A mapping gets a checksum entry (verified by every psapose load). With
    ``keep_previous``, an existing ``path`` is first renamed there, so the
    checkpoint before this one survives (the fallback if this one is corrupt).
    A failed write (a full disk, say) raises :class:`OutputWriteError` and leaves
    ``path`` and ``keep_previous`` untouched.
    """
    path = Path(path)
    if isinstance(obj, dict):
        obj = with_checksum(obj)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
    except OSError as err:
        raise OutputWriteError(path, err, kept=path) from err
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def resume_candidates(output_dir: Path) -> list[Path]:
    """Checkpoints ``resume=auto`` may continue from, newest first."""
    folder = Path(output_dir) / "checkpoints"
    return [p for p in (folder / LATEST, folder / PREVIOUS) if p.is_file()]


def find_resume_checkpoint(output_dir: Path) -> Path | None:
    """The newest checkpoint file in ``output_dir`` (not checked for validity)."""
    candidates = resume_candidates(output_dir)
    return candidates[0] if candidates else None


def set_aside(path: Path) -> Path:
    """Rename an unusable checkpoint to ``<name>.corrupt`` (kept for inspection, never reused)."""
    aside = path.with_name(path.name + CORRUPT_SUFFIX)
    os.replace(path, aside)
    return aside


# ----------------------------------------------------------------------------- validation
def _fail(path: Path, field: str, problem: str) -> CheckpointError:
    return CheckpointError(f"{path}: field '{field}' {problem}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(state: Mapping, key: str, path: Path, minimum: int = 0) -> None:
    value = state[key]
    if not (_is_int(value) and value >= minimum):
        raise _fail(path, key, f"must be an integer >= {minimum}, got {value!r:.60}")


def _check_tensor_map(value: Any, field: str, path: Path) -> None:
    if not isinstance(value, Mapping) or not value:
        raise _fail(path, field, "must be a non-empty mapping of names to tensors")
    bad = [str(k) for k, v in value.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise _fail(path, field, f"holds non-tensor entries ({', '.join(bad[:3])})")
    nonfinite = [
        str(k) for k, v in value.items() if v.is_floating_point() and not v.isfinite().all()
    ]
    if nonfinite:
        raise _fail(path, field, f"has non-finite weights in {', '.join(nonfinite[:3])}")


def _check_rng(value: Any, path: Path) -> None:
    ok = (
        isinstance(value, Mapping)
        and isinstance(value.get("python"), tuple)
        and isinstance(value.get("numpy"), (list, tuple))
        and len(value["numpy"]) == 5
        and isinstance(value["numpy"][1], torch.Tensor)
        and isinstance(value.get("torch"), torch.Tensor)
        and value["torch"].dtype == torch.uint8
    )
    if not ok:
        raise _fail(path, "rng", "is not a random-number-generator state psapose wrote")


_OPTIONAL_TYPES: dict[str, tuple[type, ...]] = {
    "history": (list,),
    "epoch_losses": (list,),
    "counters": (dict,),
    "epoch_counters": (dict,),
    "bad_samples": (dict,),
    "config": (dict,),
    "inference": (dict,),
    "best_ap": (float, int),
    "best_score": (float, int),
    "best_metric": (str,),
    "pending_eval": (bool,),
}


def read_training_checkpoint(path: Path) -> dict[str, Any]:
    """A psapose training checkpoint, loaded safely (checksum verified) and checked whole.

    Every field the trainer restores is checked for presence and type before any
    of it is applied, so a bad file is one :class:`CheckpointError` naming it and
    the field, never a ``KeyError`` halfway through a resume.
    """
    path = Path(path)
    state = load_checkpoint_file(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a psapose training checkpoint (not a mapping)")
    missing = [
        k for k in ("model", "optimizer", "scaler", "epoch", "step", "rng") if k not in state
    ]
    if missing:
        raise CheckpointError(
            f"{path}: not a complete psapose training checkpoint (missing {', '.join(missing)})"
        )
    _check_tensor_map(state["model"], "model", path)
    optimizer = state["optimizer"]
    if not (
        isinstance(optimizer, Mapping)
        and isinstance(optimizer.get("state"), Mapping)
        and isinstance(optimizer.get("param_groups"), list)
    ):
        raise _fail(path, "optimizer", "is not an optimizer state dict")
    if not isinstance(state["scaler"], Mapping):
        raise _fail(path, "scaler", "is not a grad-scaler state dict")
    _check_int(state, "epoch", path)
    _check_int(state, "step", path)
    for key in ("batch_in_epoch", "consecutive_nonfinite"):
        if key in state:
            _check_int(state, key, path)
    _check_rng(state["rng"], path)
    for key, types in _OPTIONAL_TYPES.items():
        if key in state and not isinstance(state[key], types):
            names = " or ".join(t.__name__ for t in types)
            raise _fail(path, key, f"must be a {names}, got {type(state[key]).__name__}")
    if "best_ap" in state and math.isnan(float(state["best_ap"])):
        raise _fail(path, "best_ap", "is NaN")
    return state


# ----------------------------------------------------------------------------- RNG state
def get_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) generator states, as tensors and plain values only
    (so the checkpoint loads with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    numpy_state = [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore :func:`get_rng_state`'s output."""
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    legacy = (kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached)
    np.random.set_state(legacy)  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- training state
def training_state(trainer: Trainer) -> dict[str, Any]:
    """Everything an exact resume needs (and the inference config), as a checkpoint stores it."""
    faults = trainer.faults
    return {
        "model": trainer.raw_model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "epoch": trainer.epoch,
        "step": trainer.step,
        "best_ap": trainer.best_ap,
        "best_metric": trainer.best_metric,
        "best_score": trainer.best_score,
        "history": trainer.history,
        "batch_in_epoch": trainer.batch_in_epoch,
        "epoch_losses": list(trainer.epoch_losses),
        "pending_eval": trainer.pending_eval,
        "counters": dict(faults.counters),
        "epoch_counters": dict(faults.epoch_counters),
        "bad_samples": dict(faults.bad.samples),
        "consecutive_nonfinite": faults.consecutive_nonfinite,
        "rng": get_rng_state(),
        "config": OmegaConf.to_container(trainer.cfg, resolve=True),
        # Plain data: PoseEstimator.from_checkpoint builds from it without Hydra.
        "inference": trainer.setup.inference_config(),
    }


def save_checkpoint(trainer: Trainer, name: str = LATEST) -> Path:
    """Write a checkpoint (main rank); ``latest.pth`` keeps the one before as ``previous.pth``."""
    path = trainer.output_dir / "checkpoints" / name
    if trainer.dist.is_main:
        bad = [k for k, p in trainer.raw_model.named_parameters() if not p.isfinite().all()]
        if bad:
            # Never replace a good checkpoint with broken weights.
            raise NonFiniteLossError(
                f"non-finite weights ({', '.join(bad[:3])}) at epoch {trainer.epoch} step "
                f"{trainer.step}; {path} was not written, the previous checkpoints are kept"
            )
        keep = path.with_name(PREVIOUS) if name == LATEST else None
        atomic_save(training_state(trainer), path, keep_previous=keep)
    return path


def resume(trainer: Trainer) -> None:
    """Apply ``cfg.resume`` (a path, or ``auto``: the newest usable checkpoint) to ``trainer``."""
    option = trainer.cfg.resume
    if not option:
        return
    if option != "auto":
        restore_training_state(trainer, read_training_checkpoint(Path(option)), Path(option))
        return
    candidates = resume_candidates(trainer.output_dir)
    if not candidates:
        log.info("resume=auto: no checkpoint in %s, starting fresh", trainer.output_dir)
        return
    problems: list[str] = []
    for path in candidates:
        try:
            state = read_training_checkpoint(path)
            restore_training_state(trainer, state, path)
        except UnsafeCheckpointError:
            raise  # never skipped silently: someone put code where weights belong
        except CheckpointError as err:
            log.warning("resume=auto: cannot use %s: %s", path, err)
            problems.append(str(err))
            continue
        if problems and trainer.dist.is_main:
            # Renamed, not deleted (kept for inspection), so the next save cannot
            # rotate a corrupt latest.pth into previous.pth over the good one.
            for bad in candidates[: len(problems)]:
                log.warning("resume=auto: moved the unusable %s to %s", bad, set_aside(bad))
        return
    raise CheckpointError(
        f"resume=auto: no usable checkpoint in {trainer.output_dir / 'checkpoints'} "
        f"({'; '.join(problems)}). Move them away to start from scratch, or pass resume=PATH."
    )


def restore_training_state(trainer: Trainer, state: dict[str, Any], path: Path) -> None:
    """Apply a checkpoint read (and checked) by :func:`read_training_checkpoint`."""
    batch_in_epoch = int(state.get("batch_in_epoch", 0))
    if batch_in_epoch > trainer.sampler.num_batches():
        raise CheckpointError(
            f"{path}: stopped at batch {batch_in_epoch} of an epoch that now has "
            f"{trainer.sampler.num_batches()}; resume with the same data and batch size"
        )
    try:
        trainer.raw_model.load_state_dict(state["model"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
    except Exception as err:  # shapes, optimizer groups, RNG layout: all "does not fit"
        raise CheckpointError(f"{path}: does not fit this model and config: {err}") from err
    trainer.epoch, trainer.step = state["epoch"], state["step"]
    trainer.best_ap = float(state.get("best_ap", -1.0))
    if state.get("best_metric", "AP") == trainer.best_metric:
        trainer.best_score = float(state.get("best_score", trainer.best_ap))
    trainer.history = list(state.get("history", []))
    trainer.batch_in_epoch = batch_in_epoch
    trainer.epoch_losses = list(state.get("epoch_losses", []))
    trainer.pending_eval = bool(state.get("pending_eval", False))
    faults = trainer.faults
    faults.counters.update(state.get("counters", {}))
    faults.epoch_counters.update(state.get("epoch_counters", {}))
    faults.bad.samples = {int(k): v for k, v in state.get("bad_samples", {}).items()}
    faults.consecutive_nonfinite = int(state.get("consecutive_nonfinite", 0))
    log.info(
        "resumed from %s at epoch %d, batch %d (step %d)",
        path, trainer.epoch + 1, trainer.batch_in_epoch, trainer.step,
    )  # fmt: skip
