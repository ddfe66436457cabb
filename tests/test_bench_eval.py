"""``tools/benchmark.py eval``: the fast path and its per-instance reference agree."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import psapose.benchmarks.eval as bench_eval

ROOT = Path(__file__).resolve().parents[1]


def eval_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench_eval.register(parser.add_subparsers(dest="part"))
    return parser.parse_args(["eval", *argv])


@pytest.mark.parametrize(
    ("codec", "images"), [("udp", 50), ("dark", 20), ("msra", 20)]
)  # fmt: skip
def test_fast_path_and_reference_agree(codec: str, images: int) -> None:
    result = bench_eval.run_eval(eval_args("--codec", codec, "--images", str(images), "--chunk", "256"))  # fmt: skip
    assert result["boxes"] == round(104125 * images / 5000)
    assert result["reference_boxes"] == result["boxes"]
    assert result["max_keypoint_diff_px"] < 1e-3
    assert result["max_score_diff"] == 0
    same = result["same_results"]
    assert same["same_people_and_order"] and same["max_value_diff"] < 1e-3
    assert result["same_ap"]
    assert result["stats"] == result["reference_stats"]
    assert 0.3 < result["stats"]["AP"] < 1  # a realistic instance: neither empty nor perfect
    assert result["results_after_nms"] < result["boxes"]


def test_reference_fraction_compares_a_subset() -> None:
    result = bench_eval.run_eval(eval_args("--images", "40", "--reference-fraction", "0.5"))
    assert 0 < result["reference_boxes"] < result["boxes"]
    assert result["same_ap"] and result["same_results"]["same_people_and_order"]


def test_instance_has_val2017_statistics(tmp_path) -> None:
    inst = bench_eval.Instance(eval_args("--images", "1000"), tmp_path)
    gt = json.loads(inst.gt_file.read_text())
    people = gt["annotations"]
    labelled = sum(a["num_keypoints"] > 0 for a in people)
    assert len(gt["images"]) == 1000 and len(people) == round(11004 / 5)
    assert 0.45 < labelled / len(people) < 0.7  # val2017: 6,352 / 11,004
    assert 0 < sum(a["iscrowd"] for a in people) < 0.05 * len(people)
    assert len(inst) == round(104125 / 5)
    areas = np.array([a["area"] for a in people])
    assert 0.2 < (areas < 32**2).mean() < 0.6 and (areas > 96**2).mean() > 0.1


def test_benchmark_eval_cli_json() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "benchmark.py"), "eval", "--images", "10",
         "--boxes", "150", "--chunk", "64", "--json"],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    result = json.loads(out.stdout)
    assert result["benchmark"] == "eval" and result["boxes"] == 150
    assert set(result["fast_s"]) == set(bench_eval.STAGES)
    assert result["fast_total_s"] == pytest.approx(sum(result["fast_s"].values()), abs=0.01)
    assert result["same_ap"]
