"""The trainer's parts, built from the config: seeds, model wrapping, optimiser, schedule, loader.

Each is a plain function the :class:`~psapose.engine.trainer.Trainer` calls while it
builds (nanoGPT's "build, then loop"); none keeps state of its own.
"""

from __future__ import annotations

import logging
import os
import random
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from psapose.data.builder import build_dataset
from psapose.data.coco import AnnotationError, AnnotationFileNotFound, TopDownDataset
from psapose.engine.distributed import DistInfo
from psapose.engine.faults import init_worker
from psapose.engine.sampler import EpochSampler

__all__ = [
    "build_optimizer",
    "eval_dataset",
    "fitting_batch_size",
    "fused_optimizer_supported",
    "lr_factor",
    "run_summary",
    "seed_everything",
    "train_loader",
    "wrap_model",
]

log = logging.getLogger("psapose")


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


def lr_factor(step: int, epoch: int, sched: DictConfig) -> float:
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


def build_optimizer(model: nn.Module, s: DictConfig, device: torch.device) -> torch.optim.Optimizer:
    """``schedule.optimizer`` over ``model``'s parameters, at ``schedule.lr``."""
    params = list(model.parameters())
    # One fused kernel per step instead of a handful of ops per parameter: the Adam step
    # of the quick-start model fell from 166 to 53 ms on the CPU.
    fused = {"fused": True} if fused_optimizer_supported(device) else {}
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


def wrap_model(
    model: nn.Module, cfg: DictConfig, dist: DistInfo, device: torch.device
) -> tuple[nn.Module, nn.Module, DistributedDataParallel | None]:
    """SyncBatchNorm, device, channels-last, DDP and ``torch.compile`` as the config asks.

    Returns the model to call, the plain model (weights, checkpoints) and the DDP
    wrapper (``None`` in one process).
    """
    if cfg.sync_bn and dist.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif cfg.sync_bn:
        log.warning("sync_bn=true has no effect in one process (BatchNorm sees the batch)")
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    raw_model, ddp = model, None
    if dist.enabled:
        ids = [device.index] if device.type == "cuda" else None
        # Gradients written straight into DDP's buckets: no copy, and channels-last
        # weights no longer warn that their grad strides differ from the bucket's.
        model = ddp = DistributedDataParallel(model, device_ids=ids, gradient_as_bucket_view=True)
    if cfg.compile:
        model = torch.compile(model)
    return model, raw_model, ddp


def fitting_batch_size(train_set: TopDownDataset, wanted: int, world_size: int) -> int:
    """``schedule.batch_size``, clamped (with a warning) to what the training set fills."""
    per_rank = len(train_set) // world_size
    if per_rank < 1:
        raise AnnotationError(
            f"{train_set.instances.source}: {len(train_set)} training samples for "
            f"{world_size} processes; every process needs at least one"
        )
    if wanted > per_rank:
        log.warning(
            "schedule.batch_size=%d is larger than the training set allows (%d samples, "
            "%d per process): using batch %d, one step per epoch",
            wanted, len(train_set), per_rank, per_rank,
        )  # fmt: skip
        return per_rank
    return wanted


def train_loader(
    train_set: TopDownDataset, batch_size: int, seed: int, dist: DistInfo, workers: int,
    device: torch.device,
) -> tuple[EpochSampler, DataLoader]:  # fmt: skip
    """The training sampler (exact mid-epoch resume) and the loader over it."""
    sampler = EpochSampler(
        len(train_set), batch_size, shuffle=True, seed=seed,
        rank=dist.rank, world_size=dist.world_size, drop_last=True,
    )  # fmt: skip
    loader = DataLoader(
        train_set, batch_size=batch_size, sampler=sampler, num_workers=workers,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0, drop_last=True,
        worker_init_fn=init_worker if workers > 0 else None,
    )  # fmt: skip
    return sampler, loader


def eval_dataset(
    data_cfg: DictConfig, split: str, input_size: tuple[int, int], udp: bool
) -> TopDownDataset | None:
    """The evaluation split, or ``None`` (warned) when its files are missing or unusable."""
    try:
        return build_dataset(data_cfg, split, input_size, augment=False, udp=udp)
    except AnnotationError as err:
        if not isinstance(err, AnnotationFileNotFound):
            raise  # a broken file stops the run at load, named; only a missing one is optional
        log.warning("no %s evaluation: %s", split, err)
        return None
    except (OSError, ValueError) as err:
        log.warning("no %s evaluation: %s", split, err)
        return None


def run_summary(trainer: Any) -> str:
    """The trainer's start-up line: data, schedule, device, threads, precision, selection metric."""
    t, val = trainer, trainer.val_set
    val_text = (
        f"{len(val)} {'ground-truth' if (val.instances.ann_ids >= 0).all() else 'detector'} "
        f"boxes in {val.instances.num_images} images"
        if val is not None
        else "none"
    )
    return (
        f"train: {len(t.train_set)} instances in {t.train_set.instances.num_images} "
        f"images ({t.train_set.instances.source}); {t.cfg.eval.split}: {val_text}; "
        f"{t.sampler.num_batches()} steps per epoch at batch {t.sampler.batch_size}"
        f"{f' x {t.dist.world_size} processes' if t.dist.world_size > 1 else ''}, "
        f"{t.cfg.schedule.epochs} epochs; device {t.device}, "
        f"{t.threads.threads} threads, {t.workers} workers, "
        f"precision {t.precision}; best.pth by {t.best_metric}"
    )
