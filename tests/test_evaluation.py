"""The evaluation back end: OKS-NMS, rescoring, COCO results, pycocotools evaluation.

The NMS and rescoring code is compared with per-instance ports of the official
HRNet code (leoxiaobin/deep-high-resolution-net.pytorch, ``lib/nms/nms.py`` and
``lib/dataset/coco.py``), written out in ``psapose.evaluation.reference`` with HRNet's loops
kept as they are (the evaluation benchmark runs the same ports).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from psapose.evaluation import (
    COCO_SIGMAS,
    STAT_NAMES,
    evaluate_keypoints,
    format_table,
    ground_truth_results,
    keypoint_results,
    nms_per_image,
    oks_iou,
    oks_matrix,
    oks_nms,
    rescore,
    resolve_sigmas,
    results_to_arrays,
    soft_oks_nms,
    write_results,
    write_test_dev_results,
)
from psapose.evaluation import nms as nms_module
from psapose.evaluation.reference import (
    ref_evaluate,
    ref_oks_iou,
    ref_oks_nms,
    ref_soft_oks_nms,
)
from tests.helpers import SHARED_DATA

ROOT = Path(__file__).resolve().parents[1]
EVAL_PAIR = SHARED_DATA / "coco_eval_pair"
PAIR_GT = EVAL_PAIR / "example_coco_val.json"
PAIR_PREDS = EVAL_PAIR / "example_coco_preds.json"
MINI_VAL = SHARED_DATA / "coco_mini" / "annotations" / "person_keypoints_val2017.json"
needs_pair = pytest.mark.skipif(
    not PAIR_PREDS.is_file(), reason=f"shared COCO eval pair not found at {EVAL_PAIR}"
)
needs_mini = pytest.mark.skipif(
    not MINI_VAL.is_file(), reason=f"shared COCO subset annotations not found at {MINI_VAL}"
)
PAIR_EXPECTED = {"AP": 0.8609, "AP50": 0.9931, "AP75": 0.9109, "AR": 0.875}


# ----------------------------------------------------------------------------- reference ports
# The HRNet ports (lib/nms/nms.py, COCODataset.evaluate) live in psapose.evaluation.reference.


def as_db(keypoints, scores, areas):
    """The per-person dicts (HRNet's ``kpts_db``) the NMS ports take."""
    rows = zip(keypoints, scores, areas, strict=True)
    return [{"keypoints": k, "score": s, "area": a} for k, s, a in rows]


# ----------------------------------------------------------------------------- random sets


def random_people(rng, n, k=17, dtype=np.float64, size=400.0, dup_frac=0.6, tie_levels=6):
    """``n`` people around few poses: clusters of near-duplicates, many tied scores.

    Duplicates are a base pose plus noise of a few pixels, so their OKS spans the
    0.9 threshold; scores come from ``tie_levels`` values, so ties are common.
    """
    num_base = max(1, int(n * (1 - dup_frac)))
    base = rng.uniform(0, size, (num_base, k, 2))
    base_area = rng.uniform(30.0, 150.0, num_base) ** 2
    parent = np.concatenate([np.arange(num_base), rng.integers(0, num_base, n - num_base)])
    rng.shuffle(parent)
    noise = rng.choice([0.5, 2.0, 6.0, 20.0], n)[:, None, None]
    xy = base[parent] + rng.normal(0, 1, (n, k, 2)) * noise
    vis = rng.uniform(0, 1, (n, k, 1))
    keypoints = np.concatenate([xy, vis], axis=-1).astype(dtype)
    areas = base_area[parent] * rng.uniform(0.8, 1.2, n)
    scores = np.round(rng.integers(1, tie_levels + 1, n) / tie_levels, 3)
    return keypoints, scores, areas


# ----------------------------------------------------------------------------- OKS


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("vis", [None, 0.3])
def test_oks_matrix_is_bit_identical_to_reference(dtype, vis) -> None:
    rng = np.random.default_rng(0)
    kps, _, areas = random_people(rng, 60, dtype=dtype)
    matrix = oks_matrix(kps, areas, kps, areas, COCO_SIGMAS, vis)
    flat = kps.reshape(len(kps), -1)
    for i in range(len(kps)):
        ref = ref_oks_iou(flat[i], flat, areas[i], areas, None, vis)
        assert np.array_equal(matrix[i], ref)
        assert np.array_equal(oks_iou(kps[i], kps, areas[i], areas, None, vis), ref)
    assert np.allclose(np.diag(matrix), 1.0)


def test_oks_matrix_row_blocks(monkeypatch) -> None:
    rng = np.random.default_rng(1)
    kps, _, areas = random_people(rng, 50)
    whole = oks_matrix(kps, areas, kps, areas)
    monkeypatch.setattr(nms_module, "_BLOCK_ELEMENTS", 17 * 50 * 3)
    assert np.array_equal(oks_matrix(kps, areas, kps, areas), whole)


def test_sigmas() -> None:
    yaml_like = [0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062]
    yaml_like += [0.107, 0.107, 0.087, 0.087, 0.089, 0.089]
    assert resolve_sigmas(yaml_like, 17) is COCO_SIGMAS  # HRNet's ".26 / 10", bit for bit
    assert resolve_sigmas(None, 17) is COCO_SIGMAS
    assert np.array_equal(resolve_sigmas([0.05] * 5, 5), [0.05] * 5)
    with pytest.raises(ValueError, match="sigmas are required for 5 keypoints"):
        resolve_sigmas(None, 5)
    with pytest.raises(ValueError, match="expected 5 sigmas"):
        resolve_sigmas([0.05] * 4, 5)


# ----------------------------------------------------------------------------- NMS


@pytest.mark.parametrize(
    "seed, n, dtype, threshold, vis",
    [
        (0, 400, np.float64, 0.9, None),
        (1, 300, np.float32, 0.9, None),
        (2, 300, np.float64, 0.5, None),
        (3, 250, np.float64, 0.9, 0.4),
        (4, 1, np.float64, 0.9, None),
        (5, 2, np.float32, 0.9, None),
    ],
)
def test_oks_nms_equals_reference(seed, n, dtype, threshold, vis) -> None:
    rng = np.random.default_rng(seed)
    kps, scores, areas = random_people(rng, n, dtype=dtype)
    keep = oks_nms(kps, scores, areas, None, threshold, vis)
    ref = ref_oks_nms(as_db(kps, scores, areas), threshold, None, vis)
    assert keep.tolist() == [int(i) for i in ref]
    if n > 10:
        assert 0 < len(keep) < n  # the clusters were suppressed, not everything


def test_oks_nms_row_blocks_and_edge_cases(monkeypatch) -> None:
    rng = np.random.default_rng(7)
    kps, scores, areas = random_people(rng, 200)
    ref = [int(i) for i in ref_oks_nms(as_db(kps, scores, areas), 0.9)]
    monkeypatch.setattr(nms_module, "_BLOCK_ELEMENTS", 17 * 200 * 7)  # 7-row blocks
    assert oks_nms(kps, scores, areas).tolist() == ref
    assert oks_nms(np.zeros((0, 17, 3)), np.zeros(0), np.zeros(0)).tolist() == []
    # All identical, all tied: the reference keeps the last index (argsort reversed).
    same = np.repeat(kps[:1], 5, axis=0)
    assert oks_nms(same, np.ones(5), np.ones(5)).tolist() == [4]
    # NaN OKS suppresses (``not <=``), as in the reference.
    nan = kps[:3].copy()
    nan[1, 0, 0] = np.nan
    ref_nan = [int(i) for i in ref_oks_nms(as_db(nan, scores[:3], areas[:3]), 0.9)]
    assert oks_nms(nan, scores[:3], areas[:3]).tolist() == ref_nan


@pytest.mark.parametrize(
    "seed, n, dtype, max_dets, vis",
    [
        (0, 300, np.float64, 20, None),
        (1, 200, np.float32, 20, None),
        (2, 150, np.float64, 200, None),
        (3, 150, np.float64, 20, 0.4),
        (4, 1, np.float64, 20, None),
    ],
)
def test_soft_oks_nms_equals_reference(seed, n, dtype, max_dets, vis) -> None:
    rng = np.random.default_rng(seed)
    kps, scores, areas = random_people(rng, n, dtype=dtype)
    keep = soft_oks_nms(kps, scores, areas, None, 0.9, vis, max_dets)
    ref = ref_soft_oks_nms(as_db(kps, scores, areas), 0.9, None, vis, max_dets)
    assert keep.tolist() == ref.tolist()
    assert len(keep) == min(n, max_dets)


def test_soft_oks_nms_row_by_row(monkeypatch) -> None:
    rng = np.random.default_rng(8)
    kps, scores, areas = random_people(rng, 120)
    ref = ref_soft_oks_nms(as_db(kps, scores, areas), 0.9).tolist()
    monkeypatch.setattr(nms_module, "_BLOCK_ELEMENTS", 17 * 120 * 4)  # no full matrix
    assert soft_oks_nms(kps, scores, areas).tolist() == ref


@pytest.mark.parametrize("soft", [False, True])
def test_nms_per_image_equals_per_image_loop(soft) -> None:
    rng = np.random.default_rng(11)
    n = 600
    kps, scores, areas = random_people(rng, n, size=150.0)
    image_ids = rng.choice([7, 3, 1000, 42, 5, 99, 8, 13], n)
    kept = nms_per_image(image_ids, kps, scores, areas, None, 0.9, soft=soft)
    expected = []
    seen: list[int] = []
    for i in image_ids.tolist():  # images in order of first appearance
        if i not in seen:
            seen.append(i)
    for image in seen:
        rows = np.flatnonzero(image_ids == image)
        nms = ref_soft_oks_nms if soft else ref_oks_nms
        keep = nms(as_db(kps[rows], scores[rows], areas[rows]), 0.9)
        expected.extend(int(rows[k]) for k in keep)
    assert kept.tolist() == expected
    assert len(np.unique(kept)) == len(kept) < n


# ----------------------------------------------------------------------------- rescoring, results


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_rescore_equals_reference(dtype) -> None:
    rng = np.random.default_rng(3)
    kscores = rng.uniform(0, 1, (500, 17)).astype(dtype)
    kscores[:50] *= 0.2  # none above the threshold: score 0
    kscores[50:60, :5] = 0.2  # exactly at the threshold: not counted
    box = rng.uniform(0.5, 1.0, 500)
    out = rescore(box, kscores, 0.2)
    ref = []
    for b, row in zip(box, kscores, strict=True):
        kpt_score, valid_num = 0, 0
        for t_s in row:
            if t_s > 0.2:
                kpt_score = kpt_score + t_s
                valid_num = valid_num + 1
        if valid_num != 0:
            kpt_score = kpt_score / valid_num
        ref.append(kpt_score * b)
    assert out.dtype == np.float64 and np.array_equal(out, np.array(ref))
    assert (out[:50] == 0).all() and (out[50:] > 0).all()


@pytest.mark.parametrize("nms", ["oks", "soft"])
def test_keypoint_results_equal_hrnet_evaluate(nms) -> None:
    rng = np.random.default_rng(5)
    n = 500
    preds, box_scores, areas = random_people(rng, n, dtype=np.float32, size=200.0)
    image_ids = rng.choice([397133, 37777, 252219, 87038, 174482], n)
    ours = keypoint_results(
        image_ids, preds[..., :2], preds[..., 2], box_scores, areas, None, nms=nms
    )
    ref = ref_evaluate(preds, areas, box_scores, image_ids, soft=nms == "soft")
    assert ours == ref
    assert len(ours) < n
    first = ours[0]
    assert set(first) == {"image_id", "category_id", "keypoints", "score"}
    assert type(first["image_id"]) is int and type(first["score"]) is float
    assert all(type(v) is float for v in first["keypoints"]) and len(first["keypoints"]) == 51


@needs_pair
@pytest.mark.parametrize("nms", ["oks", "soft"])
def test_keypoint_results_equal_hrnet_evaluate_on_real_predictions(nms) -> None:
    """Real HRNet predictions, areas from their boxes as HRNet makes them: prod(scale * 200)."""
    preds = json.loads(PAIR_PREDS.read_text())
    flat = np.array([p["keypoints"] for p in preds]).reshape(len(preds), 17, 3)
    areas = np.prod(np.array([p["scale"] for p in preds]) * 200, axis=1)
    scores = np.array([p["score"] for p in preds])
    ids = np.array([p["image_id"] for p in preds])
    ours = keypoint_results(ids, flat[..., :2], flat[..., 2], scores, areas, None, nms=nms)
    assert ours == ref_evaluate(flat, areas, scores, ids, soft=nms == "soft")
    assert 0 < len(ours) <= len(preds)


def test_keypoint_results_without_nms_and_custom_keypoints() -> None:
    rng = np.random.default_rng(6)
    kps, scores, areas = random_people(rng, 40, k=5)
    ids = np.repeat([9, 2], 20)[rng.permutation(40)]
    out = keypoint_results(ids, kps[..., :2], kps[..., 2], scores, areas, [0.05] * 5, nms="none")
    order = np.concatenate([np.flatnonzero(ids == ids[0]), np.flatnonzero(ids != ids[0])])
    assert [r["image_id"] for r in out] == ids[order].tolist()
    assert np.allclose([r["score"] for r in out], rescore(scores, kps[..., 2])[order])
    assert all(len(r["keypoints"]) == 15 for r in out)
    with pytest.raises(ValueError, match="sigmas are required for 5 keypoints"):
        keypoint_results(ids, kps[..., :2], kps[..., 2], scores, areas)
    with pytest.raises(ValueError, match="nms must be one of"):
        keypoint_results(ids, kps[..., :2], kps[..., 2], scores, areas, [0.05] * 5, nms="hard")
    assert keypoint_results([], np.zeros((0, 17, 2)), np.zeros((0, 17)), [], []) == []


# ----------------------------------------------------------------------------- pycocotools


@needs_pair
def test_eval_pair_scores_the_published_numbers() -> None:
    stats = evaluate_keypoints(PAIR_GT, PAIR_PREDS)
    assert list(stats) == list(STAT_NAMES)
    assert {k: round(stats[k], 4) for k in PAIR_EXPECTED} == PAIR_EXPECTED
    # The same through a list, COCO's sigmas given explicitly (the YAML's 0.026, ...).
    results = json.loads(PAIR_PREDS.read_text())
    again = evaluate_keypoints(PAIR_GT, results, sigmas=COCO_SIGMAS.round(3).tolist())
    assert again == stats
    assert "area" not in results[0]  # the caller's dicts are left alone
    table = format_table(stats).splitlines()
    assert len(table) == 2 and table[0].split() == list(STAT_NAMES)
    assert table[1].split()[:3] == ["0.8609", "0.9931", "0.9109"]


@needs_pair
def test_eval_results_tool() -> None:
    tool = ROOT / "tools" / "eval_results.py"
    out = subprocess.run(
        [sys.executable, str(tool), str(PAIR_GT), str(PAIR_PREDS)],
        check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    head, row = out.stdout.strip().splitlines()
    printed = dict(zip(head.split(), row.split(), strict=True))
    assert printed["AP"] == "0.8609" and printed["AP50"] == "0.9931"
    assert printed["AP75"] == "0.9109" and printed["AR"] == "0.8750"
    out = subprocess.run(
        [sys.executable, str(tool), str(PAIR_GT), str(PAIR_PREDS), "--json",
         "--sigmas-from", "coco"],
        check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    stats = json.loads(out.stdout)
    assert {k: round(stats[k], 4) for k in PAIR_EXPECTED} == PAIR_EXPECTED
    bad = subprocess.run(
        [sys.executable, str(tool), str(MINI_VAL), str(PAIR_PREDS)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if MINI_VAL.is_file():
        assert bad.returncode == 2 and "image 785" in bad.stderr


@needs_mini
@pytest.mark.parametrize("nms", ["oks", "soft"])
def test_ground_truth_through_the_results_path_scores_ap_one(nms, tmp_path) -> None:
    gt = ground_truth_results(MINI_VAL)
    assert len(gt) == 68  # the val people with keypoints (docs/data.md)
    arrays = results_to_arrays(gt)
    results = keypoint_results(
        arrays.image_ids,
        arrays.keypoints,
        arrays.keypoint_scores,
        arrays.scores,
        arrays.areas,
        COCO_SIGMAS,
        nms=nms,
    )
    assert len(results) == 68 and all(r["score"] == 1.0 for r in results)
    path = write_results(results, tmp_path / "sub" / "results.json")
    stats = evaluate_keypoints(MINI_VAL, path)
    assert stats["AP"] == 1.0 and stats["AR"] == 1.0 and stats["AP50"] == 1.0


@needs_pair
def test_empty_results_and_unknown_images(tmp_path) -> None:
    with pytest.warns(RuntimeWarning, match="no results to evaluate"):
        stats = evaluate_keypoints(PAIR_GT, [])
    assert stats == dict.fromkeys(STAT_NAMES, 0.0)
    results = json.loads(PAIR_PREDS.read_text())
    results[5] = dict(results[5], image_id=123456789)
    with pytest.raises(ValueError, match="image 123456789, which is not in the ground truth"):
        evaluate_keypoints(PAIR_GT, results)
    path = write_results(results, tmp_path / "bad.json")
    with pytest.raises(ValueError, match="image 123456789"):
        evaluate_keypoints(PAIR_GT, path)
    with pytest.raises(ValueError, match="5 keypoints, the sigmas 17"):
        evaluate_keypoints(PAIR_GT, [dict(results[0], keypoints=[0.0] * 15)])
    with pytest.raises(ValueError, match="missing field 'score'"):
        evaluate_keypoints(PAIR_GT, [{"image_id": 785, "category_id": 1, "keypoints": []}])
    with pytest.raises(FileNotFoundError):
        evaluate_keypoints(PAIR_GT, tmp_path / "missing.json")
    # A subset of the images, as params.imgIds.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        one = evaluate_keypoints(PAIR_GT, PAIR_PREDS, image_ids=[785])
    assert 0 < one["AP"] <= 1


def test_test_dev_writer(tmp_path) -> None:
    results = [{"image_id": 1, "category_id": 1, "keypoints": [1.0, 2.0, 0.5] * 17, "score": 0.9}]
    json_path, zip_path = write_test_dev_results(results, tmp_path / "out", "psa-w48_384")
    assert json_path.name == "person_keypoints_test-dev2017_psa-w48_384_results.json"
    assert zip_path.name == "person_keypoints_test-dev2017_psa-w48_384_results.zip"
    assert json.loads(json_path.read_text()) == results
    with zipfile.ZipFile(zip_path) as zf:
        assert zf.namelist() == [json_path.name]
        assert json.loads(zf.read(json_path.name)) == results
    for bad in ("a/b", "my model", "", "../x", ".hidden"):
        with pytest.raises(ValueError, match="invalid results name"):
            write_test_dev_results(results, tmp_path, bad)


# ----------------------------------------------------------------------------- performance


def test_keypoint_results_speed() -> None:
    """Printed, not asserted: 100k people over 5000 images (run with -s to see it)."""
    rng = np.random.default_rng(0)
    n, images = 100_000, 5000
    xy = rng.uniform(0, 640, (n, 17, 2)).astype(np.float32)
    kscores = rng.uniform(0, 1, (n, 17)).astype(np.float32)
    ids = rng.integers(0, images, n)
    box = rng.uniform(0.2, 1, n)
    areas = rng.uniform(32, 300, n) ** 2
    start = time.perf_counter()
    results = keypoint_results(ids, xy, kscores, box, areas, COCO_SIGMAS)
    elapsed = time.perf_counter() - start
    assert len(results) > 0.9 * n
    print(f"\nkeypoint_results: {n} people over {images} images (OKS-NMS) in {elapsed:.2f} s")


# ----------------------------------------------------------------------------- fast COCOeval


def run_cocoeval(gt_file, results, fast: bool):
    """COCOeval of ``results`` (stock or FastKeypointEval), with everything it stores."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from psapose.evaluation.fast_cocoeval import FastKeypointEval, load_keypoint_results

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(gt_file))
        copies = [dict(r) for r in results]
        if fast:
            evaluator = FastKeypointEval(coco, load_keypoint_results(coco, copies))
        else:
            evaluator = COCOeval(coco, coco.loadRes(copies), "keypoints")
        evaluator.params.useSegm = None
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator, copies


def assert_same_cocoeval(gt_file, results) -> np.ndarray:
    stock, stock_dts = run_cocoeval(gt_file, results, fast=False)
    fast, fast_dts = run_cocoeval(gt_file, results, fast=True)
    for a, b in zip(stock_dts, fast_dts, strict=True):  # loadRes's added fields
        assert (a["id"], a["area"], list(a["bbox"])) == (b["id"], b["area"], b["bbox"])
    assert stock.ious.keys() == fast.ious.keys()
    for key, value in stock.ious.items():
        np.testing.assert_array_equal(np.asarray(fast.ious[key]), np.asarray(value))
    assert len(stock.evalImgs) == len(fast.evalImgs)
    for a, b in zip(stock.evalImgs, fast.evalImgs, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert a.keys() == b.keys()
            for field in a:
                np.testing.assert_array_equal(np.asarray(b[field]), np.asarray(a[field]))
    for field in ("precision", "recall", "scores"):
        np.testing.assert_array_equal(fast.eval[field], stock.eval[field])
    np.testing.assert_array_equal(fast.stats, stock.stats)
    return stock.stats


def synthetic_coco(rng, tmp_path, images=30):
    """A keypoint GT with crowd and unlabelled people, and results with ties and near misses."""
    anns, results = [], []
    for image_id in range(1, images + 1):
        for _ in range(rng.integers(0, 5)):
            x, y = rng.uniform(0, 300, 2)
            w, h = rng.uniform(5, 200, 2)
            kps = np.stack(
                [rng.uniform(x, x + w, 17), rng.uniform(y, y + h, 17), rng.integers(0, 3, 17)], 1
            )
            kps[rng.random(17) < 0.3] = 0
            if rng.random() < 0.15:
                kps[:] = 0  # no labelled keypoint: the bbox distance branch / ignored
            kps = np.round(kps).astype(int)  # COCO stores integers
            crowd = int(rng.random() < 0.1)
            anns.append(
                {
                    "id": len(anns) + 1, "image_id": image_id, "category_id": 1,
                    "bbox": [float(x), float(y), float(w), float(h)], "area": float(w * h * 0.6),
                    "iscrowd": crowd, "num_keypoints": int((kps[:, 2] > 0).sum()),
                    "keypoints": kps.reshape(-1).tolist(),
                }
            )  # fmt: skip
            for _ in range(rng.integers(0, 4)):  # detections near this person
                noise = rng.normal(0, rng.choice([0.5, 3, 15]), (17, 2))
                det = np.concatenate((kps[:, :2] + noise, rng.random((17, 1))), 1)
                score = float(rng.choice([0.5, 0.9, rng.random()]))  # ties in the scores
                results.append(
                    {"image_id": image_id, "category_id": 1,
                     "keypoints": det.reshape(-1).tolist(), "score": score}
                )  # fmt: skip
        for _ in range(rng.integers(0, 25)):  # false positives, some images over maxDets
            det = np.concatenate((rng.uniform(0, 400, (17, 2)), rng.random((17, 1))), 1)
            results.append(
                {"image_id": image_id, "category_id": 1,
                 "keypoints": det.reshape(-1).tolist(), "score": float(rng.random())}
            )  # fmt: skip
    gt = {
        "images": [{"id": i, "width": 400, "height": 400} for i in range(1, images + 1)],
        "annotations": anns,
        "categories": [{"id": 1, "name": "person", "keypoints": [str(k) for k in range(17)]}],
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    return path, results


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_cocoeval_equals_stock_pycocotools(seed, tmp_path) -> None:
    gt_file, results = synthetic_coco(np.random.default_rng(seed), tmp_path)
    stats = assert_same_cocoeval(gt_file, results)
    assert 0 < stats[0] < 1
    # Through evaluate_keypoints: the fast default and the stock path agree.
    fast = evaluate_keypoints(gt_file, results)
    stock = evaluate_keypoints(gt_file, results, fast=False)
    assert fast == stock


@needs_pair
def test_fast_cocoeval_equals_stock_on_the_eval_pair() -> None:
    results = json.loads(PAIR_PREDS.read_text())
    stats = assert_same_cocoeval(PAIR_GT, results)
    assert round(float(stats[0]), 4) == PAIR_EXPECTED["AP"]


@needs_mini
def test_fast_cocoeval_equals_stock_on_real_annotations() -> None:
    rng = np.random.default_rng(3)
    results = ground_truth_results(MINI_VAL)
    for r in results:  # move the people a little: OKS below 1, some misses
        kps = np.asarray(r["keypoints"], dtype=np.float64).reshape(-1, 3)
        kps[:, :2] += rng.normal(0, rng.choice([1.0, 6.0, 30.0]), (len(kps), 2))
        r["keypoints"], r["score"] = kps.reshape(-1).tolist(), float(rng.random())
    assert_same_cocoeval(MINI_VAL, results)


def test_fast_result_loading_falls_back_where_load_res_takes_another_branch(tmp_path) -> None:
    import contextlib
    import io

    from pycocotools.coco import COCO

    from psapose.evaluation.fast_cocoeval import load_keypoint_results

    gt_file, results = synthetic_coco(np.random.default_rng(4), tmp_path, images=5)
    for r in results:
        r["bbox"] = [1.0, 2.0, 3.0, 4.0]  # loadRes then keeps these boxes and their area 12
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(gt_file))
        stock = coco.loadRes([dict(r) for r in results])
        fast = load_keypoint_results(coco, [dict(r) for r in results])
    assert fast.dataset["annotations"] == stock.dataset["annotations"]
    assert {a["area"] for a in fast.dataset["annotations"]} == {12.0}
