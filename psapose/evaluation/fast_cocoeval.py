"""pycocotools' keypoint evaluation with its per-detection Python loops replaced, same numbers.

On a val2017-sized run (5,000 images, ~90,000 results after OKS-NMS) stock
``COCO.loadRes`` + ``COCOeval.evaluate`` take most of the post-processing time,
in three loops:

* ``loadRes`` computes each result's keypoint box and area with NumPy calls on
  Python lists: here one array operation over all results (min, max and the
  product are exact, so the values are the same);
* ``computeOks`` loops over every (detection, ground truth) pair: here over the
  ground truths only, each against all of the image's detections at once, with
  the same operations in the same order (the keypoints a ground truth labels
  are selected before the sum, so every OKS is summed as the same contiguous
  run of numbers as in pycocotools);
* ``evaluateImg``'s greedy matching reads NumPy scalars in its innermost loop:
  here the same loop on Python lists, which skips the thresholds a detection
  cannot reach (its best OKS is below them; the stock loop finds no match there
  either).

:class:`FastKeypointEval` is a ``COCOeval`` subclass; ``accumulate`` and
``summarize`` are pycocotools' own. The tests compare every stored array and
the ten numbers with stock pycocotools.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

__all__ = ["FastKeypointEval", "load_keypoint_results"]


def load_keypoint_results(coco: COCO, results: list[dict]) -> COCO:
    """``coco.loadRes(results)`` for keypoint results, with the box and area computed at once.

    Sets each result's ``area``, ``id`` and ``bbox`` in place as ``loadRes`` does.
    Falls back to ``loadRes`` for anything but keypoint-only results with float
    keypoint lists of one length.
    """
    first = results[0] if results else {}
    # loadRes takes the caption, box and segmentation branches before the keypoint one.
    other_branch = "caption" in first or first.get("bbox") or "segmentation" in first
    if "keypoints" not in first or other_branch:
        return coco.loadRes(results)
    try:
        kps = np.array([r["keypoints"] for r in results])
    except ValueError:  # ragged
        return coco.loadRes(results)
    if kps.ndim != 2 or kps.dtype != np.float64 or kps.shape[1] % 3:
        return coco.loadRes(results)
    image_ids = {r["image_id"] for r in results}
    if not image_ids <= set(coco.getImgIds()):
        raise AssertionError("Results do not correspond to current coco set")
    res = COCO()
    res.dataset["info"] = copy.deepcopy(coco.dataset.get("info", {}))
    res.dataset["images"] = list(coco.dataset["images"])
    res.dataset["categories"] = copy.deepcopy(coco.dataset["categories"])
    x, y = kps[:, 0::3], kps[:, 1::3]
    x0, x1, y0, y1 = x.min(axis=1), x.max(axis=1), y.min(axis=1), y.max(axis=1)
    area = ((x1 - x0) * (y1 - y0)).tolist()
    boxes = np.stack((x0, y0, x1 - x0, y1 - y0), axis=1).tolist()
    for i, r in enumerate(results):
        r["area"] = area[i]
        r["id"] = i + 1
        r["bbox"] = boxes[i]
    res.dataset["annotations"] = results
    res.createIndex()
    return res


class FastKeypointEval(COCOeval):
    """``COCOeval(gt, dt, "keypoints")`` with vectorised ``computeOks`` and a leaner ``evaluateImg``."""

    def __init__(self, coco_gt: COCO | None = None, coco_dt: COCO | None = None) -> None:
        super().__init__(coco_gt, coco_dt, "keypoints")

    def computeOks(self, imgId: Any, catId: Any) -> Any:  # noqa: N802, N803 (pycocotools' names)
        p = self.params
        gts = self._gts[imgId, catId]
        dts = self._dts[imgId, catId]
        inds = np.argsort([-d["score"] for d in dts], kind="mergesort")
        dts = [dts[i] for i in inds]
        if len(dts) > p.maxDets[-1]:
            dts = dts[0 : p.maxDets[-1]]
        if len(gts) == 0 or len(dts) == 0:
            return []
        sigmas = p.kpt_oks_sigmas
        variances = (sigmas * 2) ** 2
        k = len(sigmas)
        d = np.array([dt["keypoints"] for dt in dts])
        if d.ndim != 2 or d.shape[1] != 3 * k:
            return super().computeOks(imgId, catId)
        xd, yd = d[:, 0::3], d[:, 1::3]
        ious = np.zeros((len(dts), len(gts)))
        for j, gt in enumerate(gts):
            g = np.array(gt["keypoints"])
            xg, yg, vg = g[0::3], g[1::3], g[2::3]
            k1 = np.count_nonzero(vg > 0)
            bb = gt["bbox"]
            x0, x1 = bb[0] - bb[2], bb[0] + bb[2] * 2
            y0, y1 = bb[1] - bb[3], bb[1] + bb[3] * 2
            if k1 > 0:
                dx = xd - xg
                dy = yd - yg
            else:
                z = np.zeros((len(dts), k))
                dx = np.maximum(z, x0 - xd) + np.maximum(z, xd - x1)
                dy = np.maximum(z, y0 - yd) + np.maximum(z, yd - y1)
            e = (dx**2 + dy**2) / variances / (gt["area"] + np.spacing(1)) / 2
            if k1 > 0:
                # C order: each row then sums as pycocotools' 1-D e (a column-major copy,
                # which boolean indexing can return, is summed in another order).
                e = np.ascontiguousarray(e[:, vg > 0])
            ious[:, j] = np.sum(np.exp(-e), axis=1) / e.shape[1]
        return ious

    def evaluateImg(self, imgId: Any, catId: Any, aRng: Any, maxDet: int) -> dict | None:  # noqa: N802, N803
        p = self.params
        if p.useCats:
            gt = self._gts[imgId, catId]
            dt = self._dts[imgId, catId]
        else:
            gt = [_ for c in p.catIds for _ in self._gts[imgId, c]]
            dt = [_ for c in p.catIds for _ in self._dts[imgId, c]]
        if len(gt) == 0 and len(dt) == 0:
            return None
        for g in gt:
            g["_ignore"] = 1 if g["ignore"] or (g["area"] < aRng[0] or g["area"] > aRng[1]) else 0
        gtind = np.argsort([g["_ignore"] for g in gt], kind="mergesort")
        gt = [gt[i] for i in gtind]
        dtind = np.argsort([-d["score"] for d in dt], kind="mergesort")
        dt = [dt[i] for i in dtind[0:maxDet]]
        iscrowd = [int(o["iscrowd"]) for o in gt]
        stored = self.ious[imgId, catId]
        ious = stored[:, gtind] if len(stored) > 0 else stored
        num_t, num_g, num_d = len(p.iouThrs), len(gt), len(dt)
        gtm = np.zeros((num_t, num_g))
        dtm = np.zeros((num_t, num_d))
        gt_ignore = np.array([g["_ignore"] for g in gt])
        dt_ignore = np.zeros((num_t, num_d))
        if not len(ious) == 0:
            rows = ious.tolist()  # Python floats: the same comparisons, without NumPy scalars
            row_max = ious.max(axis=1)
            # A NaN OKS matches in the stock loop (no comparison with it is true): never skip it.
            best = np.where(np.isnan(row_max), np.inf, row_max).tolist()
            ignore = gt_ignore.tolist()
            gt_ids = [g["id"] for g in gt]
            for tind, t in enumerate(p.iouThrs.tolist()):
                start = min([t, 1 - 1e-10])
                taken = [False] * num_g
                for dind, d in enumerate(dt):
                    if best[dind] < start:
                        continue  # no ground truth reaches the threshold: stock finds m = -1
                    row = rows[dind]
                    iou = start
                    m = -1
                    for gind in range(num_g):
                        if taken[gind] and not iscrowd[gind]:
                            continue
                        if m > -1 and ignore[m] == 0 and ignore[gind] == 1:
                            break
                        if row[gind] < iou:
                            continue
                        iou = row[gind]
                        m = gind
                    if m == -1:
                        continue
                    dt_ignore[tind, dind] = ignore[m]
                    dtm[tind, dind] = gt_ids[m]
                    gtm[tind, m] = d["id"]
                    taken[m] = d["id"] > 0
        a = np.array([d["area"] < aRng[0] or d["area"] > aRng[1] for d in dt]).reshape((1, num_d))
        dt_ignore = np.logical_or(dt_ignore, np.logical_and(dtm == 0, np.repeat(a, num_t, 0)))
        return {
            "image_id": imgId,
            "category_id": catId,
            "aRng": aRng,
            "maxDet": maxDet,
            "dtIds": [d["id"] for d in dt],
            "gtIds": [g["id"] for g in gt],
            "dtMatches": dtm,
            "gtMatches": gtm,
            "dtScores": [d["score"] for d in dt],
            "gtIgnore": gt_ignore,
            "dtIgnore": dt_ignore,
        }
