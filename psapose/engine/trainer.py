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
import time
from collections.abc import Iterator
from contextlib import nullcontext
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

from psapose.attention_maps import log_attention_maps
from psapose.checkpoint import CheckpointError, UnsafeCheckpointError, load_pretrained_backbone
from psapose.config import build_model, input_size, selection_metric, validate_config
from psapose.data.builder import build_dataset, build_keypoint_spec, ensure_generated
from psapose.data.coco import AnnotationError, AnnotationFileNotFound, TopDownDataset
from psapose.data.normalize import normalize_images
from psapose.data.transforms import read_image
from psapose.engine.checkpoints import (
    LATEST,
    PREVIOUS,
    atomic_save,
    find_resume_checkpoint,
    get_rng_state,
    read_training_checkpoint,
    resume_candidates,
    set_aside,
    set_rng_state,
)
from psapose.engine.distributed import all_gather_objects, barrier, setup_distributed
from psapose.engine.faults import (
    BadSamples,
    DataError,
    NonFiniteLossError,
    StopSignals,
    TrainingError,
    TrainingInterrupted,
    batches_until_stopped,
    init_worker,
)
from psapose.engine.inference import (
    EvaluationStopped,
    Predictions,
    autocast,
    evaluate_predictions,
    pixel_stats,
    predict,
)
from psapose.engine.loss import build_loss
from psapose.engine.progress import Progress
from psapose.engine.sampler import EpochSampler
from psapose.evaluation.pixel_metrics import PixelMetricsError, lower_is_better
from psapose.runtime import check_runtime
from psapose.threads import ThreadPolicy, resolve_workers
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
    "read_training_checkpoint",
    "resume_candidates",
    "seed_everything",
]

log = logging.getLogger("psapose")


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


def fused_optimizer_supported(device: torch.device) -> bool:
    """Whether torch's fused Adam/AdamW/SGD step runs on ``device`` (CPU and CUDA, torch 2.4+)."""
    if device.type not in ("cpu", "cuda"):
        return False
    try:
        torch.optim.Adam([torch.zeros(1, device=device, requires_grad=True)], fused=True)
    except (RuntimeError, TypeError, ValueError):
        return False
    return True


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    else:
        # Crops have one fixed size: cuDNN's per-shape algorithm search is paid once.
        torch.backends.cudnn.benchmark = True


class Trainer:
    """Builds everything from a composed config and runs :meth:`fit`."""

    def __init__(
        self, cfg: DictConfig, output_dir: str | Path, micro_batches: int | None = None
    ) -> None:
        self.cfg, self.spec, self.codec = prepare_config(cfg)
        check_runtime(self.cfg)  # device, precision, sync_bn, compile: exit 2 with what to use
        self.output_dir = Path(output_dir)
        self.dist, self.device = setup_distributed(cfg.device)
        # Each batch as N sub-batches, gradients accumulated: BatchNorm sees each sub-batch
        # alone, as N DDP ranks would (docs/models.md).
        self.micro_batches = int(micro_batches or cfg.get("micro_batches", 1) or 1)
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
        # Every input is read and checked here, before any training: a broken val file
        # must not surface after the first epoch.
        # Intra-op threads from the cores this process may use and the load on them,
        # re-chosen as it changes; DataLoader workers from the same cores.
        self.threads = ThreadPolicy(cfg.threads, fixed=bool(cfg.deterministic))
        self.workers = resolve_workers(cfg.workers)
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
        batch_size = self._fitting_batch_size()
        self.sampler = EpochSampler(
            len(self.train_set),
            batch_size,
            shuffle=True,
            seed=cfg.seed,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            drop_last=True,
        )
        self.loader = DataLoader(
            self.train_set,
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=self.workers > 0,
            drop_last=True,
            worker_init_fn=init_worker if self.workers > 0 else None,
        )
        self.epoch, self.step, self.best_ap = 0, 0, -1.0
        # The evaluation number that picks best.pth (AP, or a pixel error for own data).
        self.best_metric = selection_metric(cfg)
        self.lower_is_better = lower_is_better(self.best_metric)
        self.best_score = math.inf if self.lower_is_better else -math.inf
        self.history: list[dict[str, Any]] = []
        # Position inside the current epoch, so that a checkpoint written mid-epoch resumes exactly.
        self.batch_in_epoch = 0
        self.epoch_losses: list[float] = []
        # An epoch whose checkpoint was written but whose evaluation did not finish.
        self.pending_eval = False
        self.epoch_rate = float("nan")  # training images/s of the last epoch
        self.counters = {"skipped_samples": 0, "nonfinite_steps": 0}  # whole run
        self.epoch_counters = {"skipped_samples": 0, "nonfinite_steps": 0}
        self.bad = BadSamples(len(self.train_set), cfg.data.max_bad_fraction)
        self.consecutive_nonfinite = 0
        self.signals = StopSignals()  # this process's signal; installed by fit()
        self.stop_signal: int | None = None  # agreed by all ranks: stop after this step
        self._buffer_snapshot: list[torch.Tensor] | None = None
        self.writer = None
        if self.dist.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.output_dir / "tb"))
        self._maybe_resume()
        self.threads.start("training" if self.dist.is_main else f"rank {self.dist.rank}")
        if self.dist.is_main:
            log.info("%s", self.summary())

    def summary(self) -> str:
        """The start-up line: data, schedule, device, threads, precision, selection metric."""
        val = self.val_set
        val_text = (
            f"{len(val)} {'ground-truth' if (val.instances.ann_ids >= 0).all() else 'detector'} "
            f"boxes in {val.instances.num_images} images"
            if val is not None
            else "none"
        )
        return (
            f"train: {len(self.train_set)} instances in {self.train_set.instances.num_images} "
            f"images ({self.train_set.instances.source}); {self.cfg.eval.split}: {val_text}; "
            f"{self.sampler.num_batches()} steps per epoch at batch {self.sampler.batch_size}"
            f"{f' x {self.dist.world_size} processes' if self.dist.world_size > 1 else ''}, "
            f"{self.cfg.schedule.epochs} epochs; device {self.device}, "
            f"{self.threads.threads} threads, {self.workers} workers, "
            f"precision {self.precision}; best.pth by {self.best_metric}"
        )

    def _fitting_batch_size(self) -> int:
        """``schedule.batch_size``, clamped (with a warning) to what the training set fills."""
        wanted = int(self.cfg.schedule.batch_size)
        per_rank = len(self.train_set) // self.dist.world_size
        if per_rank < 1:
            raise AnnotationError(
                f"{self.train_set.instances.source}: {len(self.train_set)} training samples for "
                f"{self.dist.world_size} processes; every process needs at least one"
            )
        if wanted > per_rank:
            log.warning(
                "schedule.batch_size=%d is larger than the training set allows (%d samples, "
                "%d per process): using batch %d, one step per epoch",
                wanted, len(self.train_set), per_rank, per_rank,
            )  # fmt: skip
            return per_rank
        return wanted

    @property
    def bad_samples(self) -> dict[int, str]:
        """Unreadable training samples seen so far: dataset index -> reason (path named)."""
        return self.bad.samples

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
        elif self.cfg.sync_bn:
            log.warning("sync_bn=true has no effect in one process (BatchNorm sees the batch)")
        model = model.to(self.device)
        if self.cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.raw_model = model
        self.ddp: DistributedDataParallel | None = None
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # Gradients written straight into DDP's buckets: no copy, and channels-last
            # weights no longer warn that their grad strides differ from the bucket's.
            model = self.ddp = DistributedDataParallel(
                model, device_ids=ids, gradient_as_bucket_view=True
            )
        if self.cfg.compile:
            model = torch.compile(model)
        return model

    def _build_optimizer(self) -> torch.optim.Optimizer:
        s = self.cfg.schedule
        params = list(self.raw_model.parameters())
        # One fused kernel per step instead of a handful of ops per parameter: the Adam step
        # of the quick-start model fell from 166 to 53 ms on the CPU.
        fused = {"fused": True} if fused_optimizer_supported(self.device) else {}
        if s.optimizer == "sgd":
            opt = torch.optim.SGD(
                params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay, **fused
            )
        elif s.optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay, **fused)
        else:
            opt = torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay, **fused)
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
            "best_metric": self.best_metric,
            "best_score": self.best_score,
            "history": self.history,
            "batch_in_epoch": self.batch_in_epoch,
            "epoch_losses": list(self.epoch_losses),
            "pending_eval": self.pending_eval,
            "counters": dict(self.counters),
            "epoch_counters": dict(self.epoch_counters),
            "bad_samples": dict(self.bad.samples),
            "consecutive_nonfinite": self.consecutive_nonfinite,
            "rng": get_rng_state(),
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
        problems: list[str] = []
        for path in candidates:
            try:
                state = read_training_checkpoint(path)
                self._load_training_state(state, path)
            except UnsafeCheckpointError:
                raise  # never skipped silently: someone put code where weights belong
            except CheckpointError as err:
                log.warning("resume=auto: cannot use %s: %s", path, err)
                problems.append(str(err))
                continue
            if problems and self.dist.is_main:
                # Renamed, not deleted (kept for inspection), so the next save cannot
                # rotate a corrupt latest.pth into previous.pth over the good one.
                for bad in candidates[: len(problems)]:
                    log.warning("resume=auto: moved the unusable %s to %s", bad, set_aside(bad))
            return
        raise CheckpointError(
            f"resume=auto: no usable checkpoint in {self.output_dir / 'checkpoints'} "
            f"({'; '.join(problems)}). Move them away to start from scratch, or pass resume=PATH."
        )

    def _load_training_state(self, state: dict[str, Any], path: Path) -> None:
        """Apply a checkpoint read (and checked) by :func:`read_training_checkpoint`."""
        batch_in_epoch = int(state.get("batch_in_epoch", 0))
        if batch_in_epoch > self.sampler.num_batches():
            raise CheckpointError(
                f"{path}: stopped at batch {batch_in_epoch} of an epoch that now has "
                f"{self.sampler.num_batches()}; resume with the same data and batch size"
            )
        try:
            self.raw_model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
            set_rng_state(state["rng"])
        except Exception as err:  # shapes, optimizer groups, RNG layout: all "does not fit"
            raise CheckpointError(f"{path}: does not fit this model and config: {err}") from err
        self.epoch, self.step = state["epoch"], state["step"]
        self.best_ap = float(state.get("best_ap", -1.0))
        if state.get("best_metric", "AP") == self.best_metric:
            self.best_score = float(state.get("best_score", self.best_ap))
        self.history = list(state.get("history", []))
        self.batch_in_epoch = batch_in_epoch
        self.epoch_losses = list(state.get("epoch_losses", []))
        self.pending_eval = bool(state.get("pending_eval", False))
        self.counters.update(state.get("counters", {}))
        self.epoch_counters.update(state.get("epoch_counters", {}))
        self.bad.samples = {int(k): v for k, v in state.get("bad_samples", {}).items()}
        self.consecutive_nonfinite = int(state.get("consecutive_nonfinite", 0))
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
        self.threads.step()
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
        for i, (img, tgt, wgt) in enumerate(chunks):
            # Under DDP gradients are reduced once, after the last sub-batch (nanoGPT's way).
            last = i == self.micro_batches - 1
            sync = self.ddp.no_sync() if self.ddp is not None and not last else nullcontext()
            with sync:
                with autocast(self.device, self.precision):
                    heatmaps = self.model(img)
                loss = self.loss_fn(heatmaps, tgt, wgt) / self.micro_batches
                self.scaler.scale(loss).backward()
            total += loss.item()
        nonfinite, signalled, invalid_rows, new_count = self._agree(
            [not math.isfinite(total), self.signals.requested, invalid_rows, len(new_bad)]
        )
        if invalid_rows:
            self.counters["skipped_samples"] += invalid_rows
            self.epoch_counters["skipped_samples"] += invalid_rows
        if new_count:
            parts = all_gather_objects(new_bad) if self.dist.enabled else [new_bad]
            self.bad.add(parts, announce=self.dist.is_main)
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
            self.stop_signal = self.signals.signum or signal.SIGTERM  # another rank's signal
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
        return len(rows), self.bad.new_in(indices, [batch["error"][r] for r in rows])

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
        """The loader's batches; a loader whose workers died after a stop signal ends the epoch."""

        def stopped(err: Exception) -> None:
            log.warning("data loading stopped after the signal (%s)", err)
            self.stop_signal = self.signals.signum

        return batches_until_stopped(self.loader, lambda: self.signals.requested, stopped)

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
        # This session's rate (a resumed epoch counts only the batches trained now).
        self.epoch_rate = rate
        mean = float(np.mean(self.epoch_losses)) if self.epoch_losses else float("nan")
        if self.writer is not None and self.stop_signal is None:
            self.writer.add_scalar("train/images_per_s", rate, self.step)
            self.writer.add_scalar("train/epoch_loss", mean, self.epoch + 1)
        return mean

    def evaluate(self) -> tuple[Predictions | None, dict[str, float] | None]:
        """Predictions on the evaluation split and, on the main rank, its AP table.

        Raises :class:`EvaluationStopped` when a stop signal arrives meanwhile (agreed
        by all ranks batch by batch).
        """
        if self.val_set is None:
            return None, None
        c = self.cfg.eval
        preds = predict(
            self.raw_model,
            self.val_set,
            self.codec,
            self.device,
            batch_size=c.batch_size,
            workers=self.workers,
            flip_test=c.flip_test,
            precision=self.precision,
            channels_last=self.cfg.channels_last,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            should_stop=lambda: bool(self._agree([self.signals.requested])[0]),
            threads=self.threads,
        )
        stats = None
        if self.dist.is_main:
            _, stats = evaluate_predictions(
                preds, self.val_set, c.nms, c.nms_threshold, c.rescore_threshold, self.device
            )
            try:
                pixel = pixel_stats(preds, self.val_set)
            except PixelMetricsError as err:  # NaN keypoints from a diverging model
                log.warning("no pixel errors this epoch: %s", err)
                pixel = None
            if pixel is not None:
                stats = {**(stats or {}), **pixel.stats}
        return preds, stats

    def fit(self) -> dict[str, Any]:
        """Train to ``schedule.epochs``; returns the history, best AP, last stats and fault counts.

        SIGTERM and SIGINT (main thread only; the previous handlers are put
        back afterwards) stop after the current step with a resumable
        checkpoint and raise :class:`TrainingInterrupted` (see
        :mod:`psapose.engine.faults`). Too many unreadable samples raise
        :class:`DataError`, too many non-finite losses in a row
        :class:`NonFiniteLossError`; both leave the checkpoints as they were.
        """
        self.signals = StopSignals()
        try:
            with self.signals:
                return self._fit()
        finally:
            self.threads.restore()  # the process's own thread count, as before fit

    def _stop_for_signal(self, write: bool) -> None:
        signum = self.stop_signal or self.signals.signum or signal.SIGTERM
        path = self.save(LATEST) if write else self.output_dir / "checkpoints" / LATEST
        barrier()
        if self.dist.is_main:
            where = (
                f"during the evaluation of epoch {self.epoch}/{self.cfg.schedule.epochs} (its "
                "training is saved; a resumed run evaluates it first)"
                if self.pending_eval
                else f"at epoch {self.epoch + 1}/{self.cfg.schedule.epochs}, batch "
                f"{self.batch_in_epoch}/{self.sampler.num_batches()}"
            )
            log.warning(
                "%s received: stopped %s (step %d); checkpoint %s. "
                "Continue with: tools/train.py <same overrides> output_dir=%s resume=auto",
                signal.Signals(signum).name, where, self.step, path, self.output_dir,
            )  # fmt: skip
        raise TrainingInterrupted(signum, path, self.epoch, self.batch_in_epoch)

    def _evaluation_due(self) -> bool:
        interval = self.cfg.eval.interval
        last = self.epoch == self.cfg.schedule.epochs
        return self.val_set is not None and (last or bool(interval and self.epoch % interval == 0))

    def _evaluate_epoch(self, record: dict[str, Any]) -> tuple[Predictions | None, dict | None]:
        """Evaluate the epoch just checkpointed; record its stats, then checkpoint them.

        The epoch's checkpoint is already on disk (``pending_eval`` set): a failed or
        interrupted evaluation loses no training, and a resumed run evaluates it first.
        """
        try:
            preds, stats = self.evaluate()
        except EvaluationStopped:
            self.stop_signal = self.signals.signum or signal.SIGTERM
            self._stop_for_signal(write=False)
        self.pending_eval = False
        if stats is not None:
            record.update(stats)
            self._log_stats(stats)
            if self.writer is not None:  # what each PSA block attends to, 2 fixed val crops
                log_attention_maps(self.writer, self.raw_model, self.val_set, self.epoch)
            self.best_ap = max(self.best_ap, stats.get("AP", -1.0))
            score = stats.get(self.best_metric)
            if score is not None and math.isfinite(score) and self._better(score):
                self.best_score = score
                self.save("best.pth")
        self.save(LATEST)
        return preds, stats

    def _better(self, score: float) -> bool:
        return score < self.best_score if self.lower_is_better else score > self.best_score

    def _fit(self) -> dict[str, Any]:
        cfg = self.cfg
        epochs = cfg.schedule.epochs
        stats: dict[str, float] | None = None
        preds = None
        t0 = time.perf_counter()
        if self.pending_eval and self.history:
            log.info("evaluating epoch %d, whose evaluation did not finish before", self.epoch)
            preds, stats = self._evaluate_epoch(self.history[-1])
        while self.epoch < epochs:
            loss = self.train_epoch()
            if self.stop_signal is not None:
                self._stop_for_signal(write=True)
            self.epoch += 1
            record: dict[str, Any] = {
                "epoch": self.epoch,
                "loss": loss,
                "images_per_s": self.epoch_rate,
                "threads": self.threads.threads,
                **self.epoch_counters,
            }
            self.history.append(record)
            self.batch_in_epoch, self.epoch_losses = 0, []
            if self.writer is not None:
                for key, value in self.epoch_counters.items():
                    self.writer.add_scalar(f"train/{key}", value, self.epoch)
            self.epoch_counters = dict.fromkeys(self.epoch_counters, 0)
            stats = None
            # The epoch's training is saved before it is evaluated.
            self.pending_eval = self._evaluation_due()
            self.save(LATEST)
            barrier()
            if self.pending_eval:
                preds, stats = self._evaluate_epoch(record)
            if self.dist.is_main:
                faults = ", ".join(
                    f"{record[k]} {k.replace('_', ' ')}" for k in self.counters if record.get(k)
                )
                shown = [k for k in dict.fromkeys(("AP", self.best_metric)) if stats and k in stats]
                log.info(
                    "epoch %d/%d loss %.4e%s%s", self.epoch, epochs, loss,
                    "".join(f" {k} {stats[k]:.4f}" for k in shown),
                    f" ({faults})" if faults else "",
                )  # fmt: skip
            # A signal during evaluation or saving: the epoch's checkpoint is already written.
            if self.epoch < epochs and self._agree([self.signals.requested])[0]:
                self.stop_signal = self.signals.signum or signal.SIGTERM
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
            "best_metric": self.best_metric,
            "best_score": self.best_score,
            "stats": stats,
            "seconds": time.perf_counter() - t0,
            "skipped_samples": self.counters["skipped_samples"],
            "nonfinite_steps": self.counters["nonfinite_steps"],
            "bad_samples": dict(self.bad.samples),
        }

    def _fault_summary(self) -> str:
        parts = []
        if self.counters["skipped_samples"]:
            parts.append(self.bad.summary(self.counters["skipped_samples"]))
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
            try:
                image = read_image(path)
            except OSError as err:  # unreadable now (or a full disk): the picture is optional
                log.warning("predictions.png: leaving out %s (%s)", path, err)
                continue
            drawn = draw_poses(
                image, preds.keypoints[rows][keep], preds.scores[rows][keep], self.spec, 0.3
            )
            tiles.append(cv2.resize(drawn, (320, 256)))
        if not tiles:
            return
        grid = image_grid(tiles, columns=4)
        path = self.output_dir / "predictions.png"
        if not cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
            log.warning("could not write %s", path)
        if self.writer is not None:
            self.writer.add_image("val/predictions", grid, self.step, dataformats="HWC")
