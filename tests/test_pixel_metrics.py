"""Pixel metrics (EPE, RMSE, PCK) and matching top-down predictions to their ground truth."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from psapose.data.coco import load_coco_annotations
from psapose.evaluation.pixel_metrics import (
    PixelMetricsError,
    evaluate_pixel_metrics,
    format_pixel_table,
    lower_is_better,
    match_by_index,
    pixel_metrics,
)

NAMES = ["a", "b", "c"]


def _case():
    """Two instances, three keypoints; errors are 3-4-5, 6-8-10 and 5-12-13 triangles.

    instance 0, box 100 x 50 (normaliser 100): errors 5, 0, 10
    instance 1, box 40 x 80 (normaliser 80): errors 13, (unlabelled, off by 1000), 0
    """
    gt = np.array([[[10, 10], [20, 20], [30, 30]], [[50, 60], [70, 80], [90, 100]]], float)
    offset = np.array([[[3, 4], [0, 0], [6, -8]], [[-5, 12], [1000, 0], [0, 0]]], float)
    visible = np.array([[2, 1, 2], [2, 0, 2]])
    boxes = np.array([[0, 0, 100, 50], [10, 10, 40, 80]], float)
    return gt + offset, gt, visible, boxes


def test_hand_computed_numbers():
    pred, gt, visible, boxes = _case()
    m = pixel_metrics(pred, gt, visible, boxes, NAMES)
    # pooled labelled errors: 5, 0, 10, 13, 0 (the unlabelled 1000 is not counted)
    assert m.count == 5 and m.instances == 2
    assert m.stats["EPE"] == pytest.approx(28 / 5)
    assert m.stats["EPE_median"] == pytest.approx(5.0)
    assert m.stats["RMSE"] == pytest.approx(math.sqrt((25 + 0 + 100 + 169 + 0) / 5))
    # thresholds: 0.05 -> 5 px / 4 px; 0.1 -> 10 / 8; 0.2 -> 20 / 16 (inclusive)
    assert m.stats["PCK@0.05"] == pytest.approx(3 / 5)  # 5<=5, 0, 0
    assert m.stats["PCK@0.1"] == pytest.approx(4 / 5)  # 13 > 8
    assert m.stats["PCK@0.2"] == pytest.approx(1.0)
    assert m.stats["PCK@5px"] == pytest.approx(3 / 5)
    assert m.stats["PCK@10px"] == pytest.approx(4 / 5)
    assert list(m.stats) == [
        "EPE", "EPE_median", "RMSE", "PCK@0.05", "PCK@0.1", "PCK@0.2", "PCK@5px", "PCK@10px",
    ]  # fmt: skip
    a, b, c = (m.per_keypoint[n] for n in NAMES)
    assert m.counts == {"a": 2, "b": 1, "c": 2}
    assert a["EPE"] == pytest.approx(9.0) and a["RMSE"] == pytest.approx(math.sqrt(97))
    assert a["PCK@0.05"] == pytest.approx(0.5) and a["PCK@0.2"] == pytest.approx(1.0)
    assert b["EPE"] == 0.0 and b["PCK@5px"] == 1.0  # only instance 0 counts
    assert c["EPE"] == pytest.approx(5.0) and c["EPE_median"] == pytest.approx(5.0)
    assert c["RMSE"] == pytest.approx(math.sqrt(50)) and c["PCK@0.05"] == pytest.approx(0.5)


def test_thresholds_are_configurable_and_inclusive():
    pred, gt, visible, boxes = _case()
    m = pixel_metrics(pred, gt, visible, boxes, pck_fractions=(0.125,), pck_pixels=(13, 12.9))
    # 0.125 of 100 = 12.5 and of 80 = 10: 5, 0, 10 within; 13 not; 0 within
    assert m.stats["PCK@0.125"] == pytest.approx(4 / 5)
    assert m.stats["PCK@13px"] == 1.0 and m.stats["PCK@12.9px"] == pytest.approx(4 / 5)
    assert set(m.per_keypoint) == {"0", "1", "2"}  # default names


def test_invisible_keypoints_are_ignored():
    pred, gt, visible, boxes = _case()
    base = pixel_metrics(pred, gt, visible, boxes)
    pred2 = pred.copy()
    pred2[1, 1] = [-1e6, 1e6]  # the unlabelled keypoint can be anything finite
    gt2 = gt.copy()
    gt2[1, 1] = [np.nan, np.nan]  # and its ground truth too (unlabelled)
    assert pixel_metrics(pred2, gt2, visible, boxes).stats == base.stats
    # labelling it makes it count
    visible3 = visible.copy()
    visible3[1, 1] = 2
    assert pixel_metrics(pred, gt, visible3, boxes).stats["EPE"] == pytest.approx(1028 / 6)


def test_empty_input_gives_nan_and_zero_counts():
    empty = pixel_metrics(
        np.zeros((0, 3, 2)), np.zeros((0, 3, 2)), np.zeros((0, 3)), np.zeros((0, 4))
    )
    assert empty.count == 0 and empty.instances == 0
    assert all(math.isnan(v) for v in empty.stats.values()) and len(empty.stats) == 8
    pred, gt, visible, boxes = _case()
    none_labelled = pixel_metrics(pred, gt, np.zeros_like(visible), boxes, NAMES)
    assert none_labelled.count == 0 and math.isnan(none_labelled.stats["EPE"])
    assert math.isnan(none_labelled.per_keypoint["a"]["PCK@0.1"])
    assert "n/a" in format_pixel_table(none_labelled)


def test_nan_prediction_is_rejected_with_its_place():
    pred, gt, visible, boxes = _case()
    pred[1, 2] = [np.nan, 3.0]
    with pytest.raises(PixelMetricsError, match=r"instance 1, keypoint 'c' is \[nan, 3\.0\]"):
        pixel_metrics(pred, gt, visible, boxes, NAMES)
    pred, gt, visible, boxes = _case()
    gt[0, 0] = [np.inf, 0]
    with pytest.raises(PixelMetricsError, match="instance 0, keypoint 'a' is labelled"):
        pixel_metrics(pred, gt, visible, boxes, NAMES)
    with pytest.raises(PixelMetricsError, match=r"boxes must be \(2, 4\)"):
        pixel_metrics(pred, pred, visible, boxes[:, :2])
    with pytest.raises(PixelMetricsError, match="box of instance 1"):
        pixel_metrics(pred, pred, visible, np.array([[0, 0, 5, 5], [0, 0, 0, 0]], float))
    assert issubclass(PixelMetricsError, ValueError)


def test_format_table_and_metric_direction():
    pred, gt, visible, boxes = _case()
    text = format_pixel_table(pixel_metrics(pred, gt, visible, boxes, NAMES))
    lines = text.splitlines()
    assert lines[0].split() == [
        "keypoint", "n", "EPE", "EPE_median", "RMSE", "PCK@0.05", "PCK@0.1", "PCK@0.2",
        "PCK@5px", "PCK@10px",
    ]  # fmt: skip
    assert lines[1].split() == [
        "all",
        "5",
        "5.60",
        "5.00",
        "7.67",
        "0.600",
        "0.800",
        "1.000",
        "0.600",
        "0.800",
    ]
    assert lines[2].split()[:3] == ["a", "2", "9.00"]
    assert "2 instances, 5 labelled keypoints" in lines[-1]
    assert lower_is_better("EPE") and lower_is_better("RMSE") and not lower_is_better("PCK@0.1")
    assert not lower_is_better("AP")


def _coco_file(tmp_path):
    """Three annotated instances on two images, written as COCO keypoints."""
    kps = [
        [10.0, 10.0, 2, 20.0, 20.0, 2, 0, 0, 0],
        [30.0, 40.0, 2, 0, 0, 0, 50.0, 50.0, 1],
        [5.0, 6.0, 2, 7.0, 8.0, 2, 9.0, 9.5, 2],
    ]
    data = {
        "images": [
            {"id": 7, "file_name": "a.png", "width": 100, "height": 80},
            {"id": 9, "file_name": "b.png", "width": 100, "height": 80},
        ],
        "annotations": [
            {"id": i + 1, "image_id": 7 if i < 2 else 9, "category_id": 1, "keypoints": k,
             "num_keypoints": 2, "bbox": [0, 0, 61, 41], "area": 2501.0, "iscrowd": 0}
            for i, k in enumerate(kps)
        ],
        "categories": [{"id": 1, "name": "m", "keypoints": NAMES, "skeleton": []}],
    }  # fmt: skip
    path = tmp_path / "val.json"
    path.write_text(json.dumps(data))
    return load_coco_annotations(path, tmp_path, 3, 0.75)


def test_match_by_index_with_real_instances(tmp_path):
    inst = _coco_file(tmp_path)
    gt = inst.keypoints[..., :2].astype(np.float64)
    # predictions in another order (as gathered from ranks), each off by a 3-4-5 triangle
    order = np.array([2, 0, 1])
    predictions = SimpleNamespace(index=order, keypoints=gt[order] + [3.0, 4.0])
    matched = match_by_index(predictions.index, predictions.keypoints, inst)
    np.testing.assert_array_equal(matched.ground_truth, gt[order])
    np.testing.assert_array_equal(matched.image_ids, [9, 7, 7])
    # HRNet's clipping makes the 61 x 41 box 60 x 40: the normaliser is 60
    np.testing.assert_array_equal(matched.boxes[:, 2:], [[60, 40]] * 3)
    m = evaluate_pixel_metrics(predictions, inst, NAMES)
    assert m.count == 7 and m.stats["EPE"] == pytest.approx(5.0) and m.missing == 0
    assert m.stats["PCK@0.1"] == 1.0 and m.stats["PCK@0.05"] == 0.0  # 5 <= 6, 5 > 3
    assert m.counts == {"a": 3, "b": 2, "c": 2}  # v=1 (occluded but labelled) counts
    # a crop whose image could not be read has no prediction: counted as missing
    partial = SimpleNamespace(index=order[:2], keypoints=gt[order[:2]])
    m = evaluate_pixel_metrics(partial, inst, NAMES)
    assert m.missing == 1 and m.count == 5 and m.stats["EPE"] == 0.0
    assert "1 instances without a prediction" in format_pixel_table(m)


def test_match_by_index_refuses_detections_and_bad_rows(tmp_path):
    inst = _coco_file(tmp_path)
    kps = np.zeros((1, 3, 2))
    with pytest.raises(PixelMetricsError, match="not a row of the 3 instances"):
        match_by_index([3], kps, inst)
    with pytest.raises(PixelMetricsError, match="row 1 is predicted twice"):
        match_by_index([1, 1], np.zeros((2, 3, 2)), inst)
    with pytest.raises(PixelMetricsError, match="instances have 3 keypoints"):
        match_by_index([0], np.zeros((1, 4, 2)), inst)
    detections = SimpleNamespace(
        keypoints=np.zeros((2, 3, 3)), boxes=np.ones((2, 4)), ann_ids=np.array([-1, -1]),
        image_ids=np.array([7]), image_index=np.array([0, 0]), has_annotations=True,
    )  # fmt: skip
    with pytest.raises(PixelMetricsError, match=r"ground-truth boxes.*use_gt_boxes=true"):
        match_by_index([0], kps, detections)
    empty = match_by_index(np.zeros(0, np.int64), np.zeros((0, 3, 2)), inst)
    assert empty.missing == 3 and len(empty.index) == 0
