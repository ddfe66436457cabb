"""OKS non-maximum suppression of person keypoints, vectorised with NumPy.

The arithmetic is that of the official HRNet code (``lib/nms/nms.py``:
``oks_iou``, ``oks_nms``, ``soft_oks_nms``) element for element, so the kept
indices are identical to it, including ties in the scores (the same
``np.argsort(scores)[::-1]`` order) and the dtypes of the inputs (float32
keypoints are subtracted and squared in float32, as HRNet's float32
predictions are). What changes is the shape of the work: HRNet loops over the
candidates in Python for every kept person; here the pairwise OKS of a whole
image is one broadcast expression (computed in row blocks when it is large),
and the greedy pass touches only the people that overlap another.

Definitions (COCO's OKS with HRNet's area convention; ``a`` is the area the
caller passes, HRNet's padded box ``w * h``)::

    e_k   = ((x_d - x_g)^2 + (y_d - y_g)^2) / (2 sigma_k)^2 / ((a_g + a_d) / 2 + eps) / 2
    oks   = mean_k exp(-e_k)      over all K keypoints, or over the keypoints
                                  whose score exceeds ``visibility_threshold`` in both

A candidate is suppressed when its OKS with a kept person is not ``<= threshold``.

:func:`nms_per_image` with ``device=`` runs the greedy OKS-NMS of every image at
once in torch on that device (a GPU after the model's forward pass): images are
padded into batches of similar size, their pairwise OKS computed in one
broadcast expression per batch, and the greedy pass is one loop over the rank
within an image, vectorised across images. Its kept indices equal the NumPy
path's: the score order is NumPy's own (:func:`_grouped_score_order`), and the
few OKS values within ``1e-9`` of the threshold, where torch's ``exp`` and sum
order could round to the other side, are recomputed with the NumPy arithmetic.
torch is imported only when a device is given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = [
    "COCO_SIGMAS",
    "group_by_image",
    "nms_per_image",
    "oks_iou",
    "oks_matrix",
    "oks_nms",
    "resolve_sigmas",
    "soft_oks_nms",
]

# The COCO-17 OKS constants exactly as HRNet and pycocotools build them (``.26 / 10`` is
# one ulp away from ``0.026`` for some joints, so the literal division is kept).
# fmt: off
COCO_SIGMAS = np.array(
    [.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89]
) / 10.0
# fmt: on
COCO_SIGMAS.setflags(write=False)

# Elements of one (rows, cols, K) intermediate array: 4M float64 = 32 MiB.
_BLOCK_ELEMENTS = 1 << 22

# The device path: elements of one (images, rows, cols, K) float64 intermediate (64 MiB),
# and the distance from the threshold under which an OKS is recomputed with NumPy. torch's
# float64 exp and sum order differ from NumPy's by a few ulps (~1e-16), far inside it.
_DEVICE_BLOCK_ELEMENTS = 1 << 23
_UNCERTAIN_BAND = 1e-9


def resolve_sigmas(sigmas: np.ndarray | list | tuple | None, num_keypoints: int) -> np.ndarray:
    """The OKS sigmas as a float64 array of length ``num_keypoints``.

    ``None`` means COCO's (17 keypoints only). Sigmas equal to COCO's to 1e-9 (such as
    the ``0.026, ...`` of ``keypoint_specs/coco.yaml``) become :data:`COCO_SIGMAS`, the
    array HRNet and pycocotools divide out of ``.26, ...``, so the OKS is bit-identical
    to theirs.
    """
    if sigmas is COCO_SIGMAS and num_keypoints == len(COCO_SIGMAS):
        return COCO_SIGMAS
    if sigmas is None:
        if num_keypoints != len(COCO_SIGMAS):
            raise ValueError(
                f"sigmas are required for {num_keypoints} keypoints (the default is COCO's 17)"
            )
        return COCO_SIGMAS
    out = np.asarray(sigmas, dtype=np.float64).reshape(-1)
    if len(out) != num_keypoints:
        raise ValueError(f"expected {num_keypoints} sigmas (one per keypoint), got {len(out)}")
    if not (np.isfinite(out).all() and (out > 0).all()):
        raise ValueError(f"sigmas must be finite and positive, got {out.tolist()}")
    if len(out) == len(COCO_SIGMAS) and np.allclose(out, COCO_SIGMAS, rtol=0, atol=1e-9):
        return COCO_SIGMAS
    return out


def _float(array: np.ndarray | list, name: str, ndim: int) -> np.ndarray:
    """A float array, keeping a floating input's dtype (the reference computes in it)."""
    out = np.asarray(array)
    if not np.issubdtype(out.dtype, np.floating):
        out = out.astype(np.float64)
    if out.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {out.shape}")
    return out


def _check(
    keypoints: np.ndarray, scores: np.ndarray | None, areas: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    kps = _float(keypoints, "keypoints (N, K, 3)", 3)
    if kps.shape[-1] != 3:
        raise ValueError(f"keypoints must be (N, K, 3) [x, y, score], got shape {kps.shape}")
    area = _float(areas, "areas (N,)", 1)
    score = None if scores is None else _float(scores, "scores (N,)", 1)
    for name, a in (("areas", area), ("scores", score)):
        if a is not None and len(a) != len(kps):
            raise ValueError(f"{name} has {len(a)} entries for {len(kps)} instances")
    return kps, area, score


def _oks_block(
    g: np.ndarray,
    area_g: np.ndarray,
    d: np.ndarray,
    area_d: np.ndarray,
    variances: np.ndarray,
    visibility_threshold: float | None,
) -> np.ndarray:
    """OKS of every row of ``g`` (R, K, 3) with every row of ``d`` (C, K, 3): (R, C)."""
    dx = d[None, :, :, 0] - g[:, None, :, 0]
    dy = d[None, :, :, 1] - g[:, None, :, 1]
    scale = (area_g[:, None] + area_d[None, :]) / 2 + np.spacing(1)
    # The reference's operation order: d^2 / vars / scale / 2.
    e = (dx**2 + dy**2) / variances / scale[:, :, None] / 2
    terms = np.exp(-e)
    num_keypoints = terms.shape[-1]
    if visibility_threshold is None:
        return terms.sum(axis=-1) / num_keypoints
    mask = (g[:, None, :, 2] > visibility_threshold) & (d[None, :, :, 2] > visibility_threshold)
    mask = mask.reshape(-1, num_keypoints)
    terms = terms.reshape(-1, num_keypoints)
    counts = mask.sum(axis=-1)
    # The reference sums the selected keypoints as a fresh 1-D array (np.sum: pairwise).
    # Selected values are moved to the front of their row, in order, and the rows with
    # ``m`` of them are summed as a contiguous (rows, m) array, whose per-row sums are
    # the same numbers (a masked full-length sum would group the additions differently).
    front = np.argsort(~mask, axis=-1, kind="stable")
    packed = np.take_along_axis(terms, front, axis=-1)
    out = np.zeros(len(counts), dtype=np.float64)
    for m in np.unique(counts[counts > 0]).tolist():
        rows = counts == m
        out[rows] = np.ascontiguousarray(packed[rows, :m]).sum(axis=-1) / m
    return out.reshape(len(g), len(d))


def _row_block(num_cols: int, num_keypoints: int) -> int:
    return max(1, _BLOCK_ELEMENTS // max(1, num_cols * num_keypoints))


def oks_matrix(
    keypoints_a: np.ndarray,
    areas_a: np.ndarray,
    keypoints_b: np.ndarray,
    areas_b: np.ndarray,
    sigmas: np.ndarray | None = None,
    visibility_threshold: float | None = None,
) -> np.ndarray:
    """Pairwise OKS (A, B) of people ``a`` (A, K, 3) and ``b`` (B, K, 3) [x, y, score].

    Entry ``[i, j]`` equals HRNet's ``oks_iou(g=a[i], d=b[j], a_g=areas_a[i], a_d=areas_b[j])``;
    computed in row blocks of bounded memory.
    """
    a, area_a, _ = _check(keypoints_a, None, areas_a)
    b, area_b, _ = _check(keypoints_b, None, areas_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"keypoint counts differ: {a.shape[1]} and {b.shape[1]}")
    variances = (resolve_sigmas(sigmas, a.shape[1]) * 2) ** 2
    out = np.empty((len(a), len(b)), dtype=np.float64)
    if len(a) == 0 or len(b) == 0:
        return out
    step = _row_block(len(b), a.shape[1])
    for s in range(0, len(a), step):
        out[s : s + step] = _oks_block(
            a[s : s + step], area_a[s : s + step], b, area_b, variances, visibility_threshold
        )
    return out


def oks_iou(
    g: np.ndarray,
    d: np.ndarray,
    area_g: float,
    areas_d: np.ndarray,
    sigmas: np.ndarray | None = None,
    visibility_threshold: float | None = None,
) -> np.ndarray:
    """OKS (M,) of one person ``g`` (K, 3) with people ``d`` (M, K, 3), as HRNet's ``oks_iou``.

    With ``visibility_threshold`` only the keypoints scoring above it in both people count
    (mmpose's reading; HRNet's ``list(vg > t) and list(vd > t)`` keeps only ``d``'s mask).
    """
    g = np.asarray(g)
    area = np.asarray(areas_d)
    return oks_matrix(
        g[None], np.asarray([area_g], dtype=area.dtype), d, area, sigmas, visibility_threshold
    )[0]


def _score_order(scores: np.ndarray) -> np.ndarray:
    """Descending score order, ties as the reference: ``np.argsort(scores)[::-1]``."""
    return np.argsort(scores)[::-1]


def oks_nms(
    keypoints: np.ndarray,
    scores: np.ndarray,
    areas: np.ndarray,
    sigmas: np.ndarray | None = None,
    threshold: float = 0.9,
    visibility_threshold: float | None = None,
) -> np.ndarray:
    """Greedy OKS-NMS of one image's people; the kept indices in descending score order.

    Args:
        keypoints: (N, K, 3) [x, y, score] in image pixels.
        scores: (N,) instance scores (HRNet: the rescored box score).
        areas: (N,) OKS scales (HRNet: the padded box ``w * h``).
        sigmas: (K,) OKS constants; ``None`` for COCO's.
        threshold: a person is dropped when its OKS with a kept one is above it.
        visibility_threshold: see :func:`oks_iou`.

    Returns:
        Indices into the inputs (intp), the same list as HRNet's ``oks_nms``.
    """
    kps, area, score = _check(keypoints, scores, areas)
    n = len(kps)
    if n == 0:
        return np.zeros(0, dtype=np.intp)
    order = _score_order(score)
    if n == 1:
        return order.astype(np.intp)
    kps, area = kps[order], area[order]
    variances = (resolve_sigmas(sigmas, kps.shape[1]) * 2) ** 2
    suppressed = np.zeros(n, dtype=bool)
    step = _row_block(n, kps.shape[1])
    for s in range(0, n, step):
        e = min(n, s + step)
        if suppressed[s:e].all():
            continue
        ovr = _oks_block(kps[s:e], area[s:e], kps[s:], area[s:], variances, visibility_threshold)
        # Who each row would suppress among the later people (NaN suppresses, as in the reference).
        hits = np.triu(~(ovr <= threshold), k=1)
        hits[suppressed[s:e]] = False
        for r in np.flatnonzero(hits.any(axis=1)):
            if not suppressed[s + r]:
                suppressed[s:] |= hits[r]
    return order[~suppressed].astype(np.intp)


def soft_oks_nms(
    keypoints: np.ndarray,
    scores: np.ndarray,
    areas: np.ndarray,
    sigmas: np.ndarray | None = None,
    threshold: float = 0.9,
    visibility_threshold: float | None = None,
    max_dets: int = 20,
) -> np.ndarray:
    """Soft OKS-NMS of one image's people, as HRNet's ``soft_oks_nms`` (Gaussian rescoring).

    Repeatedly keeps the best-scoring person and decays the others' scores by
    ``exp(-oks^2 / threshold)``, at most ``max_dets`` times (HRNet's 20). Returns the
    kept indices in the order they were kept; the decayed scores are not returned
    (HRNet writes the undecayed ones).
    """
    kps, area, score = _check(keypoints, scores, areas)
    n = len(kps)
    if n == 0 or max_dets <= 0:
        return np.zeros(0, dtype=np.intp)
    sigma = resolve_sigmas(sigmas, kps.shape[1])
    full = n * n * kps.shape[1] <= _BLOCK_ELEMENTS
    ovr_all = oks_matrix(kps, area, kps, area, sigma, visibility_threshold) if full else None
    order = _score_order(score)
    score = score[order]
    keep: list[int] = []
    while order.size > 0 and len(keep) < max_dets:
        i = order[0]
        order = order[1:]
        if ovr_all is not None:
            ovr = ovr_all[i, order]
        else:
            ovr = oks_matrix(
                kps[i : i + 1],
                area[i : i + 1],
                kps[order],
                area[order],
                sigma,
                visibility_threshold,
            )[0]
        score = score[1:] * np.exp(-(ovr**2) / threshold)
        tmp = _score_order(score)
        order, score = order[tmp], score[tmp]
        keep.append(int(i))
    return np.asarray(keep, dtype=np.intp)


def group_by_image(image_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows grouped by image: images in order of first appearance, rows in input order.

    Returns ``(perm, bounds)``: the rows of image ``g`` are ``perm[bounds[g]:bounds[g + 1]]``
    (HRNet's ``defaultdict`` grouping, without a per-row Python loop).
    """
    ids = np.asarray(image_ids).reshape(-1)
    if len(ids) == 0:
        return np.zeros(0, dtype=np.intp), np.zeros(1, dtype=np.intp)
    _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.intp)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    group = rank[inverse.reshape(-1)]
    perm = np.argsort(group, kind="stable").astype(np.intp)
    counts = np.bincount(group, minlength=len(first))
    bounds = np.concatenate(([0], np.cumsum(counts))).astype(np.intp)
    return perm, bounds


def nms_per_image(
    image_ids: np.ndarray,
    keypoints: np.ndarray,
    scores: np.ndarray,
    areas: np.ndarray,
    sigmas: np.ndarray | None = None,
    threshold: float = 0.9,
    soft: bool = False,
    visibility_threshold: float | None = None,
    max_dets: int = 20,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """OKS-NMS (or soft OKS-NMS) within each image of a whole result set.

    Returns indices into the inputs: images in order of first appearance, and within
    an image the kept people in the order NMS keeps them (HRNet's ``evaluate``). An
    image where NMS keeps nobody keeps everyone, as HRNet does.

    ``device`` (``"cuda"``, ``"cpu"``, a ``torch.device``) runs the greedy OKS-NMS of all
    images at once in torch on that device, with the same result (module docstring);
    ``None`` runs it in NumPy, image by image. Soft OKS-NMS always runs in NumPy.
    """
    kps, area, score = _check(keypoints, scores, areas)
    ids = np.asarray(image_ids).reshape(-1)
    if len(ids) != len(kps):
        raise ValueError(f"image_ids has {len(ids)} entries for {len(kps)} instances")
    sigma = resolve_sigmas(sigmas, kps.shape[1])
    if device is not None and not soft:
        return _nms_per_image_torch(
            ids, kps, score, area, sigma, threshold, visibility_threshold, device
        )
    perm, bounds = group_by_image(ids)
    kept = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        rows = perm[a:b]
        if soft:
            keep = soft_oks_nms(
                kps[rows], score[rows], area[rows], sigma, threshold, visibility_threshold, max_dets
            )
        else:
            keep = oks_nms(
                kps[rows], score[rows], area[rows], sigma, threshold, visibility_threshold
            )
        kept.append(rows[keep] if len(keep) else rows)
    return np.concatenate(kept).astype(np.intp) if kept else np.zeros(0, dtype=np.intp)


# ----------------------------------------------------------------------------- on a device


def _grouped_score_order(
    group: np.ndarray, score: np.ndarray, perm: np.ndarray, bounds: np.ndarray
) -> np.ndarray:
    """Rows grouped by image (``group`` ascending), each image's rows by descending score.

    One stable sort for all images. Where an image has tied or NaN scores the order
    among them is NumPy's (``np.argsort(scores)[::-1]``, whose tie order depends on its
    sorting algorithm), so those images take :func:`_score_order` itself.
    """
    order = np.lexsort((-score, group))
    ordered_group, ordered_score = group[order], score[order]
    tied = (ordered_group[1:] == ordered_group[:-1]) & (ordered_score[1:] == ordered_score[:-1])
    irregular = np.union1d(ordered_group[1:][tied], ordered_group[np.isnan(ordered_score)])
    for g in irregular.tolist():  # images with ties or NaN only: rare
        a, b = bounds[g], bounds[g + 1]
        rows = perm[a:b]
        order[a:b] = rows[_score_order(score[rows])]
    return order


def _recompute_near_threshold(
    pairs: np.ndarray,
    kps: np.ndarray,
    area: np.ndarray,
    variances: np.ndarray,
    visibility_threshold: float | None,
    threshold: float,
) -> np.ndarray:
    """Whether row ``i`` suppresses row ``j`` for each ``(i, j)`` of ``pairs``, in NumPy.

    :func:`_oks_block` on one pair gives the very number :func:`oks_nms` compares (its
    value for a pair does not depend on the other rows of the block).
    """
    out = np.empty(len(pairs), dtype=bool)
    for p, (i, j) in enumerate(pairs.tolist()):
        ovr = _oks_block(
            kps[i : i + 1], area[i : i + 1], kps[j : j + 1], area[j : j + 1],
            variances, visibility_threshold,
        )  # fmt: skip
        out[p] = not ovr[0, 0] <= threshold
    return out


def _nms_per_image_torch(
    ids: np.ndarray,
    kps: np.ndarray,
    score: np.ndarray,
    area: np.ndarray,
    sigma: np.ndarray,
    threshold: float,
    visibility_threshold: float | None,
    device: Any,
) -> np.ndarray:
    """Greedy OKS-NMS of every image at once in torch; the indices :func:`nms_per_image` returns.

    Images with at least two people are sorted by their count and padded into batches
    of ``(images, M)`` rows, ``M`` the largest count in the batch. Per batch the OKS of
    every ordered pair of an image is one broadcast expression, and the greedy pass
    walks the rank ``r = 0 .. M - 1`` once for all images: row ``r`` of an image, if
    not yet suppressed, suppresses the later rows it overlaps.
    """
    import torch

    n = len(kps)
    if n == 0:
        return np.zeros(0, dtype=np.intp)
    perm, bounds = group_by_image(ids)
    counts = np.diff(bounds)
    group = np.empty(n, dtype=np.intp)
    group[perm] = np.repeat(np.arange(len(counts)), counts)
    order = _grouped_score_order(group, score, perm, bounds)
    keep = np.ones(n, dtype=bool)  # by position in ``order``
    multi = np.flatnonzero(counts >= 2)
    if len(multi) == 0:
        return order.astype(np.intp)
    multi = multi[np.argsort(counts[multi], kind="stable")]
    dev = torch.device(device)
    num_keypoints = kps.shape[1]
    variances = (sigma * 2) ** 2
    kps_t = torch.from_numpy(np.ascontiguousarray(kps)).to(dev)
    area_t = torch.from_numpy(np.ascontiguousarray(area)).to(dev)
    var_t = torch.from_numpy(variances).to(dev)
    order_t = torch.from_numpy(order).to(dev)
    start = 0
    while start < len(multi):
        # As many images as fit the element budget at the largest count among them.
        stop = start + 1
        while stop < len(multi):
            m = counts[multi[stop]]
            if (stop + 1 - start) * m * m * num_keypoints > _DEVICE_BLOCK_ELEMENTS:
                break
            stop += 1
        groups = multi[start:stop]
        start = stop
        width = int(counts[groups[-1]])
        rank = np.arange(width)
        positions = bounds[groups][:, None] + rank  # (G, M) positions in ``order``
        valid = rank < counts[groups][:, None]
        positions = np.where(valid, positions, bounds[groups][:, None])  # padding: any row
        pos_t = torch.from_numpy(positions).to(dev)
        valid_t = torch.from_numpy(valid).to(dev)
        rows_t = order_t[pos_t]
        hits_t, near = _suppression_hits(
            kps_t[rows_t], area_t[rows_t], valid_t, var_t, threshold, visibility_threshold
        )
        if near is not None:
            g, i, j = (t.cpu().numpy() for t in near)
            pairs = np.stack((order[positions[g, i]], order[positions[g, j]]), axis=1)
            decided = _recompute_near_threshold(
                pairs, kps, area, variances, visibility_threshold, threshold
            )
            hits_t[near] = torch.from_numpy(decided).to(dev)
        suppressed = torch.zeros(valid.shape, dtype=torch.bool, device=dev)
        # Only the ranks that overlap someone matter; one host sync per batch.
        for r in torch.nonzero(hits_t.any(dim=2).any(dim=0)).flatten().tolist():
            alive = ~suppressed[:, r]
            suppressed |= hits_t[:, r, :] & alive[:, None]
        kept = (valid_t & ~suppressed).cpu().numpy()
        keep[positions[valid]] = kept[valid]
    return order[keep].astype(np.intp)


def _suppression_hits(
    people: torch.Tensor,
    areas: torch.Tensor,
    valid: torch.Tensor,
    variances: torch.Tensor,
    threshold: float,
    visibility_threshold: float | None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
    """``hits[g, i, j]``: rank ``i`` of image ``g`` would suppress its later rank ``j``.

    ``people`` (G, M, K, 3) in score order, ``areas`` (G, M), ``valid`` (G, M). The OKS
    is :func:`_oks_block`'s arithmetic in torch (the keypoints' dtype for the squared
    distances, float64 from the division on), in row blocks of bounded memory. Returns
    ``hits`` and ``near``: the ``(g, i, j)`` index tensors of the pairs whose OKS lies
    within ``_UNCERTAIN_BAND`` of the threshold (None when there are none).
    """
    import torch

    num_groups, width, num_keypoints = people.shape[:3]
    later = torch.ones(width, width, dtype=torch.bool, device=people.device).triu(1)
    pairs = later & valid[:, :, None] & valid[:, None, :]
    hits = torch.zeros(num_groups, width, width, dtype=torch.bool, device=people.device)
    near = torch.zeros_like(hits)
    step = max(1, _DEVICE_BLOCK_ELEMENTS // max(1, num_groups * width * num_keypoints))
    eps = float(np.spacing(1))
    for s in range(0, width, step):
        g = people[:, s : s + step, None]  # (G, b, 1, K, 3): the kept candidate
        d = people[:, None, :]  # (G, 1, M, K, 3): the others
        dx = d[..., 0] - g[..., 0]
        dy = d[..., 1] - g[..., 1]
        scale = ((areas[:, s : s + step, None] + areas[:, None, :]) / 2).double() + eps
        e = (dx * dx + dy * dy).double() / variances / scale[..., None] / 2
        terms = torch.exp(-e)
        if visibility_threshold is None:
            ovr = terms.sum(dim=-1) / num_keypoints
        else:
            mask = (g[..., 2] > visibility_threshold) & (d[..., 2] > visibility_threshold)
            count = mask.sum(dim=-1)
            total = torch.where(mask, terms, 0.0).sum(dim=-1)
            ovr = torch.where(count > 0, total / count.clamp_min(1), 0.0)
        block = pairs[:, s : s + step]
        # ``not <=``: a NaN OKS suppresses, as in the reference.
        hits[:, s : s + step] = ~(ovr <= threshold) & block
        near[:, s : s + step] = ((ovr - threshold).abs() < _UNCERTAIN_BAND) & block
    found = near.nonzero(as_tuple=True) if bool(near.any()) else None
    return hits, found
