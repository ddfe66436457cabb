"""The training loop: data, model, loss, optimiser, AMP, DDP, evaluation, checkpoints, logs.

A run directory holds ``config.yaml`` (resolved), ``checkpoints/latest.pth``
(every epoch, and on SIGTERM/SIGINT mid-epoch; written atomically, the one
before kept as ``previous.pth``), ``checkpoints/best.pth`` (best AP),
TensorBoard logs in ``tb/``, and ``predictions.png``. ``resume=auto`` (or a
path) continues exactly, from the middle of an epoch too: model, optimiser,
scheduler, grad scaler, epoch and batch, RNG states, best AP and counters.

Faults a long run meets are handled here (see docs/reliability.md): unreadable
images are skipped and counted up to ``data.max_bad_fraction``; a non-finite
loss skips its step, up to ``schedule.max_nonfinite_steps`` in a row; a signal
writes a resumable checkpoint and stops; a corrupt ``latest.pth`` falls back
to ``previous.pth``.
"""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from psapose.checkpoint import (
    CheckpointError,
    UnsafeCheckpointError,
    load_checkpoint_file,
    load_pretrained_backbone,
)
from psapose.config import build_model, input_size, validate_config
from psapose.data.builder import build_dataset, build_keypoint_spec, ensure_generated
from psapose.data.coco import AnnotationError, AnnotationFileNotFound, TopDownDataset
from psapose.data.normalize import normalize_images
from psapose.data.transforms import read_image
from psapose.engine.distributed import all_gather_objects, barrier, setup_distributed
from psapose.engine.inference import Predictions, autocast, evaluate_predictions, predict
from psapose.engine.loss import build_loss
from psapose.engine.sampler import EpochSampler
from psapose.visualize import draw_poses, heatmap_image, image_grid

__all__ = [
    "DataError",
    "NonFiniteLossError",
    "Progress",
    "Trainer",
    "TrainingError",
    "TrainingInterrupted",
    "atomic_save",
    "find_resume_checkpoint",
    "prepare_config",
    "resume_candidates",
    "seed_everything",
]

log = logging.getLogger("psapose")

LATEST, PREVIOUS = "latest.pth", "previous.pth"
_TRAINING_KEYS = ("model", "optimizer", "scaler", "epoch", "step", "rng")
_EXAMPLES = 5  # bad files named in the error that stops a run


class TrainingError(RuntimeError):
    """A fault that stops the run on purpose; the last good checkpoint is kept as it was."""


class DataError(TrainingError):
    """More unreadable training samples than ``data.max_bad_fraction`` allows."""


class NonFiniteLossError(TrainingError, FloatingPointError):
    """``schedule.max_nonfinite_steps`` NaN/inf losses in a row."""


class TrainingInterrupted(Exception):  # noqa: N818 (not an error: a requested stop)
    """SIGTERM or SIGINT stopped training after writing a resumable checkpoint."""

    def __init__(self, signum: int, checkpoint: Path, epoch: int, batch: int) -> None:
        name = signal.Signals(signum).name
        super().__init__(
            f"stopped by {name} at epoch {epoch + 1}, batch {batch}; "
            f"resumable checkpoint {checkpoint}"
        )
        self.signum, self.checkpoint, self.epoch, self.batch = signum, checkpoint, epoch, batch

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process stopped by a signal: 128 + its number."""
        return 128 + self.signum


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

    With ``keep_previous``, an existing ``path`` is first renamed there, so the
    checkpoint before this one survives (the fallback if this one is corrupt).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
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


def read_training_checkpoint(path: Path) -> dict[str, Any]:
    """A psapose training checkpoint, loaded safely and checked for completeness."""
    state = load_checkpoint_file(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a psapose training checkpoint (not a mapping)")
    missing = [k for k in _TRAINING_KEYS if k not in state]
    if missing:
        raise CheckpointError(
            f"{path}: not a complete psapose training checkpoint (missing {', '.join(missing)})"
        )
    bad = [k for k, v in state["model"].items() if v.is_floating_point() and not v.isfinite().all()]
    if bad:
        raise CheckpointError(f"{path}: non-finite weights in {', '.join(bad[:3])}")
    return state


class Progress:
    """Rate and ETA: a live line on a terminal, periodic log lines otherwise."""

    def __init__(self, total: int, label: str, every: int = 20, enabled: bool = True) -> None:
        self.total, self.label, self.every, self.enabled = total, label, every, enabled
        self.count, self.steps, self.start = 0, 0, time.perf_counter()
        self.tty = enabled and sys.stderr.isatty()
        self.extra = ""

    def update(self, items: int, extra: str = "") -> None:
        self.count += items
        self.steps += 1
        self.extra = extra
        if not self.enabled:
            return
        if self.tty:
            sys.stderr.write("\r" + self.line())
            sys.stderr.flush()
        elif self.steps % self.every == 0:
            log.info(self.line())

    def line(self) -> str:
        elapsed = time.perf_counter() - self.start
        rate = self.count / max(elapsed, 1e-9)
        eta = (self.total - self.steps) * elapsed / max(self.steps, 1)
        return (
            f"{self.label} {self.steps}/{self.total} {rate:.1f} img/s "
            f"eta {eta:.0f}s {self.extra}".rstrip()
        )

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\r" + self.line() + "\n")


def prepare_config(cfg: DictConfig) -> tuple[DictConfig, Any, Any]:
    """Validate, then tie the model to the data and codec: keypoint count and channels per keypoint.

    Returns the config, the keypoint spec and the codec.
    """
    validate_config(cfg)
    spec = build_keypoint_spec(cfg.data)
    codec = instantiate(cfg.codec)
    with open_dict(cfg):
        cfg.num_keypoints = spec.num_keypoints
        if "channels_per_keypoint" in cfg.model:
            cfg.model.channels_per_keypoint = codec.channels_per_keypoint
    return cfg, spec, codec


def _lr_factor(step: int, epoch: int, sched: DictConfig) -> float:
    """Linear warm-up over ``warmup_iters`` steps, times ``gamma`` per milestone epoch passed."""
    factor = sched.gamma ** sum(epoch >= m for m in sched.milestones)
    if step < sched.warmup_iters:
        alpha = step / sched.warmup_iters
        factor *= sched.warmup_ratio * (1 - alpha) + alpha
    return factor


def _rng_state() -> dict[str, Any]:
    # Only tensors and plain Python values, so the checkpoint loads with weights_only=True.
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    numpy_state = [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    legacy = (kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached)
    np.random.set_state(legacy)  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _ignore_sigint_in_worker(worker_id: int) -> None:
    # Ctrl-C reaches the whole process group; the main process turns it into a
    # checkpoint and a clean stop, which needs its workers alive meanwhile.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


class Trainer:
    """Builds everything from a composed config and runs :meth:`fit`."""

    def __init__(self, cfg: DictConfig, output_dir: str | Path, micro_batches: int = 1) -> None:
        self.cfg, self.spec, self.codec = prepare_config(cfg)
        self.output_dir = Path(output_dir)
        self.dist, self.device = setup_distributed(cfg.device)
        self.micro_batches = micro_batches  # one process emulating DDP shards (tests)
        seed_everything(cfg.seed, cfg.deterministic)
        if self.dist.is_main:
            generated = ensure_generated(cfg.data)
            if generated:
                log.info("generated the synthetic dataset in %s", cfg.data.root)
        barrier()
        self.input_size = input_size(cfg)
        self.precision = cfg.precision
        if self.precision == "bf16" and self.device.type == "cpu":
            log.info("bf16 autocast on the CPU")
        self.train_set = build_dataset(
            cfg.data, "train", self.input_size, seed=cfg.seed, udp=self.codec.use_udp
        )
        self.val_set = self._eval_dataset(cfg.eval.split)
        self.model = self._build_model()
        self.loss_fn = build_loss(
            self.codec.channels_per_keypoint, torch.from_numpy(self.spec.joint_weights_array)
        ).to(self.device)
        self.optimizer = self._build_optimizer()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.sampler = EpochSampler(
            len(self.train_set),
            cfg.schedule.batch_size,
            shuffle=True,
            seed=cfg.seed,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            drop_last=True,
        )
        if self.sampler.num_batches() == 0:
            raise ValueError(
                f"{len(self.train_set)} training samples are fewer than one global batch "
                f"({self.sampler.global_batch}); lower schedule.batch_size"
            )
        self.loader = DataLoader(
            self.train_set,
            batch_size=cfg.schedule.batch_size,
            sampler=self.sampler,
            num_workers=cfg.workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=cfg.workers > 0,
            drop_last=True,
            worker_init_fn=_ignore_sigint_in_worker if cfg.workers > 0 else None,
        )
        self.epoch, self.step, self.best_ap = 0, 0, -1.0
        self.history: list[dict[str, Any]] = []
        # Position inside the current epoch, so that a checkpoint written mid-epoch resumes exactly.
        self.batch_in_epoch = 0
        self.epoch_losses: list[float] = []
        self.counters = {"skipped_samples": 0, "nonfinite_steps": 0}  # whole run
        self.epoch_counters = {"skipped_samples": 0, "nonfinite_steps": 0}
        self.bad_samples: dict[int, str] = {}  # dataset index -> reason (path named), all ranks
        self.consecutive_nonfinite = 0
        self._signal: int | None = None  # set by the signal handler, this process only
        self.stop_signal: int | None = None  # agreed by all ranks: stop after this step
        self._buffer_snapshot: list[torch.Tensor] | None = None
        self.writer = None
        if self.dist.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.output_dir / "tb"))
        self._maybe_resume()

    # ------------------------------------------------------------------ building
    def _eval_dataset(self, split: str) -> TopDownDataset | None:
        try:
            return build_dataset(
                self.cfg.data, split, self.input_size, augment=False, udp=self.codec.use_udp
            )
        except AnnotationError as err:
            if not isinstance(err, AnnotationFileNotFound):
                raise  # a broken file stops the run at load, named; only a missing one is optional
            log.warning("no %s evaluation: %s", split, err)
            return None
        except (OSError, ValueError) as err:
            log.warning("no %s evaluation: %s", split, err)
            return None

    def _build_model(self) -> nn.Module:
        model = build_model(self.cfg)
        if self.cfg.pretrained:
            report = load_pretrained_backbone(model, self.cfg.pretrained)
            if self.dist.is_main:
                log.info("pretrained backbone: %s", report.summary())
        if self.cfg.sync_bn and self.dist.enabled:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = model.to(self.device)
        if self.cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.raw_model = model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=ids)
        if self.cfg.compile:
            model = torch.compile(model)
        return model

    def _build_optimizer(self) -> torch.optim.Optimizer:
        s = self.cfg.schedule
        params = self.raw_model.parameters()
        if s.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
        elif s.optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
        else:
            opt = torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay)
        for group in opt.param_groups:
            group["initial_lr"] = s.lr
        return opt

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.raw_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "best_ap": self.best_ap,
            "history": self.history,
            "batch_in_epoch": self.batch_in_epoch,
            "epoch_losses": list(self.epoch_losses),
            "counters": dict(self.counters),
            "epoch_counters": dict(self.epoch_counters),
            "bad_samples": dict(self.bad_samples),
            "consecutive_nonfinite": self.consecutive_nonfinite,
            "rng": _rng_state(),
            "config": OmegaConf.to_container(self.cfg, resolve=True),
        }

    def save(self, name: str = LATEST) -> Path:
        """Write a checkpoint (main rank); ``latest.pth`` keeps the one before as ``previous.pth``."""
        path = self.output_dir / "checkpoints" / name
        if self.dist.is_main:
            bad = [k for k, p in self.raw_model.named_parameters() if not p.isfinite().all()]
            if bad:
                # Never replace a good checkpoint with broken weights.
                raise NonFiniteLossError(
                    f"non-finite weights ({', '.join(bad[:3])}) at epoch {self.epoch} step "
                    f"{self.step}; {path} was not written, the previous checkpoints are kept"
                )
            keep = path.with_name(PREVIOUS) if name == LATEST else None
            atomic_save(self.state_dict(), path, keep_previous=keep)
        return path

    def _maybe_resume(self) -> None:
        resume = self.cfg.resume
        if not resume:
            return
        if resume != "auto":
            self._load_training_state(read_training_checkpoint(Path(resume)), Path(resume))
            return
        candidates = resume_candidates(self.output_dir)
        if not candidates:
            log.info("resume=auto: no checkpoint in %s, starting fresh", self.output_dir)
            return
        problems = []
        for path in candidates:
            try:
                state = read_training_checkpoint(path)
            except UnsafeCheckpointError:
                raise  # never skipped silently: someone put code where weights belong
            except CheckpointError as err:
                log.warning("resume=auto: cannot use %s: %s", path, err)
                problems.append(str(err))
                continue
            self._load_training_state(state, path)
            if problems and self.dist.is_main:
                self._set_aside_unusable(candidates[: len(problems)])
            return
        raise CheckpointError(
            f"resume=auto: no usable checkpoint in {self.output_dir / 'checkpoints'} "
            f"({'; '.join(problems)}). Move them away to start from scratch, or pass resume=PATH."
        )

    def _set_aside_unusable(self, paths: list[Path]) -> None:
        # Renamed, not deleted (kept for inspection), so the next save cannot rotate
        # a corrupt latest.pth into previous.pth over the good one.
        for path in paths:
            aside = path.with_name(path.name + ".corrupt")
            os.replace(path, aside)
            log.warning("resume=auto: moved the unusable %s to %s", path.name, aside)

    def _load_training_state(self, state: dict[str, Any], path: Path) -> None:
        try:
            self.raw_model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise CheckpointError(f"{path}: does not fit this model and config: {err}") from err
        self.epoch, self.step, self.best_ap = state["epoch"], state["step"], state["best_ap"]
        self.history = list(state.get("history", []))
        self.batch_in_epoch = int(state.get("batch_in_epoch", 0))
        if self.batch_in_epoch > self.sampler.num_batches():
            raise CheckpointError(
                f"{path}: stopped at batch {self.batch_in_epoch} of an epoch that now has "
                f"{self.sampler.num_batches()}; resume with the same data and batch size"
            )
        self.epoch_losses = list(state.get("epoch_losses", []))
        self.counters.update(state.get("counters", {}))
        self.epoch_counters.update(state.get("epoch_counters", {}))
        self.bad_samples = {int(k): v for k, v in state.get("bad_samples", {}).items()}
        self.consecutive_nonfinite = int(state.get("consecutive_nonfinite", 0))
        _set_rng_state(state["rng"])
        log.info(
            "resumed from %s at epoch %d, batch %d (step %d)",
            path, self.epoch + 1, self.batch_in_epoch, self.step,
        )  # fmt: skip

    # ------------------------------------------------------------------ training
    def _set_lr(self) -> float:
        lr = self.cfg.schedule.lr * _lr_factor(self.step, self.epoch, self.cfg.schedule)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def train_step(self, batch: dict[str, Any]) -> float:
        """One optimiser step; returns the loss (NaN/inf when the step was skipped).

        Unreadable samples (``valid`` False) get zero loss weight and are
        counted; a non-finite loss skips the step. Both, and a pending signal,
        are agreed by all ranks in one all-reduce, so every rank takes the same
        decision at the same step.
        """
        self.model.train()
        lr = self._set_lr()
        images = normalize_images(
            batch["image"], device=self.device, channels_last=self.cfg.channels_last
        )
        keypoints = batch["keypoints"].to(self.device, non_blocking=True)
        visible = batch["visible"].to(self.device, non_blocking=True)
        # Targets are made per batch on the device: far cheaper than per sample in workers.
        targets, weights = self.codec.encode(keypoints, visible)
        invalid_rows, new_bad = self._unreadable_in(batch)
        if invalid_rows:
            valid = batch["valid"].to(self.device, weights.dtype)
            weights = weights * valid.view(-1, *([1] * (weights.dim() - 1)))
        self._snapshot_buffers()
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        chunks = zip(
            images.chunk(self.micro_batches),
            targets.chunk(self.micro_batches),
            weights.chunk(self.micro_batches),
            strict=True,
        )
        for img, tgt, wgt in chunks:
            with autocast(self.device, self.precision):
                heatmaps = self.model(img)
            loss = self.loss_fn(heatmaps, tgt, wgt) / self.micro_batches
            self.scaler.scale(loss).backward()
            total += loss.item()
        nonfinite, signalled, invalid_rows, new_count = self._agree(
            [not math.isfinite(total), self._signal is not None, invalid_rows, len(new_bad)]
        )
        if invalid_rows:
            self.counters["skipped_samples"] += invalid_rows
            self.epoch_counters["skipped_samples"] += invalid_rows
        if new_count:
            self._record_bad_samples(new_bad)
        if nonfinite:
            self._skip_nonfinite_step(total)
        else:
            self.consecutive_nonfinite = 0
            if self.cfg.schedule.grad_clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.raw_model.parameters(), self.cfg.schedule.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        # Counts batches consumed, skipped ones too: the schedule follows the data position.
        self.step += 1
        if signalled:
            self.stop_signal = self._signal or signal.SIGTERM  # another rank's signal
        if self.writer is not None and self.step % self.cfg.log_interval == 0:
            self.writer.add_scalar("train/loss", total, self.step)
            self.writer.add_scalar("train/lr", lr, self.step)
        return total

    def _agree(self, values: list[int | bool]) -> list[int]:
        """Sums of ``values`` over all ranks (the values themselves without DDP)."""
        if not self.dist.enabled:
            return [int(v) for v in values]
        import torch.distributed as dist

        tensor = torch.tensor([int(v) for v in values], dtype=torch.int64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def _unreadable_in(self, batch: dict[str, Any]) -> tuple[int, list[tuple[int, str]]]:
        """Rows of ``batch`` whose image could not be read, and those not seen before."""
        if "valid" not in batch:
            return 0, []
        rows = (~batch["valid"].bool()).nonzero().flatten().tolist()
        indices = [int(batch["index"][r]) for r in rows]
        new = [(i, batch["error"][r]) for i, r in zip(indices, rows, strict=True)]
        return len(rows), [(i, err) for i, err in new if i not in self.bad_samples]

    def _record_bad_samples(self, new_bad: list[tuple[int, str]]) -> None:
        """Merge every rank's newly seen unreadable samples; stop past ``data.max_bad_fraction``."""
        parts = all_gather_objects(new_bad) if self.dist.enabled else [new_bad]
        logged = set(self.bad_samples.values())
        for part in parts:
            for index, reason in part:
                if index in self.bad_samples:
                    continue
                self.bad_samples[index] = reason
                if reason not in logged and self.dist.is_main:
                    log.warning("skipping an unreadable training sample: %s", reason)
                logged.add(reason)
        limit = self.cfg.data.max_bad_fraction * len(self.train_set)
        if len(self.bad_samples) > limit:
            examples = list(dict.fromkeys(self.bad_samples.values()))[:_EXAMPLES]
            raise DataError(
                f"{len(self.bad_samples)} of {len(self.train_set)} training samples cannot be "
                f"read, more than data.max_bad_fraction={self.cfg.data.max_bad_fraction} allows "
                f"({limit:.1f}); for example:\n  "
                + "\n  ".join(examples)
                + "\nFix or remove these files, or raise data.max_bad_fraction."
            )

    def _snapshot_buffers(self) -> None:
        # BatchNorm statistics move in the forward pass: a NaN batch would poison them
        # even though its optimiser step is skipped, so they are put back from here.
        buffers = list(self.raw_model.buffers())
        if self._buffer_snapshot is None:
            self._buffer_snapshot = [b.detach().clone() for b in buffers]
            return
        with torch.no_grad():
            for saved, live in zip(self._buffer_snapshot, buffers, strict=True):
                saved.copy_(live)

    def _skip_nonfinite_step(self, loss: float) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self._buffer_snapshot is not None:
            with torch.no_grad():
                for saved, live in zip(
                    self._buffer_snapshot, self.raw_model.buffers(), strict=True
                ):
                    live.copy_(saved)
        self.consecutive_nonfinite += 1
        self.counters["nonfinite_steps"] += 1
        self.epoch_counters["nonfinite_steps"] += 1
        limit = self.cfg.schedule.max_nonfinite_steps
        where = f"epoch {self.epoch + 1} batch {self.batch_in_epoch + 1} (step {self.step})"
        if self.dist.is_main:
            log.warning(
                "non-finite loss %s at %s: step skipped (%d in a row; the run stops at %d)",
                loss, where, self.consecutive_nonfinite, limit,
            )  # fmt: skip
        if self.consecutive_nonfinite >= limit:
            latest = self.output_dir / "checkpoints" / LATEST
            raise NonFiniteLossError(
                f"{self.consecutive_nonfinite} non-finite losses in a row (the last {loss} at "
                f"{where}), schedule.max_nonfinite_steps={limit}: stopping. The last good "
                f"checkpoint is {latest if latest.is_file() else 'none (none was written yet)'}; "
                "lower schedule.lr, set schedule.grad_clip, or check the data, then resume=auto."
            )

    def _batches(self) -> Iterator[dict[str, Any]]:
        """The loader's batches; a loader killed by the signal that stops us ends the epoch early."""
        iterator = iter(self.loader)
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                return
            except RuntimeError as err:
                # A scheduler's SIGTERM to the process group also kills the workers.
                if self._signal is None:
                    raise
                log.warning("data loading stopped after the signal (%s)", err)
                self.stop_signal = self._signal
                return
            yield batch

    def train_epoch(self) -> float:
        """Train the rest of the current epoch (all of it unless resumed mid-epoch)."""
        self.sampler.set_epoch(self.epoch, start_batch=self.batch_in_epoch)
        bar = Progress(
            len(self.loader), f"epoch {self.epoch + 1}/{self.cfg.schedule.epochs}",
            self.cfg.log_interval, enabled=self.dist.is_main,
        )  # fmt: skip
        start, steps = time.perf_counter(), 0
        first = self.epoch == 0 and self.batch_in_epoch == 0
        for batch in self._batches():
            if first and self.writer is not None:
                self._log_targets(batch)
            first = False
            loss = self.train_step(batch)
            self.batch_in_epoch += 1
            steps += 1
            if math.isfinite(loss):
                self.epoch_losses.append(loss)
            global_images = len(batch["index"]) * self.dist.world_size
            bar.update(global_images, f"loss {loss:.3e}")
            if self.stop_signal is not None:
                break
        bar.close()
        elapsed = time.perf_counter() - start
        rate = steps * self.sampler.global_batch / max(elapsed, 1e-9)
        mean = float(np.mean(self.epoch_losses)) if self.epoch_losses else float("nan")
        if self.writer is not None and self.stop_signal is None:
            self.writer.add_scalar("train/images_per_s", rate, self.step)
            self.writer.add_scalar("train/epoch_loss", mean, self.epoch + 1)
        return mean

    def evaluate(self) -> tuple[Predictions | None, dict[str, float] | None]:
        if self.val_set is None:
            return None, None
        c = self.cfg.eval
        preds = predict(
            self.raw_model,
            self.val_set,
            self.codec,
            self.device,
            batch_size=c.batch_size,
            workers=self.cfg.workers,
            flip_test=c.flip_test,
            precision=self.precision,
            channels_last=self.cfg.channels_last,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )
        stats = None
        if self.dist.is_main:
            _, stats = evaluate_predictions(
                preds, self.val_set, c.nms, c.nms_threshold, c.rescore_threshold
            )
        return preds, stats

    def fit(self) -> dict[str, Any]:
        """Train to ``schedule.epochs``; returns the history, best AP, last stats and fault counts.

        SIGTERM and SIGINT (main thread only; the previous handlers are put
        back afterwards) stop after the current step with a resumable
        checkpoint and raise :class:`TrainingInterrupted`. Too many unreadable
        samples raise :class:`DataError`, too many non-finite losses in a row
        :class:`NonFiniteLossError`; both leave the checkpoints as they were.
        """
        with self._signals_stop_training():
            return self._fit()

    @contextmanager
    def _signals_stop_training(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be installed from the main thread
            return
        watched = (signal.SIGTERM, signal.SIGINT)
        previous = {s: signal.getsignal(s) for s in watched}

        def request_stop(signum: int, frame: Any) -> None:
            if self._signal is not None:
                # A second signal: stop now, without a new checkpoint (the last one is whole).
                for s, handler in previous.items():
                    signal.signal(s, handler)
                raise KeyboardInterrupt(f"second {signal.Signals(signum).name}")
            self._signal = signum

        for s in watched:
            signal.signal(s, request_stop)
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _stop_for_signal(self, write: bool) -> None:
        signum = self.stop_signal or self._signal or signal.SIGTERM
        path = self.save(LATEST) if write else self.output_dir / "checkpoints" / LATEST
        barrier()
        if self.dist.is_main:
            log.warning(
                "%s received: stopped at epoch %d/%d, batch %d/%d (step %d) and wrote %s. "
                "Continue with: tools/train.py <same overrides> output_dir=%s resume=auto",
                signal.Signals(signum).name, self.epoch + 1, self.cfg.schedule.epochs,
                self.batch_in_epoch, self.sampler.num_batches(), self.step, path, self.output_dir,
            )  # fmt: skip
        raise TrainingInterrupted(signum, path, self.epoch, self.batch_in_epoch)

    def _fit(self) -> dict[str, Any]:
        cfg = self.cfg
        epochs = cfg.schedule.epochs
        stats: dict[str, float] | None = None
        preds = None
        t0 = time.perf_counter()
        while self.epoch < epochs:
            loss = self.train_epoch()
            if self.stop_signal is not None:
                self._stop_for_signal(write=True)
            self.epoch += 1
            record: dict[str, Any] = {"epoch": self.epoch, "loss": loss, **self.epoch_counters}
            self.batch_in_epoch, self.epoch_losses = 0, []
            last = self.epoch == epochs
            if self.val_set is not None and (
                last or (cfg.eval.interval and self.epoch % cfg.eval.interval == 0)
            ):
                preds, stats = self.evaluate()
                if stats is not None:
                    record.update(stats)
                    self._log_stats(stats)
            self.history.append(record)
            if stats is not None and "AP" in record and record["AP"] > self.best_ap:
                self.best_ap = record["AP"]
                self.save("best.pth")
            if self.dist.is_main:
                faults = ", ".join(
                    f"{v} {k.replace('_', ' ')}" for k, v in self.epoch_counters.items() if v
                )
                log.info(
                    "epoch %d/%d loss %.4e%s%s", self.epoch, epochs, loss,
                    f" AP {stats['AP']:.4f}" if stats and "AP" in record else "",
                    f" ({faults})" if faults else "",
                )  # fmt: skip
            if self.writer is not None:
                for key, value in self.epoch_counters.items():
                    self.writer.add_scalar(f"train/{key}", value, self.epoch)
            self.epoch_counters = dict.fromkeys(self.epoch_counters, 0)
            self.save(LATEST)
            barrier()
            # A signal during evaluation or saving: the epoch's checkpoint is already written.
            if self.epoch < epochs and self._agree([self._signal is not None])[0]:
                self.stop_signal = self._signal or signal.SIGTERM
                self._stop_for_signal(write=False)
        if preds is not None and self.dist.is_main:
            self._write_prediction_images(preds)
        summary = self._fault_summary()
        if self.dist.is_main and summary:
            log.warning("run finished with %s", summary)
        if self.writer is not None:
            self.writer.flush()
        return {
            "history": self.history,
            "best_ap": self.best_ap,
            "stats": stats,
            "seconds": time.perf_counter() - t0,
            "skipped_samples": self.counters["skipped_samples"],
            "nonfinite_steps": self.counters["nonfinite_steps"],
            "bad_samples": dict(self.bad_samples),
        }

    def _fault_summary(self) -> str:
        parts = []
        if self.counters["skipped_samples"]:
            files = len(set(self.bad_samples.values()))
            parts.append(
                f"{self.counters['skipped_samples']} unreadable samples skipped "
                f"({len(self.bad_samples)} distinct samples, {files} files)"
            )
        if self.counters["nonfinite_steps"]:
            parts.append(f"{self.counters['nonfinite_steps']} non-finite loss steps skipped")
        return "; ".join(parts)

    # ------------------------------------------------------------------ logging
    def _log_stats(self, stats: dict[str, float]) -> None:
        if self.writer is None:
            return
        for key, value in stats.items():
            self.writer.add_scalar(f"val/{key}", value, self.epoch)

    def _log_targets(self, batch: dict[str, Any]) -> None:
        n = min(4, len(batch["index"]))
        targets, _ = self.codec.encode(batch["keypoints"][:n], batch["visible"][:n])
        c = self.codec.channels_per_keypoint
        tiles = []
        for i in range(n):
            image = batch["image"][i].numpy()
            if self.train_set.color == "bgr":
                image = image[..., ::-1]
            tiles.append(heatmap_image(targets[i, ::c].numpy(), np.ascontiguousarray(image)))
        self.writer.add_image("train/targets", image_grid(tiles), self.step, dataformats="HWC")

    def _write_prediction_images(self, preds: Predictions) -> None:
        """Full images with the predicted poses, to TensorBoard and ``predictions.png``."""
        ds = self.val_set
        inst = ds.instances
        count = self.cfg.eval.images
        if count <= 0:
            return
        image_ids = list(dict.fromkeys(preds.image_ids.tolist()))[:count]
        id_to_index = {int(i): k for k, i in enumerate(inst.image_ids)}
        tiles = []
        for image_id in image_ids:
            rows = preds.image_ids == image_id
            keep = preds.box_scores[rows] >= 0.3
            path = inst.image_files[id_to_index[image_id]]
            image = read_image(path)
            drawn = draw_poses(
                image, preds.keypoints[rows][keep], preds.scores[rows][keep], self.spec, 0.3
            )
            tiles.append(cv2.resize(drawn, (320, 256)))
        grid = image_grid(tiles, columns=4)
        cv2.imwrite(str(self.output_dir / "predictions.png"), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
        if self.writer is not None:
            self.writer.add_image("val/predictions", grid, self.step, dataformats="HWC")
