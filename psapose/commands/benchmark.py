"""Benchmarks, each measured beside its own reference in the same run.

    python tools/benchmark.py data --root ../shared/data/coco_mini
    python tools/benchmark.py data --root ../shared/data/coco_mini --codec msra --input-size 384 288 --json

``data``: training samples per second for one worker (one process, one thread
for OpenCV and torch, as in a DataLoader worker) on real images: the full
training pipeline (read, augment, affine crop, codec targets) beside the rate
of JPEG decoding alone on the same images in the same order, interleaved
repeat by repeat. Targets are charged as the trainer makes them (one batched
encode per batch, timed on this CPU and divided per sample); the rate with
targets encoded sample by sample in the worker is shown too.
"""

from __future__ import annotations

import argparse
import importlib
import json

# The parts (psapose/benchmarks/<part>.py), in the order of their sub-commands.
PARTS = ("data", "eval", "model", "train")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="part", required=True)
    # Each part adds its own sub-command, setting ``run`` and ``print_table``.
    for part in PARTS:
        importlib.import_module(f"psapose.benchmarks.{part}").register(sub)
    args = parser.parse_args(argv)
    result = args.run(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        args.print_table(result)
    return 0
