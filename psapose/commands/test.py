"""Evaluate a checkpoint on val2017 (detector or ground-truth boxes) or write test-dev results.

    python tools/test.py experiment=udp_psa_w48_256x192 data.root=data/coco checkpoint=PATH
    python tools/test.py ... checkpoint=PATH data.val.use_gt_boxes=true        # ground-truth boxes
    python tools/test.py ... checkpoint=PATH eval.split=test-dev               # results file + zip
    python tools/test.py ... checkpoint=PATH eval.flip_test=false eval.nms=soft

``checkpoint`` is a psapose training checkpoint or a plain state dict (the official
HRNet/SimpleBaseline pose checkpoints load into the ``attention=none`` models).

    python tools/test.py run=RUN_DIR                      # a training run: its config + best.pth
    python tools/test.py run=RUN_DIR eval.flip_test=false  # ... with changes on top

With ground-truth boxes the pixel errors (EPE, RMSE, PCK) are printed beside AP and
written to ``pixel_metrics.json``.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from psapose.checkpoint import load_pose_checkpoint
from psapose.cli import check_overrides, error_contract, exit_on_signals, log_into_output_dir
from psapose.config import CONFIG_DIR, ConfigError, build_model
from psapose.data.builder import build_dataset
from psapose.engine.distributed import cleanup, setup_distributed
from psapose.engine.dry_run import dry_run
from psapose.engine.inference import evaluate_predictions, pixel_stats, predict
from psapose.engine.progress import Progress
from psapose.evaluation import (
    format_pixel_table,
    format_table,
    write_results,
    write_test_dev_results,
)
from psapose.run_folder import config_from_run, run_checkpoint
from psapose.runtime import check_runtime, run_setup
from psapose.threads import ThreadPolicy, resolve_workers

log = logging.getLogger("test")


def from_run(cfg: DictConfig) -> DictConfig:
    """``run=RUN_DIR``: the run's own config and best checkpoint, this command line on top."""
    run_dir = Path(str(cfg.run)).expanduser()
    merged, warnings = config_from_run(run_dir, cfg, HydraConfig.get().overrides.task)
    for warning in warnings:
        log.warning("%s", warning)
    with open_dict(merged):
        merged.checkpoint = str(run_checkpoint(run_dir, cfg.checkpoint))
        merged.run = str(run_dir)
        merged.output_dir = cfg.output_dir
    log.info("run %s: its config.yaml and %s", run_dir, merged.checkpoint)
    return merged


def run(cfg: DictConfig, output_dir: Path) -> dict:
    if cfg.get("run"):
        cfg = from_run(cfg)
    if not cfg.checkpoint:
        raise ConfigError(
            "checkpoint is required: checkpoint=PATH (a .pth file or URL), or run=RUN_DIR"
        )
    if cfg.dry_run:
        facts = dry_run(cfg, "test")
        log.info("%s", facts["summary"])
        return facts
    setup = run_setup(cfg)
    cfg, codec = setup.cfg, setup.codec
    check_runtime(cfg)
    dist, device = setup_distributed(cfg.device)
    size = setup.input_size
    split = cfg.eval.split
    dataset = build_dataset(cfg.data, split, size, augment=False, udp=codec.use_udp)
    threads = ThreadPolicy(cfg.threads, fixed=bool(cfg.deterministic))
    threads.start("evaluation")
    workers = resolve_workers(cfg.workers)
    if dist.is_main:
        log.info(
            "%s: %s; input %dx%d, device %s, %d threads, %d workers, precision %s, flip test %s",
            split, dataset.instances.summary(), *size, device, threads.threads,
            workers, cfg.precision, "on" if cfg.eval.flip_test else "off",
        )  # fmt: skip
    model = build_model(cfg)
    load_pose_checkpoint(model, cfg.checkpoint, strict=True)  # logs what it loaded
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    start = time.perf_counter()
    preds = predict(
        model, dataset, codec, device,
        batch_size=cfg.eval.batch_size, workers=workers, flip_test=cfg.eval.flip_test,
        precision=cfg.precision, channels_last=cfg.channels_last,
        rank=dist.rank, world_size=dist.world_size,
        progress=(lambda total, label: Progress(total, label)) if dist.is_main else None,
        threads=threads,
    )  # fmt: skip
    out: dict = {"instances": len(preds.index), "seconds_inference": time.perf_counter() - start}
    if not dist.is_main:
        return out
    results, stats = evaluate_predictions(
        preds, dataset, cfg.eval.nms, cfg.eval.nms_threshold, cfg.eval.rescore_threshold, device
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
    pixel = pixel_stats(preds, dataset)  # with ground-truth boxes: one prediction per person
    if pixel is not None:
        log.info("%s pixel errors:\n%s", split, format_pixel_table(pixel))
        out["pixel"] = pixel.stats
        report = {"stats": pixel.stats, "per_keypoint": pixel.per_keypoint,
                  "counts": pixel.counts, "missing": pixel.missing}  # fmt: skip
        (output_dir / "pixel_metrics.json").write_text(json.dumps(_no_nan(report), indent=2))
    out["results"] = len(results)
    return out


def _no_nan(value: Any) -> Any:
    """JSON has no NaN: a keypoint never labelled in the split has no error (null)."""
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    return None if isinstance(value, float) and math.isnan(value) else value


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base=None)
def task(cfg: DictConfig) -> None:
    """The Hydra task: evaluate with the composed config."""
    output_dir = Path(cfg.output_dir or HydraConfig.get().runtime.output_dir)
    # One line and exit 2 for bad input (config, annotations, checkpoint), 4 for an
    # unwritable output, 143 for SIGTERM: docs/reliability.md.
    with error_contract("test", log.error), exit_on_signals("test", log):
        try:
            run(cfg, output_dir)
        finally:
            cleanup()


def main(argv: list[str] | None = None) -> None:
    """`python tools/test.py ARGS` and `psapose test ARGS` (default: the command line)."""
    args = sys.argv[1:] if argv is None else list(argv)
    # Hydra's own errors (unknown key or option) as one line and exit 2, before Hydra runs;
    # with run= the merged config is validated in from_run instead.
    check_overrides("test", args, validate=not any(a.startswith("run=") for a in args))
    # The log beside the results (inside the run evaluated, with run= and no output_dir).
    sys.argv[1:] = log_into_output_dir(args, "test_${now:%Y%m%d-%H%M%S}")
    task()
