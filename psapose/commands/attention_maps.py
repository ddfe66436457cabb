"""Render what each PSA block attends to, for a trained run: spatial and channel attention.

    python tools/attention_maps.py --run RUN_DIR                       # the val split's top crops
    python tools/attention_maps.py --run RUN_DIR photo.jpg --box 120 40 180 420
    python tools/attention_maps.py --run RUN_DIR images/ --out maps    # a folder, whole images

Crops are cut as evaluation cuts them (``PoseEstimator.from_run``: the run's config,
``checkpoints/best.pth`` or ``--checkpoint latest``): from ``--box`` (x y w h) or the
whole image for image input, or from the ``--count`` highest-scoring boxes of the run's
val split when no image is given. Forward hooks on every PSA block (found by type)
compute each block's ``A_sp`` (H x W) and ``A_ch`` (C) with the block's own weights
(psapose.attention_maps); the model's code is not changed.

Out (``--out``, default ``RUN_DIR/attention_maps``), per crop:

* ``<name>_spatial.png``: the crop with its predicted pose, then every block's ``A_sp``
  over the crop, one row per stage and branch resolution (each map stretched to its
  own range, written above it);
* ``<name>_channel.png``: every block's ``A_ch`` as a strip of channel cells, one
  section per stage, on a fixed 0..1 colour scale.

Exit code 2 on bad input (no run, no image, a model without PSA blocks), named in one line.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

from psapose.api import PoseEstimator, as_boxes, image_paths
from psapose.attention_maps import AttentionRecorder, psa_blocks, save_attention_pngs
from psapose.checkpoint import CheckpointError
from psapose.config import ConfigError
from psapose.data.transforms import ImageReadError
from psapose.visualize import draw_poses


class BadInput(Exception):  # noqa: N818 (reported as one line, exit code 2)
    pass


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("input", nargs="?", help="an image or a folder (default: val crops)")
    parser.add_argument("--run", required=True, help="training run directory")
    parser.add_argument("--out", type=Path, default=None, help="output folder")
    parser.add_argument("--checkpoint", default="best", help="best (default), latest, or a file")
    parser.add_argument(
        "--box", type=float, nargs=4, metavar=("X", "Y", "W", "H"), help="person box for images"
    )
    parser.add_argument("--count", type=int, default=4, help="val crops when no image is given")
    parser.add_argument("--scale", type=int, default=None, help="tile magnification (default: "
                        "crops at least 192 px high)")  # fmt: skip
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    return parser.parse_args(argv)


def val_crops(estimator: PoseEstimator, run: Path, count: int) -> list[tuple[str, np.ndarray]]:
    """The ``count`` highest-scoring boxes of the run's val split, cut by the estimator."""
    from omegaconf import OmegaConf

    from psapose.data.builder import load_split
    from psapose.runtime import run_setup

    setup = run_setup(OmegaConf.load(run / "config.yaml"))
    cfg, spec = setup.cfg, setup.spec
    h, w = estimator.input_size
    try:
        inst = load_split(cfg.data, "val", spec, w / h)
    except (OSError, ValueError) as err:
        raise BadInput(f"no image given and the run's val split cannot be read: {err}") from None
    rows = np.argsort(-np.asarray(inst.scores, dtype=np.float64), kind="stable")[:count]
    crops = []
    for r in rows:
        image = estimator.load_image(inst.image_files[inst.image_index[r]])
        center, scale = estimator.crop_boxes(inst.boxes[r : r + 1])
        crops.append((f"val_{int(inst.image_ids[inst.image_index[r]])}_{int(r)}",
                      estimator.crop(image, center[0], scale[0])))  # fmt: skip
    return crops


def image_crops(
    estimator: PoseEstimator, path: str, box: list[float] | None
) -> list[tuple[str, np.ndarray]]:
    try:
        files = image_paths(path)
    except ValueError as err:
        raise BadInput(str(err)) from None
    crops = []
    for file in files:
        if not file.is_file():
            raise BadInput(f"{file}: no such image")
        try:
            image = estimator.load_image(file)
        except (ImageReadError, OSError, ValueError) as err:
            raise BadInput(f"{file}: {err}") from None
        height, width = image.shape[:2]
        try:
            boxes = as_boxes(box if box is not None else [0, 0, width, height], where="--box")
        except ValueError as err:
            raise BadInput(str(err)) from None
        center, scale = estimator.crop_boxes(boxes)
        crops.append((file.stem, estimator.crop(image, center[0], scale[0])))
    return crops


def run(args: argparse.Namespace) -> list[Path]:
    run_dir = Path(args.run)
    if not run_dir.is_dir():
        raise BadInput(f"--run {run_dir}: not a folder")
    if args.count < 1:
        raise BadInput("--count must be at least 1")
    try:
        estimator = PoseEstimator.from_run(run_dir, args.checkpoint, device=args.device)
    except (FileNotFoundError, CheckpointError, ConfigError, RuntimeError) as err:
        raise BadInput(str(err).splitlines()[0]) from None
    model = estimator.model
    if not psa_blocks(model):
        raise BadInput(f"{run_dir}: the model has no PSA blocks (trained with attention != psa)")
    if args.input is None:
        crops = val_crops(estimator, run_dir, args.count)
    else:
        crops = image_crops(estimator, args.input, args.box)
    out = args.out or run_dir / "attention_maps"
    scale = args.scale or max(1, math.ceil(192 / estimator.input_size[0]))
    written = []
    for start in range(0, len(crops), estimator.batch_size):
        chunk = crops[start : start + estimator.batch_size]
        batch = estimator.normalize([c for _, c in chunk])
        with torch.no_grad(), AttentionRecorder(model) as recorder:
            heatmaps = model(batch).float()
        maps = recorder.maps()
        keypoints, scores = estimator.codec.decode(heatmaps)
        for i, (name, crop) in enumerate(chunk):
            rgb = np.ascontiguousarray(crop[..., ::-1] if estimator.color == "bgr" else crop)
            posed = draw_poses(rgb, keypoints[i].cpu().numpy(), scores[i].cpu().numpy(),
                               estimator.spec, 0.3)  # fmt: skip
            written += save_attention_pngs(out, name, rgb, maps, i, scale, header=posed)
    return written


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        written = run(args)
    except BadInput as err:
        print(f"attention_maps.py: {err}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0
