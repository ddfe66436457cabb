"""``data``: the training data pipeline of one worker beside JPEG decoding alone.

    python tools/benchmark.py data --root ../shared/data/coco_mini

Training samples per second for one worker (one process, one thread for OpenCV and
torch, as in a DataLoader worker) on real images; see ``tools/benchmark.py --help``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

from psapose.codecs import MSRAHeatmap, UDPCombined, UDPHeatmap
from psapose.data import load_keypoint_spec
from psapose.data.coco import TopDownDataset, load_coco_annotations
from psapose.data.transforms import Augmentation

CODECS = {"msra": MSRAHeatmap, "udp": UDPHeatmap, "udp_combined": UDPCombined}


def _timed(fn: Callable[[int], object], count: int, repeats: int) -> list[float]:
    """Seconds per item of calling ``fn(i)`` for i < count, once per repeat."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(count):
            fn(i)
        times.append((time.perf_counter() - start) / count)
    return times


def bench_data(args: argparse.Namespace) -> dict:
    root = Path(args.root)
    split = args.split
    ann = root / f"annotations/person_keypoints_{split}.json"
    if not ann.is_file():
        raise SystemExit(f"{ann} not found: --root must hold a COCO layout (annotations/, images/)")
    # One worker: pin both libraries to one thread, as DataLoader workers are.
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    h, w = args.input_size
    spec = load_keypoint_spec("coco")
    instances = load_coco_annotations(ann, root / "images" / split, spec.num_keypoints, w / h)
    codec = CODECS[args.codec](input_size=(h, w))
    augment = Augmentation()
    crops = TopDownDataset(instances, spec, (h, w), udp=codec.use_udp, augment=augment)
    with_targets = TopDownDataset(instances, spec, (h, w), codec=codec, augment=augment)
    files = [instances.image_files[j] for j in instances.image_index]
    n = len(crops)
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    epoch = [0]

    def decode(i: int) -> object:
        return cv2.imread(files[i], flags)

    def worker(i: int) -> object:
        return crops[(i, epoch[0])]

    def worker_with_targets(i: int) -> object:
        return with_targets[(i, epoch[0])]

    for fn in (decode, worker, worker_with_targets):  # warm the page cache and allocators
        for i in range(min(n, 16)):
            fn(i)
    rows: dict[str, list[float]] = {"decode": [], "worker": [], "worker_targets": []}
    for r in range(args.repeats):  # interleaved, a new epoch (fresh augmentation) per repeat
        epoch[0] = r
        rows["decode"] += _timed(decode, n, 1)
        rows["worker"] += _timed(worker, n, 1)
        rows["worker_targets"] += _timed(worker_with_targets, n, 1)
    # Targets as the trainer makes them: one batched encode per batch (here on this CPU).
    batch = torch.utils.data.default_collate([crops[(i % n, 0)] for i in range(args.batch_size)])
    encode_times = _timed(
        lambda i: codec.encode(batch["keypoints"], batch["visible"]), 1, 10 * args.repeats
    )
    rows["targets_batched"] = [t / args.batch_size for t in encode_times]
    best = {k: min(v) for k, v in rows.items()}
    median = {k: statistics.median(v) for k, v in rows.items()}
    pipeline = best["worker"] + best["targets_batched"]
    pipeline_median = median["worker"] + median["targets_batched"]
    sizes = np.asarray([instances.image_sizes[j] for j in instances.image_index])
    return {
        "benchmark": "data",
        "root": str(root),
        "split": split,
        "samples": n,
        "images": instances.num_images,
        "mean_image_size": [round(float(sizes[:, 0].mean())), round(float(sizes[:, 1].mean()))],
        "input_size": [h, w],
        "codec": args.codec,
        "repeats": args.repeats,
        "ms_per_sample_best": {k: round(v * 1e3, 4) for k, v in best.items()},
        "ms_per_sample_median": {k: round(v * 1e3, 4) for k, v in median.items()},
        "decode_only_per_s": round(1 / best["decode"], 1),
        "pipeline_per_s": round(1 / pipeline, 1),
        "pipeline_targets_in_worker_per_s": round(1 / best["worker_targets"], 1),
        "ratio": round(best["decode"] / pipeline, 3),
        "ratio_median": round(median["decode"] / pipeline_median, 3),
        "ratio_targets_in_worker": round(best["decode"] / best["worker_targets"], 3),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} thread, {platform.platform()}",
        "torch": torch.__version__,
        "opencv": cv2.__version__,
    }


def print_data(result: dict) -> None:
    h, w = result["input_size"]
    mw, mh = result["mean_image_size"]
    print(
        f"data pipeline, one worker, {result['samples']} training samples from {result['images']} "
        f"real images (mean {mw}x{mh}) -> {h}x{w} crops, {result['codec']} targets, "
        f"best of {result['repeats']}"
    )
    ms = result["ms_per_sample_best"]
    rows = [
        ("JPEG decode only (cv2.imread)", ms["decode"]),
        ("worker: read, augment, crop (uint8)", ms["worker"]),
        ("  + targets, batched encode (per sample)", ms["targets_batched"]),
        ("full pipeline (worker + batched targets)", ms["worker"] + ms["targets_batched"]),
        ("full pipeline, targets encoded per sample", ms["worker_targets"]),
    ]
    print(f"{'':<44}{'ms/sample':>10}{'samples/s':>11}")
    for name, value in rows:
        print(f"{name:<44}{value:>10.3f}{1e3 / value:>11.1f}")
    print(
        f"full pipeline / decode-only rate = {result['ratio']:.3f} (median {result['ratio_median']:.3f}; "
        f"per-sample targets {result['ratio_targets_in_worker']:.3f}); goal >= 0.85"
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``data`` sub-command to ``tools/benchmark.py``."""
    data = subparsers.add_parser("data", help="data pipeline vs JPEG decode, samples/s per worker")
    data.add_argument("--root", default="../shared/data/coco_mini", help="COCO-layout root")
    data.add_argument("--split", default="train2017")
    data.add_argument("--codec", choices=sorted(CODECS), default="udp")
    data.add_argument("--input-size", type=int, nargs=2, default=[256, 192], metavar=("H", "W"))
    data.add_argument("--repeats", type=int, default=5)
    data.add_argument(
        "--batch-size", type=int, default=32, help="batch for the batched target encode"
    )
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--json", action="store_true", help="print one JSON object")
    data.set_defaults(run=bench_data, print_table=print_data)
