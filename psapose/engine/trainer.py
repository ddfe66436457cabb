"""The training loop: building (``Trainer.__init__``), :meth:`Trainer.fit`,
:meth:`Trainer.train_epoch` and :meth:`Trainer.train_step`.

A run directory holds ``config.yaml`` (resolved), ``checkpoints/{latest,previous,best}.pth``,
TensorBoard logs in ``tb/`` and ``predictions.png``; ``resume=auto`` continues exactly, from
the middle of an epoch too. Faults a long run meets (docs/reliability.md): unreadable images
are skipped and counted, a non-finite loss skips its step, a signal writes a resumable
checkpoint and stops, a corrupt ``latest.pth`` falls back to ``previous.pth``.

Beside the loop: the run setup from the config (:mod:`psapose.runtime`), the parts built
from it and the start-up summary (:mod:`psapose.engine.components`), checkpoint files and
the training state (:mod:`psapose.engine.checkpoints`), fault accounting and stop signals
(:mod:`psapose.engine.faults`), TensorBoard and image logs (:mod:`psapose.engine.hooks`),
the progress and epoch lines (:mod:`psapose.engine.progress`).
"""

from __future__ import annotations

import logging
import math
import signal
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from psapose.checkpoint import load_pretrained_backbone
from psapose.config import build_model, selection_metric
from psapose.data.builder import build_dataset, ensure_generated
from psapose.data.normalize import normalize_images
from psapose.data.types import Batch
from psapose.engine.checkpoints import LATEST, resume, save_checkpoint, training_state
from psapose.engine.components import (
    build_optimizer,
    eval_dataset,
    fitting_batch_size,
    lr_factor,
    run_summary,
    seed_everything,
    train_loader,
    wrap_model,
)
from psapose.engine.distributed import (
    all_gather_objects,
    barrier,
    setup_distributed,
    sum_over_ranks,
)
from psapose.engine.faults import FaultCounts, StopSignals, batches_until_stopped, stop_for_signal
from psapose.engine.hooks import Hook, default_hooks
from psapose.engine.inference import (
    EvaluationStopped,
    Predictions,
    autocast,
    evaluate_predictions,
    pixel_stats,
    predict,
)
from psapose.engine.loss import build_loss
from psapose.engine.progress import Progress, epoch_line
from psapose.evaluation.pixel_metrics import lower_is_better
from psapose.runtime import check_runtime, run_setup
from psapose.threads import ThreadPolicy, resolve_workers

__all__ = ["Trainer"]

log = logging.getLogger("psapose")


class Trainer:
    """Builds everything from a composed config and runs :meth:`fit`."""

    def __init__(
        self, cfg: DictConfig, output_dir: str | Path, micro_batches: int | None = None
    ) -> None:
        self.setup = run_setup(cfg)
        self.cfg, self.spec, self.codec = self.setup.cfg, self.setup.spec, self.setup.codec
        check_runtime(self.cfg)  # device, precision, sync_bn, compile: exit 2 with what to use
        self.output_dir = Path(output_dir)
        self.dist, self.device = setup_distributed(cfg.device)
        # Each batch as N sub-batches, gradients accumulated: BatchNorm sees each sub-batch
        # alone, as N DDP ranks would (docs/models.md).
        self.micro_batches = int(micro_batches or cfg.get("micro_batches", 1) or 1)
        seed_everything(cfg.seed, cfg.deterministic)
        if self.dist.is_main and ensure_generated(cfg.data):
            log.info("generated the synthetic dataset in %s", cfg.data.root)
        barrier()
        self.input_size, self.precision = self.setup.input_size, self.setup.precision
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
        self.val_set = eval_dataset(cfg.data, cfg.eval.split, self.input_size, self.codec.use_udp)
        model = build_model(self.cfg)
        if self.cfg.pretrained:
            report = load_pretrained_backbone(model, self.cfg.pretrained)
            if self.dist.is_main:
                log.info("pretrained backbone: %s", report.summary())
        self.model, self.raw_model, self.ddp = wrap_model(model, self.cfg, self.dist, self.device)
        self.loss_fn = build_loss(
            self.codec.channels_per_keypoint, torch.from_numpy(self.spec.joint_weights_array)
        ).to(self.device)
        self.optimizer = build_optimizer(self.raw_model, cfg.schedule, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        wanted, world = int(cfg.schedule.batch_size), self.dist.world_size
        batch_size = fitting_batch_size(self.train_set, wanted, world)
        self.sampler, self.loader = train_loader(
            self.train_set, batch_size, cfg.seed, self.dist, self.workers, self.device
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
        self.faults = FaultCounts(
            len(self.train_set), cfg.data.max_bad_fraction, cfg.schedule.max_nonfinite_steps
        )
        self.signals = StopSignals()  # this process's signal; installed by fit()
        self.stop_signal: int | None = None  # agreed by all ranks: stop after this step
        self.hooks: list[Hook] = []  # TensorBoard and images, main rank only
        if self.dist.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
            self.hooks = default_hooks(self.output_dir)
        resume(self)
        self.threads.start("training" if self.dist.is_main else f"rank {self.dist.rank}")
        if self.dist.is_main:
            log.info("%s", self.summary())

    def summary(self) -> str:
        """The start-up line: data, schedule, device, threads, precision, selection metric."""
        return run_summary(self)

    @property
    def bad_samples(self) -> dict[int, str]:
        """Unreadable training samples seen so far: dataset index -> reason (path named)."""
        return self.faults.bad.samples

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint stores (:func:`psapose.engine.checkpoints.training_state`)."""
        return training_state(self)

    def save(self, name: str = LATEST) -> Path:
        """Write a checkpoint (main rank); ``latest.pth`` keeps the one before as ``previous.pth``."""
        return save_checkpoint(self, name)

    # ------------------------------------------------------------------ training
    def train_step(self, batch: Batch) -> float:
        """One optimiser step; returns the loss (NaN/inf when the step was skipped).

        Unreadable samples (``valid`` False) get zero loss weight and are
        counted; a non-finite loss skips the step. Both, and a pending signal,
        are agreed by all ranks in one all-reduce, so every rank takes the same
        decision at the same step.
        """
        self.model.train()
        self.threads.step()
        lr = self.cfg.schedule.lr * lr_factor(self.step, self.epoch, self.cfg.schedule)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        images = normalize_images(
            batch["image"], device=self.device, channels_last=self.cfg.channels_last
        )
        keypoints = batch["keypoints"].to(self.device, non_blocking=True)
        visible = batch["visible"].to(self.device, non_blocking=True)
        # Targets are made per batch on the device: far cheaper than per sample in workers.
        targets, weights = self.codec.encode(keypoints, visible)
        invalid_rows, new_bad = self.faults.unreadable_in(batch)
        if invalid_rows:
            valid = batch["valid"].to(self.device, weights.dtype)
            weights = weights * valid.view(-1, *([1] * (weights.dim() - 1)))
        self.faults.snapshot_buffers(self.raw_model)
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
        nonfinite, signalled, invalid_rows, new_count = sum_over_ranks(
            [not math.isfinite(total), self.signals.requested, invalid_rows, len(new_bad)],
            self.device,
        )
        if invalid_rows:
            self.faults.count_skipped(invalid_rows)
        if new_count:
            parts = all_gather_objects(new_bad) if self.dist.enabled else [new_bad]
            self.faults.bad.add(parts, announce=self.dist.is_main)
        if nonfinite:
            where = f"epoch {self.epoch + 1} batch {self.batch_in_epoch + 1} (step {self.step})"
            latest = self.output_dir / "checkpoints" / LATEST
            self.faults.skip_nonfinite_step(
                total, self.raw_model, self.optimizer, where, latest, announce=self.dist.is_main
            )
        else:
            self.faults.consecutive_nonfinite = 0
            if self.cfg.schedule.grad_clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.raw_model.parameters(), self.cfg.schedule.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        # Counts batches consumed, skipped ones too: the schedule follows the data position.
        self.step += 1
        if signalled:
            self.stop_signal = self.signals.signum or signal.SIGTERM  # another rank's signal
        for hook in self.hooks:
            hook.on_step(self, total, lr)
        return total

    def train_epoch(self) -> float:
        """Train the rest of the current epoch (all of it unless resumed mid-epoch)."""
        self.sampler.set_epoch(self.epoch, start_batch=self.batch_in_epoch)
        bar = Progress(
            len(self.loader), f"epoch {self.epoch + 1}/{self.cfg.schedule.epochs}",
            self.cfg.log_interval, enabled=self.dist.is_main,
        )  # fmt: skip
        start, steps = time.perf_counter(), 0
        first = self.epoch == 0 and self.batch_in_epoch == 0

        def loader_stopped(err: Exception) -> None:
            # The loader's workers died after a stop signal: the epoch ends there.
            log.warning("data loading stopped after the signal (%s)", err)
            self.stop_signal = self.signals.signum

        for batch in batches_until_stopped(
            self.loader, lambda: self.signals.requested, loader_stopped
        ):
            for hook in self.hooks if first else ():
                hook.on_first_batch(self, batch)
            first = False
            loss = self.train_step(batch)
            self.batch_in_epoch += 1
            steps += 1
            if math.isfinite(loss):
                self.epoch_losses.append(loss)
            bar.update(len(batch["index"]) * self.dist.world_size, f"loss {loss:.3e}")
            if self.stop_signal is not None:
                break
        bar.close()
        elapsed = time.perf_counter() - start
        # This session's rate (a resumed epoch counts only the batches trained now).
        self.epoch_rate = steps * self.sampler.global_batch / max(elapsed, 1e-9)
        mean = float(np.mean(self.epoch_losses)) if self.epoch_losses else float("nan")
        for hook in self.hooks if self.stop_signal is None else ():
            hook.on_epoch_trained(self, self.epoch_rate, mean)
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
            self.raw_model, self.val_set, self.codec, self.device,
            batch_size=c.batch_size, workers=self.workers, flip_test=c.flip_test,
            precision=self.precision, channels_last=self.cfg.channels_last,
            rank=self.dist.rank, world_size=self.dist.world_size,
            should_stop=lambda: bool(sum_over_ranks([self.signals.requested], self.device)[0]),
            threads=self.threads,
        )  # fmt: skip
        stats = None
        if self.dist.is_main:
            _, stats = evaluate_predictions(
                preds, self.val_set, c.nms, c.nms_threshold, c.rescore_threshold, self.device
            )
            pixel = pixel_stats(preds, self.val_set, warn=True)
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

    def _fit(self) -> dict[str, Any]:
        epochs = self.cfg.schedule.epochs
        stats: dict[str, float] | None = None
        preds = None
        t0 = time.perf_counter()
        if self.pending_eval and self.history:
            log.info("evaluating epoch %d, whose evaluation did not finish before", self.epoch)
            preds, stats = self._evaluate_epoch(self.history[-1])
        while self.epoch < epochs:
            loss = self.train_epoch()
            if self.stop_signal is not None:
                stop_for_signal(self, write=True)
            self.epoch += 1
            counts = self.faults.end_epoch()
            record: dict[str, Any] = {
                "epoch": self.epoch, "loss": loss, "images_per_s": self.epoch_rate,
                "threads": self.threads.threads, **counts,
            }  # fmt: skip
            self.history.append(record)
            self.batch_in_epoch, self.epoch_losses = 0, []
            for hook in self.hooks:
                hook.on_epoch_end(self, counts)
            stats = None
            # The epoch's training is saved before it is evaluated.
            self.pending_eval = self._evaluation_due()
            self.save(LATEST)
            barrier()
            if self.pending_eval:
                preds, stats = self._evaluate_epoch(record)
            if self.dist.is_main:
                log.info("%s", epoch_line(record, stats, epochs, self.best_metric, self.faults))
            # A signal during evaluation or saving: the epoch's checkpoint is already written.
            if self.epoch < epochs and sum_over_ranks([self.signals.requested], self.device)[0]:
                self.stop_signal = self.signals.signum or signal.SIGTERM
                stop_for_signal(self, write=False)
        for hook in self.hooks:
            hook.on_fit_end(self, preds)
        summary = self.faults.summary()
        if self.dist.is_main and summary:
            log.warning("run finished with %s", summary)
        counters = self.faults.counters
        return {
            "history": self.history, "best_ap": self.best_ap, "best_metric": self.best_metric,
            "best_score": self.best_score, "stats": stats,
            "seconds": time.perf_counter() - t0,
            "skipped_samples": counters["skipped_samples"],
            "nonfinite_steps": counters["nonfinite_steps"],
            "bad_samples": dict(self.faults.bad.samples),
        }  # fmt: skip

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
            stop_for_signal(self, write=False)
        self.pending_eval = False
        if stats is not None:
            record.update(stats)
            for hook in self.hooks:
                hook.on_evaluate(self, stats)
            self.best_ap = max(self.best_ap, stats.get("AP", -1.0))
            score = stats.get(self.best_metric)
            if score is not None and math.isfinite(score) and self._better(score):
                self.best_score = score
                self.save("best.pth")
        self.save(LATEST)
        return preds, stats

    def _better(self, score: float) -> bool:
        return score < self.best_score if self.lower_is_better else score > self.best_score
