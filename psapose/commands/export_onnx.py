"""Export a pose network to ONNX (dynamic batch) and check it against PyTorch with onnxruntime.

    # a trained run (config.yaml + checkpoints/best.pth)
    python tools/export_onnx.py --run RUN_DIR --output quickstart.onnx
    # a checkpoint and the config it was trained with
    python tools/export_onnx.py --checkpoint w32.pth --overrides experiment=hrnet_w32_psa_p_256x192
    # any model x attention x codec, untrained (random weights, BN calibrated on the inputs)
    python tools/export_onnx.py --overrides experiment=hrnet_w32_psa_s_256x192 codec=udp_combined

The check runs the exported file and the PyTorch model on person crops of real
images (``--images``: files or folders; default: images rendered by the
synthetic-data generator), cut exactly as evaluation cuts them, with a batch
size other than the export's. It reports the largest heatmap difference
(absolute and relative to the heatmaps' peak) and the largest difference of the
decoded keypoints (with the flip test) where the peak is decisive, and fails
(exit code 1) when the heatmaps differ by more than ``--atol`` and more than
``--rtol`` of their peak, or decisive keypoints by more than ``--keypoint-atol``.
Keypoints whose map has no decisive peak (an early checkpoint's flat maps) are
not compared: their argmax is decided by rounding alone. ``--verbose`` shows
the exporter's own output.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import numpy as np
import torch

from psapose.api import PoseEstimator, image_paths
from psapose.cli import error_contract, exit_on_signals
from psapose.data.transforms import read_image
from psapose.export import (
    check_onnx,
    export_onnx,
    onnx_session,
    parity_ok,
    random_weights,
)

log = logging.getLogger("export_onnx")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", help="training run directory (config.yaml + checkpoints/)")
    parser.add_argument("--checkpoint", help="checkpoint file (with --run: a file in the run)")
    parser.add_argument("--config", help="config YAML for --checkpoint")
    parser.add_argument("--overrides", nargs="+", default=[], help="Hydra overrides")
    parser.add_argument("--output", help="ONNX file (default: <name>.onnx)")
    parser.add_argument("--opset", type=int, default=18)
    parser.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo")
    parser.add_argument("--images", nargs="+", help="images or folders for the check")
    parser.add_argument("--batch", type=int, default=8, help="crops in the check batch")
    parser.add_argument("--atol", type=float, default=1e-4, help="largest heatmap difference")
    parser.add_argument(
        "--rtol", type=float, default=1e-5,
        help="or: largest heatmap difference relative to the heatmaps' peak",
    )  # fmt: skip
    parser.add_argument("--verbose", action="store_true", help="show the exporter's own output")
    parser.add_argument(
        "--keypoint-atol", type=float, default=1e-3, help="largest keypoint difference (px)"
    )
    parser.add_argument("--no-check", action="store_true", help="export only")
    parser.add_argument("--seed", type=int, default=0, help="random weights without a checkpoint")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser.parse_args(argv)


def load(args: argparse.Namespace) -> tuple[PoseEstimator, str]:
    options = {"device": "cpu", "channels_last": False, "precision": "fp32"}
    if args.run:
        return PoseEstimator.from_run(args.run, args.checkpoint or "best", **options), "checkpoint"
    if args.checkpoint:
        config = args.config or (args.overrides or None)
        return PoseEstimator.from_checkpoint(args.checkpoint, config, **options), "checkpoint"
    torch.manual_seed(args.seed)
    return PoseEstimator.from_config(args.overrides, **options), "random"


def check_images(args: argparse.Namespace) -> list[np.ndarray]:
    """RGB images for the check: the given files/folders, or synthetic renders."""
    if not args.images:
        from psapose.data.synthetic import render_synthetic_image

        renders = [render_synthetic_image(seed=0, split="val2017", index=i) for i in range(2)]
        return [np.ascontiguousarray(r.image[..., ::-1]) for r in renders]  # BGR -> RGB
    files = [f for item in args.images for f in image_paths(item)]
    return [read_image(f, "rgb") for f in files]


def crops_of(estimator: PoseEstimator, images: list[np.ndarray], count: int) -> np.ndarray:
    """``count`` crops cut as evaluation cuts them: the whole image and its quadrant boxes."""
    crops = []
    while len(crops) < count:
        for image in images:
            h, w = image.shape[:2]
            boxes = [[0, 0, w, h], [0, 0, w / 2, h / 2], [w / 2, 0, w / 2, h / 2],
                     [0, h / 2, w / 2, h / 2], [w / 2, h / 2, w / 2, h / 2]]  # fmt: skip
            center, scale = estimator.crop_boxes(np.asarray(boxes, dtype=np.float64))
            crops += [estimator.crop(image, c, s) for c, s in zip(center, scale, strict=True)]
    return np.stack(crops[:count])


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    # One line and exit 2 for bad input (checkpoint, config, images; ValueErrors are the
    # API's checks), 4 for an unwritable output: docs/reliability.md. 1 is a failed check.
    with error_contract("export_onnx", extra=(ValueError,)), exit_on_signals("export_onnx"):
        return export_and_check(args)


def export_and_check(args: argparse.Namespace) -> int:
    estimator, weights = load(args)
    model = estimator.model
    crops = None
    if not args.no_check or weights == "random":
        crops = crops_of(estimator, check_images(args), max(args.batch, 2))
    if weights == "random":
        log.info(
            "no checkpoint: random weights (Kaiming-normal, BatchNorm calibrated on the check "
            "images, heatmap peaks scaled to 1); decoded keypoints of untrained heatmaps are "
            "ill-conditioned, so the keypoint comparison means most with trained weights"
        )
        random_weights(model, estimator.normalize(crops), args.seed)
    name = args.output or f"{'_'.join(args.overrides) or 'model'}.onnx".replace("=", "-")
    start = time.perf_counter()
    path = export_onnx(
        model, name, estimator.input_size, args.opset, args.exporter, verbose=args.verbose
    )
    report = {
        "onnx": str(path),
        "bytes": sum(
            f.stat().st_size for f in (path, path.with_name(path.name + ".data")) if f.exists()
        ),
        "exporter": args.exporter,
        "opset": args.opset,
        "weights": weights,
        "input_size": list(estimator.input_size),
        "export_seconds": round(time.perf_counter() - start, 2),
    }
    ok = True
    if not args.no_check:
        images = estimator.normalize(crops).contiguous()
        report.update(check_onnx(path, model, images, estimator.codec, estimator.spec.flip_indices))
        session = onnx_session(path)
        start = time.perf_counter()
        session.run(None, {"images": images.numpy()})
        report["onnxruntime_seconds_per_batch"] = round(time.perf_counter() - start, 4)
        ok = parity_ok(report, args.atol, args.rtol, args.keypoint_atol)
        report["ok"] = ok
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key:>30}: {value}")
    if not ok:
        log.error(
            "ONNX output differs from PyTorch beyond --atol %g (or --rtol %g of the peak) / "
            "--keypoint-atol %g px on decisive peaks",
            args.atol, args.rtol, args.keypoint_atol,
        )  # fmt: skip
    return 0 if ok else 1
