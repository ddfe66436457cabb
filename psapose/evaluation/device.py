"""COCO keypoint results with the OKS-NMS on a torch device (a GPU after the model).

:func:`keypoint_results_on_device` returns exactly what
:func:`~psapose.evaluation.keypoint_results` returns (same people, order, numbers),
with the greedy OKS-NMS of all images run at once on ``device``
(:func:`~psapose.evaluation.nms.nms_per_image` with ``device=``). Rescoring and the
results list stay in NumPy: they are a few vectorised passes over (N, K) arrays,
while the NMS is the part whose cost grows with the people per image.

    results = keypoint_results_on_device(image_ids, keypoints, scores, box_scores, areas,
                                         device="cuda")
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .coco_eval import keypoint_results, rescore
from .nms import nms_per_image, resolve_sigmas

if TYPE_CHECKING:
    import torch

__all__ = ["keypoint_results_on_device"]


def keypoint_results_on_device(
    image_ids: np.ndarray | Sequence[int],
    keypoints: np.ndarray,
    keypoint_scores: np.ndarray,
    box_scores: np.ndarray,
    areas: np.ndarray,
    sigmas: np.ndarray | Sequence[float] | None = None,
    nms: str = "oks",
    nms_threshold: float = 0.9,
    rescore_threshold: float = 0.2,
    category_id: int = 1,
    device: str | torch.device | None = "cuda",
) -> list[dict]:
    """:func:`~psapose.evaluation.keypoint_results` with its greedy OKS-NMS on ``device``.

    Arguments and result as ``keypoint_results``. ``nms="soft"``, ``nms="none"`` and
    ``device=None`` are ``keypoint_results`` itself (soft OKS-NMS rescores one person at
    a time and stays in NumPy).

    How it stays identical: the NMS gets the same rescored scores and the same (N, K, 3)
    array that ``keypoint_results`` builds; the kept rows, already grouped by image in
    order of first appearance and in NMS order within each image, then go through
    ``keypoint_results(nms="none")``, whose grouping is stable, so it writes them in
    that order with the same rescoring.
    """
    args = (image_ids, keypoints, keypoint_scores, box_scores, areas, sigmas)
    if nms != "oks" or device is None:
        return keypoint_results(
            *args, nms=nms, nms_threshold=nms_threshold,
            rescore_threshold=rescore_threshold, category_id=category_id,
        )  # fmt: skip
    kps = np.asarray(keypoints)
    kscore = np.asarray(keypoint_scores)
    if kps.ndim != 3 or kps.shape[-1] != 2 or kscore.shape != kps.shape[:2]:
        raise ValueError(
            f"expected keypoints (N, K, 2) and keypoint_scores (N, K), got {kps.shape} and {kscore.shape}"
        )
    ids = np.asarray(image_ids).reshape(-1)
    box = np.asarray(box_scores).reshape(-1)
    area = np.asarray(areas).reshape(-1)
    if not len(ids) == len(box) == len(area) == len(kps):
        raise ValueError(
            f"image_ids, box_scores and areas must have one entry per instance ({len(kps)}), "
            f"got {len(ids)}, {len(box)} and {len(area)}"
        )
    scores = rescore(box, kscore, rescore_threshold)
    dtype = np.result_type(kps.dtype, kscore.dtype)
    if not np.issubdtype(dtype, np.floating):
        dtype = np.float64
    full = np.empty((*kscore.shape, 3), dtype=dtype)
    full[..., :2] = kps
    full[..., 2] = kscore
    sigma = resolve_sigmas(sigmas, kscore.shape[1])
    kept = nms_per_image(ids, full, scores, area, sigma, threshold=nms_threshold, device=device)
    return keypoint_results(
        ids[kept], kps[kept], kscore[kept], box[kept], area[kept], sigma, nms="none",
        rescore_threshold=rescore_threshold, category_id=category_id,
    )  # fmt: skip
