"""Keypoint errors in image pixels: end-point error, RMSE and PCK, per keypoint and overall.

The metrics animal-pose users judge a model by (DeepLabCut's pixel error, PCK), beside
COCO AP. They compare each predicted keypoint with its ground truth in image pixels, so
they need one prediction per ground-truth instance: top-down evaluation with
ground-truth boxes gives exactly that (each crop is one annotated instance), and
:func:`match_by_index` pairs them by the dataset row every prediction carries.

Only labelled keypoints (visibility > 0) count. Overall numbers pool every labelled
keypoint of every instance (a keypoint labelled more often weighs more, as in
DeepLabCut's mean pixel error); per-keypoint numbers pool that keypoint's labels.

* ``EPE``: mean end-point error, the Euclidean distance ``||pred - gt||`` in pixels.
* ``EPE_median``: its median (robust to a few swapped or lost keypoints).
* ``RMSE``: ``sqrt(mean(||pred - gt||^2))``. DeepLabCut prints the *mean* distance under
  the name RMSE; compare that with ``EPE``.
* ``PCK@f``: the share of keypoints within ``f * max(box w, box h)`` of the truth
  (distance <= threshold). The normaliser is the instance's box, the same for every
  keypoint and known for any keypoint set (PCKh's head size needs a head; the keypoints'
  own extent collapses when few are labelled); its longer side, as mmpose's
  ``PCKAccuracy`` with the box normaliser uses, so the threshold does not shrink for a
  long thin animal seen side-on.
* ``PCK@Npx``: the share within N pixels, independent of the box.

Pure NumPy: no torch, no pycocotools.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_PCK_FRACTIONS",
    "DEFAULT_PCK_PIXELS",
    "MatchedKeypoints",
    "PixelMetrics",
    "PixelMetricsError",
    "evaluate_pixel_metrics",
    "format_pixel_table",
    "lower_is_better",
    "match_by_index",
    "pck_name",
    "pixel_metrics",
]

DEFAULT_PCK_FRACTIONS = (0.05, 0.1, 0.2)
DEFAULT_PCK_PIXELS = (5.0, 10.0)
_ERRORS = ("EPE", "EPE_median", "RMSE")  # pixels: lower is better


class PixelMetricsError(ValueError):
    """Predictions or ground truth that cannot be scored (shape, NaN, no ground truth)."""


def lower_is_better(metric: str) -> bool:
    """True for the pixel errors (EPE, EPE_median, RMSE), False for PCK and AP-like scores.

    For choosing the best checkpoint by ``eval.metric``.
    """
    return metric in _ERRORS


def pck_name(threshold: float, pixels: bool = False) -> str:
    """``PCK@0.05`` for a box fraction, ``PCK@5px`` for pixels."""
    return f"PCK@{threshold:g}px" if pixels else f"PCK@{threshold:g}"


@dataclass
class PixelMetrics:
    """Pixel metrics: ``stats`` overall (flat floats) and the same names per keypoint.

    Attributes:
        stats: ``{"EPE", "EPE_median", "RMSE", "PCK@0.05", ..., "PCK@5px", ...}``; NaN when
            no keypoint is labelled.
        per_keypoint: keypoint name -> the same metric names.
        count: labelled keypoints scored.
        counts: keypoint name -> its labelled count.
        instances: instances scored.
        missing: ground-truth instances with labels but no prediction (unreadable images),
            not in the numbers.
    """

    stats: dict[str, float]
    per_keypoint: dict[str, dict[str, float]]
    count: int
    counts: dict[str, int]
    instances: int
    missing: int = 0


def _summary(
    dist: np.ndarray, norm: np.ndarray, fractions: Sequence[float], pixels: Sequence[float]
) -> dict[str, float]:
    """The metrics of 1-D distances with their per-keypoint box normalisers."""
    if dist.size == 0:
        names = [*_ERRORS, *(pck_name(f) for f in fractions), *(pck_name(p, True) for p in pixels)]
        return dict.fromkeys(names, math.nan)
    out = {
        "EPE": float(dist.mean()),
        "EPE_median": float(np.median(dist)),
        "RMSE": float(np.sqrt(np.mean(dist * dist))),
    }
    for f in fractions:
        out[pck_name(f)] = float(np.mean(dist <= f * norm))
    for p in pixels:
        out[pck_name(p, True)] = float(np.mean(dist <= p))
    return out


def pixel_metrics(
    predicted: np.ndarray,
    ground_truth: np.ndarray,
    visible: np.ndarray,
    boxes: np.ndarray,
    keypoint_names: Sequence[str] | None = None,
    pck_fractions: Sequence[float] = DEFAULT_PCK_FRACTIONS,
    pck_pixels: Sequence[float] = DEFAULT_PCK_PIXELS,
) -> PixelMetrics:
    """EPE, median EPE, RMSE and PCK of matched instances (N instances, K keypoints).

    Args:
        predicted: (N, K, 2) predicted keypoints, image pixels.
        ground_truth: (N, K, 2) labelled keypoints, image pixels (anything where unlabelled).
        visible: (N, K) visibility; a keypoint counts where it is > 0.
        boxes: (N, 4) ground-truth boxes xywh; PCK@f uses ``f * max(w, h)``.
        keypoint_names: K names for ``per_keypoint`` (default ``"0"``, ``"1"``, ...).
        pck_fractions / pck_pixels: the PCK thresholds.

    Raises:
        PixelMetricsError: shapes that do not match, a NaN or infinite prediction, a
            non-finite labelled ground truth, or a box without positive size around
            labelled keypoints (when box PCK is asked for).
    """
    pred = np.asarray(predicted, dtype=np.float64)
    gt = np.asarray(ground_truth, dtype=np.float64)
    vis = np.asarray(visible)
    box = np.asarray(boxes, dtype=np.float64)
    if pred.ndim != 3 or pred.shape[-1] != 2:
        raise PixelMetricsError(f"predicted keypoints must be (N, K, 2), got {pred.shape}")
    n, k = pred.shape[:2]
    if gt.shape != pred.shape:
        raise PixelMetricsError(f"ground truth {gt.shape} does not match predictions {pred.shape}")
    if vis.shape != (n, k):
        raise PixelMetricsError(f"visibility must be ({n}, {k}), got {vis.shape}")
    if box.shape != (n, 4):
        raise PixelMetricsError(f"boxes must be ({n}, 4) xywh, got {box.shape}")
    names = (
        [str(i) for i in range(k)] if keypoint_names is None else [str(s) for s in keypoint_names]
    )
    if len(names) != k:
        raise PixelMetricsError(f"{len(names)} keypoint names for {k} keypoints")
    bad = ~np.isfinite(pred)
    if bad.any():
        i, j, _ = np.argwhere(bad)[0]
        raise PixelMetricsError(
            f"prediction of instance {i}, keypoint {names[j]!r} is {pred[i, j].tolist()}: "
            f"{int(bad.any(axis=-1).sum())} predicted keypoints are NaN or infinite "
            "(a diverged model?)"
        )
    labelled = vis > 0
    bad_gt = labelled & ~np.isfinite(gt).all(axis=-1)
    if bad_gt.any():
        i, j = np.argwhere(bad_gt)[0]
        raise PixelMetricsError(
            f"ground truth of instance {i}, keypoint {names[j]!r} is labelled but "
            f"{gt[i, j].tolist()}"
        )
    norm = np.maximum(box[:, 2], box[:, 3])
    if pck_fractions:
        bad_box = labelled.any(axis=1) & ~(norm > 0)
        if bad_box.any():
            i = int(np.argmax(bad_box))
            raise PixelMetricsError(
                f"box of instance {i} is {box[i].tolist()}: PCK needs a positive box size"
            )
    dist = np.linalg.norm(pred - gt, axis=-1)  # (N, K); only labelled entries are read
    norm_k = np.broadcast_to(norm[:, None], (n, k))
    stats = _summary(dist[labelled], norm_k[labelled], pck_fractions, pck_pixels)
    per_keypoint = {
        name: _summary(dist[labelled[:, j], j], norm[labelled[:, j]], pck_fractions, pck_pixels)
        for j, name in enumerate(names)
    }
    return PixelMetrics(
        stats=stats,
        per_keypoint=per_keypoint,
        count=int(labelled.sum()),
        counts={name: int(labelled[:, j].sum()) for j, name in enumerate(names)},
        instances=int(labelled.any(axis=1).sum()),
    )


@dataclass
class MatchedKeypoints:
    """Predictions paired with their ground-truth instances (N pairs, K keypoints)."""

    predicted: np.ndarray  # (N, K, 2) image pixels
    ground_truth: np.ndarray  # (N, K, 2) image pixels
    visible: np.ndarray  # (N, K) the ground truth's visibility flags
    boxes: np.ndarray  # (N, 4) the instances' xywh boxes
    image_ids: np.ndarray  # (N,)
    index: np.ndarray  # (N,) dataset rows
    missing: int = 0  # labelled ground-truth instances with no prediction


def match_by_index(index: Any, keypoints: Any, instances: Any) -> MatchedKeypoints:
    """Pair top-down predictions with their ground truth through the dataset row.

    With ground-truth boxes (``data.val.use_gt_boxes=true``, always for ``data=custom``)
    each dataset row is one annotated instance and each prediction carries its row
    (``Predictions.index``), so no OKS matching is needed.

    Args:
        index: (N,) dataset rows of the predictions (``Predictions.index``).
        keypoints: (N, K, 2) predicted keypoints in image pixels (``Predictions.keypoints``).
        instances: the dataset's :class:`~psapose.data.coco.Instances` (``keypoints``
            (M, K, 3), ``boxes`` (M, 4), ``ann_ids``, ``image_ids``, ``image_index``). Its
            boxes are the crop boxes after HRNet's clipping (corners in ``[0, size - 1]``).

    Raises:
        PixelMetricsError: rows that are detections (no keypoints to compare), rows out of
            range or repeated, or a keypoint count that differs.
    """
    rows = np.asarray(index).reshape(-1)
    pred = np.asarray(keypoints, dtype=np.float64)
    gt_all = np.asarray(instances.keypoints)
    m, k = gt_all.shape[:2]
    if pred.shape != (len(rows), k, 2):
        raise PixelMetricsError(
            f"predictions are {pred.shape} for {len(rows)} rows; the instances have {k} keypoints"
        )
    if len(rows) and not np.issubdtype(rows.dtype, np.integer):
        raise PixelMetricsError(f"prediction rows must be integers, got {rows.dtype}")
    rows = rows.astype(np.int64)
    if len(rows) and (rows.min() < 0 or rows.max() >= m):
        raise PixelMetricsError(
            f"prediction row {int(rows.max() if rows.max() >= m else rows.min())} is not a "
            f"row of the {m} instances"
        )
    unique, counts = np.unique(rows, return_counts=True)
    if (counts > 1).any():
        raise PixelMetricsError(f"dataset row {int(unique[counts > 1][0])} is predicted twice")
    ann_ids = np.asarray(instances.ann_ids)
    if not getattr(instances, "has_annotations", True) or (len(rows) and (ann_ids[rows] < 0).any()):
        raise PixelMetricsError(
            "pixel metrics need ground-truth boxes: these rows are detector boxes with no "
            "keypoints to compare (set data.val.use_gt_boxes=true)"
        )
    labelled_rows = np.flatnonzero((gt_all[..., 2] > 0).any(axis=1))
    missing = int(np.setdiff1d(labelled_rows, rows).size)
    image_ids = np.asarray(instances.image_ids)[np.asarray(instances.image_index)[rows]]
    return MatchedKeypoints(
        predicted=pred,
        ground_truth=gt_all[rows, :, :2].astype(np.float64),
        visible=gt_all[rows, :, 2],
        boxes=np.asarray(instances.boxes, dtype=np.float64)[rows],
        image_ids=image_ids,
        index=rows,
        missing=missing,
    )


def evaluate_pixel_metrics(
    predictions: Any,
    instances: Any,
    keypoint_names: Sequence[str] | None = None,
    pck_fractions: Sequence[float] = DEFAULT_PCK_FRACTIONS,
    pck_pixels: Sequence[float] = DEFAULT_PCK_PIXELS,
) -> PixelMetrics:
    """Pixel metrics of ``predictions`` (``.index``, ``.keypoints``: the engine's
    ``Predictions``) against the dataset's ground-truth ``instances``."""
    matched = match_by_index(predictions.index, predictions.keypoints, instances)
    metrics = pixel_metrics(
        matched.predicted,
        matched.ground_truth,
        matched.visible,
        matched.boxes,
        keypoint_names,
        pck_fractions,
        pck_pixels,
    )
    metrics.missing = matched.missing
    return metrics


def _cell(name: str, value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:.2f}" if name in _ERRORS else f"{value:.3f}"


def _rows_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    first = max(widths[0], 1)
    lines = []
    for r in rows:
        cells = [r[0].ljust(first)] + [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def format_pixel_table(metrics: PixelMetrics, per_keypoint: bool = True) -> str:
    """The overall row and (optionally) one row per keypoint; errors in px, PCK as shares."""
    names = list(metrics.stats)
    header = ["keypoint", "n", *names]
    overall = ["all", str(metrics.count), *(_cell(n, metrics.stats[n]) for n in names)]
    rows = [header, overall]
    if per_keypoint:
        for kp, values in metrics.per_keypoint.items():
            rows.append([kp, str(metrics.counts[kp]), *(_cell(n, values[n]) for n in names)])
    text = _rows_table(rows)
    note = f"{metrics.instances} instances, {metrics.count} labelled keypoints; errors in pixels"
    if metrics.missing:
        note += f"; {metrics.missing} instances without a prediction left out"
    return f"{text}\n({note})"
