"""The training loop: data, model, loss, optimiser, AMP, DDP, evaluation, checkpoints, logs.

A run directory holds ``config.yaml`` (resolved), ``checkpoints/latest.pth``
(every epoch, written atomically), ``checkpoints/best.pth`` (best AP),
TensorBoard logs in ``tb/``, and ``predictions.png``. ``resume=auto`` (or a
path) continues exactly: model, optimiser, scheduler, grad scaler, epoch, RNG
states and best AP.
"""

from __future__ import annotations

import logging
import math
import os
import random
import sys
import time
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

from psapose.checkpoint import CheckpointError, load_pretrained_backbone
from psapose.config import build_model, input_size, validate_config
from psapose.data.builder import build_dataset, build_keypoint_spec, ensure_generated
from psapose.data.coco import TopDownDataset
from psapose.data.normalize import normalize_images
from psapose.data.transforms import read_image
from psapose.engine.distributed import barrier, setup_distributed
from psapose.engine.inference import Predictions, autocast, evaluate_predictions, predict
from psapose.engine.loss import build_loss
from psapose.engine.sampler import EpochSampler
from psapose.visualize import draw_poses, heatmap_image, image_grid

__all__ = [
    "Progress",
    "Trainer",
    "atomic_save",
    "find_resume_checkpoint",
    "prepare_config",
    "seed_everything",
]

log = logging.getLogger("psapose")


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file, fsync, then rename: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def find_resume_checkpoint(output_dir: Path) -> Path | None:
    latest = output_dir / "checkpoints" / "latest.pth"
    return latest if latest.is_file() else None


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
        )
        self.epoch, self.step, self.best_ap = 0, 0, -1.0
        self.history: list[dict[str, Any]] = []
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
            "rng": _rng_state(),
            "config": OmegaConf.to_container(self.cfg, resolve=True),
        }

    def save(self, name: str = "latest.pth") -> Path:
        path = self.output_dir / "checkpoints" / name
        if self.dist.is_main:
            atomic_save(self.state_dict(), path)
        return path

    def _maybe_resume(self) -> None:
        resume = self.cfg.resume
        if not resume:
            return
        path = find_resume_checkpoint(self.output_dir) if resume == "auto" else Path(resume)
        if path is None:
            log.info("resume=auto: no checkpoint in %s, starting fresh", self.output_dir)
            return
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise CheckpointError(f"{path}: cannot read the training checkpoint ({err})") from err
        if not isinstance(state, dict) or "optimizer" not in state:
            raise CheckpointError(f"{path}: not a psapose training checkpoint (no optimizer state)")
        self.raw_model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step, self.best_ap = state["epoch"], state["step"], state["best_ap"]
        self.history = list(state.get("history", []))
        _set_rng_state(state["rng"])
        log.info("resumed from %s at epoch %d (step %d)", path, self.epoch, self.step)

    # ------------------------------------------------------------------ training
    def _set_lr(self) -> float:
        lr = self.cfg.schedule.lr * _lr_factor(self.step, self.epoch, self.cfg.schedule)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def train_step(self, batch: dict[str, Any]) -> float:
        self.model.train()
        lr = self._set_lr()
        images = normalize_images(
            batch["image"], device=self.device, channels_last=self.cfg.channels_last
        )
        keypoints = batch["keypoints"].to(self.device, non_blocking=True)
        visible = batch["visible"].to(self.device, non_blocking=True)
        # Targets are made per batch on the device: far cheaper than per sample in workers.
        targets, weights = self.codec.encode(keypoints, visible)
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
        if not math.isfinite(total):
            raise FloatingPointError(f"loss is {total} at epoch {self.epoch} step {self.step}")
        if self.cfg.schedule.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.raw_model.parameters(), self.cfg.schedule.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        if self.writer is not None and self.step % self.cfg.log_interval == 0:
            self.writer.add_scalar("train/loss", total, self.step)
            self.writer.add_scalar("train/lr", lr, self.step)
        return total

    def train_epoch(self) -> float:
        self.sampler.set_epoch(self.epoch)
        bar = Progress(
            len(self.loader), f"epoch {self.epoch + 1}/{self.cfg.schedule.epochs}",
            self.cfg.log_interval, enabled=self.dist.is_main,
        )  # fmt: skip
        losses, start, first = [], time.perf_counter(), True
        for batch in self.loader:
            if first and self.writer is not None and self.epoch == 0:
                self._log_targets(batch)
            first = False
            losses.append(self.train_step(batch))
            global_images = len(batch["index"]) * self.dist.world_size
            bar.update(global_images, f"loss {losses[-1]:.3e}")
        bar.close()
        elapsed = time.perf_counter() - start
        rate = len(losses) * self.sampler.global_batch / max(elapsed, 1e-9)
        if self.writer is not None:
            self.writer.add_scalar("train/images_per_s", rate, self.step)
            self.writer.add_scalar("train/epoch_loss", float(np.mean(losses)), self.epoch + 1)
        return float(np.mean(losses))

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
        cfg = self.cfg
        epochs = cfg.schedule.epochs
        stats: dict[str, float] | None = None
        preds = None
        t0 = time.perf_counter()
        while self.epoch < epochs:
            loss = self.train_epoch()
            self.epoch += 1
            record: dict[str, Any] = {"epoch": self.epoch, "loss": loss}
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
                log.info(
                    "epoch %d/%d loss %.4e%s", self.epoch, epochs, loss,
                    f" AP {stats['AP']:.4f}" if stats and "AP" in record else "",
                )  # fmt: skip
            self.save("latest.pth")
            barrier()
        if preds is not None and self.dist.is_main:
            self._write_prediction_images(preds)
        if self.writer is not None:
            self.writer.flush()
        return {
            "history": self.history,
            "best_ap": self.best_ap,
            "stats": stats,
            "seconds": time.perf_counter() - t0,
        }

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
