"""``dry_run=true``: everything a run checks at start, and nothing else.

Composes and validates the config, checks it against this machine (device,
precision, SyncBatchNorm, compile), reads and checks the annotation files of
the splits the run uses, builds the model and counts its parameters and FLOPs,
loads the checkpoint to evaluate (``tools/test.py``), and returns the start-up
summary. Nothing is trained, evaluated or written: mmpose's config check and
lightning-pose's dry run in one switch.
"""

from __future__ import annotations

import os
from typing import Any

from omegaconf import DictConfig

from psapose.checkpoint import load_pose_checkpoint
from psapose.config import build_model, selection_metric
from psapose.data.builder import build_dataset, will_generate
from psapose.data.coco import AnnotationFileNotFound
from psapose.models.complexity import count_parameters, paper_convention_macs
from psapose.runtime import check_runtime, run_setup
from psapose.threads import resolve_workers, usable_cores

__all__ = ["dry_run"]


def dry_run(cfg: DictConfig, mode: str = "train") -> dict[str, Any]:
    """The checks of a ``train`` or ``test`` start-up; returns the facts as a dict whose
    ``"summary"`` is the text the tools print. Raises what the real run would raise."""
    if mode not in ("train", "test"):
        raise ValueError(f"mode must be 'train' or 'test', got {mode!r}")
    setup = run_setup(cfg)
    cfg, codec, size = setup.cfg, setup.codec, setup.input_size
    device = check_runtime(cfg)
    facts: dict[str, Any] = {"mode": mode, "device": device, "input_size": list(size)}
    lines = [f"dry run ({mode}): config valid; device {device}, precision {cfg.precision}"]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    generated = mode == "train" and will_generate(cfg.data)
    if generated:
        # A fresh clone's quick start: nothing to read yet, and a dry run writes nothing.
        lines.append(f"data: the synthetic dataset will be written to {cfg.data.root} at start")
    elif mode == "train":
        train = build_dataset(cfg.data, "train", size, seed=cfg.seed, udp=codec.use_udp)
        batch = min(int(cfg.schedule.batch_size), max(len(train) // world, 1))
        steps = len(train) // (batch * world)
        facts.update(train_instances=len(train), steps_per_epoch=steps, batch_size=batch)
        lines.append(
            f"train: {train.instances.summary()}; {steps} steps per epoch at batch {batch}"
            f"{f' x {world} processes' if world > 1 else ''}, {cfg.schedule.epochs} epochs"
        )
    if not generated:
        lines += _eval_split(cfg, cfg.eval.split, size, codec, mode, facts)
    model = build_model(cfg)
    params = count_parameters(model)
    gflops = paper_convention_macs(model, size) / 2**30
    facts.update(parameters=params, gflops=gflops, metric=selection_metric(cfg))
    lines.append(
        f"model {type(model).__name__} + {cfg.attention.get('kind', 'none')}: {params:,} "
        f"parameters, {gflops:.3f} GFLOPs at {size[0]}x{size[1]} (paper convention); "
        f"best.pth by {facts['metric']}"
    )
    if mode == "test" and cfg.checkpoint:
        report = load_pose_checkpoint(model, cfg.checkpoint, strict=True)
        lines.append(f"checkpoint: {report.source} fits ({len(report.loaded)} tensors)")
    lines.append(
        f"{usable_cores()} usable cores: threads {cfg.threads or 'chosen from the load at start'}"
        f", {resolve_workers(cfg.workers)} workers; nothing was run"
    )
    facts["summary"] = "\n".join(lines)
    return facts


def _eval_split(
    cfg: DictConfig, split: str, size: tuple[int, int], codec: Any, mode: str, facts: dict
) -> list[str]:
    try:
        evaluation = build_dataset(cfg.data, split, size, augment=False, udp=codec.use_udp)
    except AnnotationFileNotFound as err:
        if mode == "test":
            raise
        return [f"{split}: no evaluation ({err})"]
    facts["eval_instances"] = len(evaluation)
    return [f"{split}: {evaluation.instances.summary()}"]
