#!/usr/bin/env python
"""Evaluate a checkpoint on val2017 (detector or ground-truth boxes) or write test-dev results.

    python tools/test.py experiment=udp_psa_w48_256x192 data.root=data/coco checkpoint=PATH
    python tools/test.py ... checkpoint=PATH data.val.use_gt_boxes=true        # ground-truth boxes
    python tools/test.py ... checkpoint=PATH eval.split=test-dev               # results file + zip
    python tools/test.py ... checkpoint=PATH eval.flip_test=false eval.nms=soft

``checkpoint`` is a psapose training checkpoint or a plain state dict (the official
HRNet/SimpleBaseline pose checkpoints load into the ``attention=none`` models).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from psapose.checkpoint import load_pose_checkpoint  # noqa: E402
from psapose.cli import error_contract, exit_on_signals  # noqa: E402
from psapose.config import ConfigError, build_model, input_size  # noqa: E402
from psapose.data.builder import build_dataset  # noqa: E402
from psapose.engine.distributed import cleanup, setup_distributed  # noqa: E402
from psapose.engine.inference import evaluate_predictions, predict  # noqa: E402
from psapose.engine.progress import Progress  # noqa: E402
from psapose.engine.trainer import prepare_config  # noqa: E402
from psapose.evaluation import format_table, write_results, write_test_dev_results  # noqa: E402

log = logging.getLogger("test")


def run(cfg: DictConfig, output_dir: Path) -> dict:
    cfg, spec, codec = prepare_config(cfg)
    if not cfg.checkpoint:
        raise ConfigError("checkpoint is required: checkpoint=PATH (a .pth file or URL)")
    dist, device = setup_distributed(cfg.device)
    size = input_size(cfg)
    split = cfg.eval.split
    dataset = build_dataset(cfg.data, split, size, augment=False, udp=codec.use_udp)
    if dist.is_main:
        log.info("%s: %s", split, dataset.instances.summary())
    model = build_model(cfg)
    report = load_pose_checkpoint(model, cfg.checkpoint, strict=True)
    if dist.is_main:
        log.info("weights: %s", report.summary())
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    start = time.perf_counter()
    preds = predict(
        model, dataset, codec, device,
        batch_size=cfg.eval.batch_size, workers=cfg.workers, flip_test=cfg.eval.flip_test,
        precision=cfg.precision, channels_last=cfg.channels_last,
        rank=dist.rank, world_size=dist.world_size,
        progress=(lambda total, label: Progress(total, label)) if dist.is_main else None,
    )  # fmt: skip
    out: dict = {"instances": len(preds.index), "seconds_inference": time.perf_counter() - start}
    if not dist.is_main:
        return out
    results, stats = evaluate_predictions(
        preds, dataset, cfg.eval.nms, cfg.eval.nms_threshold, cfg.eval.rescore_threshold
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    if split == "test-dev":
        json_path, zip_path = write_test_dev_results(results, output_dir, cfg.name)
        log.info("test-dev results: %s (upload %s to the COCO server)", json_path, zip_path)
        out.update(results_file=str(json_path), zip_file=str(zip_path))
    else:
        path = output_dir / f"person_keypoints_{split}_{cfg.name}_results.json"
        write_results(results, path)
        out["results_file"] = str(path)
    if stats is not None:
        log.info("%s AP table (%d results):\n%s", split, len(results), format_table(stats))
        out["stats"] = stats
        (output_dir / "stats.json").write_text(json.dumps(stats, indent=2))
    out["results"] = len(results)
    return out


@hydra.main(config_path="../configs", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    output_dir = Path(cfg.output_dir or HydraConfig.get().runtime.output_dir)
    # One line and exit 2 for bad input (config, annotations, checkpoint), 4 for an
    # unwritable output, 143 for SIGTERM: docs/reliability.md.
    with error_contract("test", log.error), exit_on_signals("test", log):
        try:
            run(cfg, output_dir)
        finally:
            cleanup()


if __name__ == "__main__":
    main()
