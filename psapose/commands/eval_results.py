"""Score a COCO keypoint results file against a ground truth with pycocotools.

    python tools/eval_results.py GT.json RESULTS.json
    python tools/eval_results.py GT.json RESULTS.json --sigmas-from my_keypoints.yaml
    python tools/eval_results.py GT.json RESULTS.json --json

The results are scored as they are (no rescoring or NMS: that happened when they
were written, see ``psapose.evaluation.keypoint_results``). Prints the ten
COCOeval numbers as a table, or as a JSON object with ``--json``.
``--sigmas-from`` takes the OKS sigmas of a keypoint YAML (or a built-in spec
name such as ``coco``) for keypoint sets other than COCO-17.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from psapose.cli import error_contract
from psapose.evaluation import evaluate_keypoints, format_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("gt", type=Path, help="COCO keypoint annotation file (ground truth)")
    parser.add_argument("results", type=Path, help="COCO keypoint results file")
    parser.add_argument(
        "--sigmas-from",
        metavar="KEYPOINT_YAML",
        help="take the OKS sigmas from this keypoint spec (a YAML path or a built-in name)",
    )
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = parser.parse_args(argv)

    # One line and exit 2 for a bad file: a missing or invalid JSON, a result with NaN,
    # infinite or non-numeric values (named by its index), keypoint counts that do not fit.
    with error_contract("eval_results", extra=(ValueError,)):
        sigmas = None
        if args.sigmas_from:
            from psapose.data.keypoint_spec import load_keypoint_spec

            sigmas = load_keypoint_spec(args.sigmas_from).sigmas_array
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            stats = evaluate_keypoints(args.gt, args.results, sigmas=sigmas)
        for warning in caught:
            print(f"eval_results: warning: {warning.message}", file=sys.stderr)
    print(json.dumps(stats, indent=1) if args.json else format_table(stats))
    return 0
