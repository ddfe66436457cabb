"""Writing the synthetic dataset: the COCO annotation files, detector-like val boxes, the
images (rendered in worker processes from 64 images on), and the command line
(``python -m psapose.data.synthetic``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from psapose.data.keypoint_spec import load_keypoint_spec

from .person import DIFFICULTIES, difficulty_preset
from .pose import _COCO_NAMES
from .scene import _MAX_IMAGES, DEFAULT_IMAGE_SIZE, SPLITS, _rng, render_synthetic_image

DETECTION_FILE = "synthetic_val2017_detections.json"
GENERATOR_VERSION = 1
JPEG_QUALITY = 90
_DETECTION_STREAM = 2  # spawn_key[0] of the detection jitter streams
_MIN_POOL_IMAGES = 64  # fewer images are rendered in-process: starting workers costs more


def _detections(
    seed: int, index: int, image_id: int, anns: list[dict], H: int, W: int
) -> list[dict]:
    """Detector-like person boxes for one val image, from its ground truth with jitter."""
    rng = _rng(seed, _DETECTION_STREAM, index)
    dets = []
    for ann in anns:
        x, y, w, h = ann["bbox"]
        small = np.exp(-ann["area"] / 1500.0)
        p_miss = 0.03 + 0.25 * small + (0.1 if ann["num_keypoints"] < 5 else 0.0)
        if rng.random() < p_miss:
            continue
        cx = x + w / 2 + rng.normal(0, 0.03) * w
        cy = y + h / 2 + rng.normal(0, 0.03) * h
        w2, h2 = w * np.exp(rng.normal(0.02, 0.05)), h * np.exp(rng.normal(0.02, 0.05))
        x0, y0 = max(cx - w2 / 2, 0.0), max(cy - h2 / 2, 0.0)
        x1, y1 = min(cx + w2 / 2, float(W)), min(cy + h2 / 2, float(H))
        if x1 - x0 < 1 or y1 - y0 < 1:
            continue
        if rng.random() < 0.06 + 0.3 * small:
            score = rng.uniform(0.2, 0.6)
        else:
            score = 0.6 + 0.4 * rng.beta(4.0, 1.3)
        dets.append((score, [x0, y0, x1 - x0, y1 - y0]))
    for _ in range(int(rng.poisson(0.3))):  # false positives
        h = rng.uniform(0.12, 0.6) * H
        w = h * rng.uniform(0.3, 0.8)
        x0, y0 = rng.uniform(0, max(W - w, 1.0)), rng.uniform(0, max(H - h, 1.0))
        dets.append((rng.uniform(0.03, 0.45), [x0, y0, min(w, W - x0), min(h, H - y0)]))
    dets.sort(key=lambda d: -d[0])
    return [
        {
            "image_id": image_id,
            "category_id": 1,
            "bbox": [round(float(v), 2) for v in box],
            "score": round(float(score), 5),
        }
        for score, box in dets
    ]


def _render_and_write(args: tuple) -> tuple[dict, list[dict], int]:
    seed, split, index, image_size, image_dir, difficulty = args
    cv2.setNumThreads(1)
    r = render_synthetic_image(seed, split, index, image_size, difficulty)
    path = Path(image_dir) / r.file_name
    if not cv2.imwrite(str(path), r.image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
        raise OSError(f"could not write {path}")
    H, W = r.image.shape[:2]
    entry = {
        "license": 1,
        "file_name": r.file_name,
        "coco_url": "",
        "height": H,
        "width": W,
        "date_captured": "",
        "flickr_url": "",
        "id": r.image_id,
    }
    return entry, r.annotations, r.people


def _dataset_json(split: str, seed: int, image_size, images: list, annotations: list) -> dict:
    spec = load_keypoint_spec("coco")
    if tuple(spec.keypoints) != _COCO_NAMES:
        raise RuntimeError(
            "the built-in coco keypoint spec no longer lists COCO's 17 keypoints in order"
        )
    return {
        "info": {
            "description": f"psapose synthetic COCO-keypoint dataset ({split})",
            "url": "",
            "version": str(GENERATOR_VERSION),
            "year": 2017,
            "contributor": "psapose.data.synthetic",
            "date_created": "",
            "seed": int(seed),
            "split": split,
            "image_size": [int(image_size[0]), int(image_size[1])],
        },
        "licenses": [{"url": "https://opensource.org/licenses/MIT", "id": 1, "name": "MIT"}],
        "images": images,
        "annotations": annotations,
        "categories": [spec.coco_category()],
    }


def _write_json(path: Path, data: Any) -> None:
    # Bytes, not text: no platform newline translation, so the files are identical everywhere.
    path.write_bytes((json.dumps(data, separators=(",", ":"), ensure_ascii=True) + "\n").encode())


def _owned_paths(out: Path) -> list[Path]:
    return [
        out / "annotations" / "person_keypoints_train2017.json",
        out / "annotations" / "person_keypoints_val2017.json",
        out / "person_detection_results" / DETECTION_FILE,
    ]


def generate_synthetic_coco(
    out_dir: str | os.PathLike,
    images: int = 500,
    val_images: int | None = None,
    seed: int = 0,
    image_size: Sequence[int] = DEFAULT_IMAGE_SIZE,
    *,
    difficulty: str = "standard",
    force: bool = False,
    workers: int = 1,
) -> dict[str, Any]:
    """Write the synthetic dataset under ``out_dir`` in the official COCO layout.

    Args:
        images: training images; ``val_images`` defaults to ``max(1, images // 4)``.
        seed: a non-negative integer; the same arguments give byte-identical files.
        image_size: (H, W) of every image.
        force: write into a non-empty ``out_dir``, replacing the dataset files
            (the three JSON files and the ``.jpg`` files of the two image folders);
            without it a non-empty ``out_dir`` raises ``FileExistsError``.
        workers: processes rendering images, used from 64 images on (the output
            does not depend on it).

    Returns:
        A summary: per split images, people, labelled/visible/occluded keypoint
        counts and file paths, the detection count, totals and the time taken.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    val_images = max(1, images // 4) if val_images is None else val_images
    counts = {"train2017": int(images), "val2017": int(val_images)}
    for split, n in counts.items():
        if not 0 <= n <= _MAX_IMAGES:
            raise ValueError(f"{split}: image count {n} out of range [0, {_MAX_IMAGES}]")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    difficulty_preset(difficulty)  # fail before writing anything
    image_size = tuple(int(v) for v in image_size)
    if len(image_size) != 2 or min(image_size) < 32:
        raise ValueError(f"image_size must be (H, W) with both at least 32, got {image_size}")
    _prepare_out_dir(out, force)

    summary: dict[str, Any] = {
        "out_dir": str(out),
        "seed": int(seed),
        "image_size": list(image_size),
        "difficulty": difficulty,
    }
    splits: dict[str, Any] = {}
    detections: list[dict] = []
    pool = (
        ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))
        if workers > 1 and sum(counts.values()) >= _MIN_POOL_IMAGES
        else None
    )
    try:
        for split in SPLITS:
            image_dir = out / "images" / split
            jobs = [
                (int(seed), split, i, image_size, str(image_dir), difficulty)
                for i in range(counts[split])
            ]
            if pool is None:
                results = [_render_and_write(job) for job in jobs]
            else:
                results = list(pool.map(_render_and_write, jobs, chunksize=8))
            entries = [r[0] for r in results]
            anns = [a for r in results for a in r[1]]
            ann_file = out / "annotations" / f"person_keypoints_{split}.json"
            _write_json(ann_file, _dataset_json(split, seed, image_size, entries, anns))
            splits[split] = _split_summary(results, anns, ann_file, image_dir)
            if split == "val2017":
                H, W = image_size
                for i, r in enumerate(results):
                    detections += _detections(int(seed), i, r[0]["id"], r[1], H, W)
    finally:
        if pool is not None:
            pool.shutdown()
    det_file = out / "person_detection_results" / DETECTION_FILE
    _write_json(det_file, detections)
    labelled = sum(s["keypoints_labelled"] for s in splits.values())
    occluded = sum(s["keypoints_occluded"] for s in splits.values())
    summary.update(
        splits=splits,
        detection_file=str(det_file),
        detections=len(detections),
        images=sum(s["images"] for s in splits.values()),
        people=sum(s["people"] for s in splits.values()),
        keypoints_labelled=labelled,
        fraction_occluded=occluded / max(labelled, 1),
        seconds=time.perf_counter() - t0,
    )
    return summary


def _prepare_out_dir(out: Path, force: bool) -> None:
    """Make ``out``'s folders; in a non-empty ``out`` (``force`` only), first remove the
    dataset's own files: the three JSON files and the two image folders' ``.jpg`` files."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise FileExistsError(
                f"{out} is not empty; choose a new directory or pass force=True (--force) to overwrite"
            )
        for path in _owned_paths(out):
            path.unlink(missing_ok=True)
        for split in SPLITS:
            folder = out / "images" / split
            if folder.is_dir():
                for jpg in folder.glob("*.jpg"):
                    jpg.unlink()
    for sub in ("annotations", "person_detection_results", *(f"images/{s}" for s in SPLITS)):
        (out / sub).mkdir(parents=True, exist_ok=True)


def _split_summary(
    results: list[tuple[dict, list[dict], int]], anns: list[dict], ann_file: Path, image_dir: Path
) -> dict[str, Any]:
    """One split's counts for the summary: images, people, keypoints by visibility, files."""
    vis = np.array([a["keypoints"][2::3] for a in anns], dtype=np.int64).reshape(-1, 17)
    return {
        "images": len(results),
        "people_drawn": int(sum(r[2] for r in results)),
        "people": len(anns),
        "people_with_keypoints": int((vis > 0).any(1).sum()),
        "keypoints_labelled": int((vis > 0).sum()),
        "keypoints_visible": int((vis == 2).sum()),
        "keypoints_occluded": int((vis == 1).sum()),
        "annotation_file": str(ann_file),
        "image_dir": str(image_dir),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.images < 0 or (args.val_images is not None and args.val_images < 0):
        parser.error("image counts must be >= 0")
    if args.seed < 0:
        parser.error("--seed must be >= 0")
    if min(args.image_size) < 32:
        parser.error("--image-size: both sides must be at least 32")
    try:
        s = generate_synthetic_coco(
            args.out,
            images=args.images,
            val_images=args.val_images,
            seed=args.seed,
            image_size=args.image_size,
            difficulty=args.difficulty,
            force=args.force,
            workers=max(1, args.workers),
        )
    except FileExistsError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    tr, va = s["splits"]["train2017"], s["splits"]["val2017"]
    print(
        f"synthetic COCO keypoints: {tr['images']} train + {va['images']} val images, "
        f"{s['people']} people, {s['keypoints_labelled']} keypoints labelled "
        f"({100 * s['fraction_occluded']:.1f}% occluded), {s['detections']} val detections, "
        f"seed {s['seed']}, {s['image_size'][0]}x{s['image_size'][1]}, "
        f"{s['seconds']:.1f} s -> {s['out_dir']}"
    )
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m psapose.data.synthetic",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"""\
Write a synthetic COCO-keypoint dataset in the official COCO layout:

  OUT/annotations/person_keypoints_train2017.json, person_keypoints_val2017.json
  OUT/images/train2017/000000000001.jpg ...   (ids 1, 2, ...)
  OUT/images/val2017/000001000001.jpg ...     (ids 1000001, 1000002, ...)
  OUT/person_detection_results/{DETECTION_FILE}   (detector-like val boxes)

Each image shows 1-4 articulated people carrying the 17 COCO keypoints, in
random poses and views, on textured backgrounds, with occluding objects.
Visibility flags are exact: 2 visible, 1 covered (occluder, another person,
self-occlusion), 0 outside the image. Left and right limbs carry mirror-image
slanted bands, so the sides are distinguishable, also after flip augmentation.
Image i depends only on (seed, split, i, image size): the same arguments give
byte-identical files.""",
        epilog="example: python -m psapose.data.synthetic data/synthetic --images 500 --seed 0",
    )
    parser.add_argument(
        "out", metavar="OUT", help="output directory (created; must be empty unless --force)"
    )
    parser.add_argument(
        "--images", type=int, default=500, metavar="N", help="training images (default 500)"
    )
    parser.add_argument(
        "--val-images",
        type=int,
        default=None,
        metavar="M",
        help="validation images (default max(1, N // 4))",
    )
    parser.add_argument(
        "--seed", type=int, default=0, metavar="S", help="random seed, >= 0 (default 0)"
    )
    parser.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        default=list(DEFAULT_IMAGE_SIZE),
        metavar=("H", "W"),
        help="image height and width in pixels (default 256 320)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        metavar="K",
        help="rendering processes; the output does not depend on it (default min(4, CPUs))",
    )
    parser.add_argument(
        "--difficulty",
        choices=sorted(DIFFICULTIES),
        default="standard",
        help="standard: up to 4 people, truncation, close-ups, occluders; easy: 1-3 larger "
        "people inside the image (the quick start's)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="write into a non-empty OUT, replacing the dataset's JSON files and JPEGs",
    )
    return parser
