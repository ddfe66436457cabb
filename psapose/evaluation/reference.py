"""Per-instance NumPy ports of the official post-processing and evaluation code.

psapose's codecs and evaluation are batched and vectorised; these ports restate, loop for
loop, the code they must agree with, so that the tests (``tests/test_codecs.py``,
``tests/test_evaluation.py``) and the evaluation benchmark (``psapose/benchmarks/eval.py``) check the
fast paths against one copy of the reference:

* HRNet (leoxiaobin/deep-high-resolution-net.pytorch): ``lib/core/inference.py``
  (``get_max_preds``, ``get_final_preds``), ``lib/utils/transforms.py`` (``flip_back``,
  ``transform_preds``), ``lib/dataset/coco.py`` (``COCODataset.evaluate``) and
  ``lib/nms/nms.py`` (``oks_iou``, ``oks_nms``, ``rescore``, ``soft_oks_nms``);
* DarkPose (ilovepose/DarkPose): ``lib/core/inference.py`` (``gaussian_blur``, ``taylor``,
  ``get_final_preds``);
* mmpose: ``gaussian_blur`` and ``refine_keypoints_dark_udp`` (per joint);
* pycocotools' stock ``COCOeval``, as HRNet's ``_do_python_keypoint_eval`` runs it.

cv2 does the blurs. Not used by training or inference: a reference, slow on purpose.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np

from .coco_eval import STAT_NAMES

# HRNet's default OKS sigmas (lib/nms/nms.py), used where a caller passes none.
_HRNET_SIGMAS = (
    np.array(
        [0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07]
        + [0.87, 0.87, 0.89, 0.89]
    )
    / 10.0
)


# ============================================================================ heatmap decoding
def get_max_preds(batch_heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HRNet inference.get_max_preds: (N, K, H, W) -> float32 (N, K, 2) peaks, (N, K, 1) values."""
    batch_size, num_joints, _, width = batch_heatmaps.shape
    heatmaps_reshaped = batch_heatmaps.reshape((batch_size, num_joints, -1))
    idx = np.argmax(heatmaps_reshaped, 2)
    maxvals = np.amax(heatmaps_reshaped, 2).reshape((batch_size, num_joints, 1))
    idx = idx.reshape((batch_size, num_joints, 1))
    preds = np.tile(idx, (1, 1, 2)).astype(np.float32)
    preds[:, :, 0] = (preds[:, :, 0]) % width
    preds[:, :, 1] = np.floor((preds[:, :, 1]) / width)
    pred_mask = np.tile(np.greater(maxvals, 0.0), (1, 1, 2)).astype(np.float32)
    preds *= pred_mask
    return preds, maxvals


def hrnet_final_preds(batch_heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HRNet get_final_preds with POST_PROCESS, in heatmap pixels (float32 coordinates)."""
    coords, maxvals = get_max_preds(batch_heatmaps)
    heatmap_height, heatmap_width = batch_heatmaps.shape[2:]
    for n in range(coords.shape[0]):
        for p in range(coords.shape[1]):
            hm = batch_heatmaps[n][p]
            px = int(math.floor(coords[n][p][0] + 0.5))
            py = int(math.floor(coords[n][p][1] + 0.5))
            if 1 < px < heatmap_width - 1 and 1 < py < heatmap_height - 1:
                diff = np.array([hm[py][px + 1] - hm[py][px - 1], hm[py + 1][px] - hm[py - 1][px]])
                coords[n][p] += np.sign(diff) * 0.25
    return coords, maxvals[..., 0]


def gaussian_blur_f64(heatmaps: np.ndarray, kernel: int) -> np.ndarray:
    """mmpose/DarkPose gaussian_blur (zero padding, rescale to the original max) in float64.

    DarkPose blurs a float64 copy; mmpose a float32 one. The ports stay in float64 after
    it: float32 rounding alone moves a Taylor step by up to ~1e-2 px where the log-Hessian
    is nearly singular, and the codecs do this part in float64 too.
    """
    heatmaps = heatmaps.astype(np.float64)
    border = (kernel - 1) // 2
    K, H, W = heatmaps.shape
    for k in range(K):
        origin_max = np.max(heatmaps[k])
        dr = np.zeros((H + 2 * border, W + 2 * border))
        dr[border:-border, border:-border] = heatmaps[k].copy()
        dr = cv2.GaussianBlur(dr, (kernel, kernel), 0)
        heatmaps[k] = dr[border:-border, border:-border].copy()
        # 0 / 0 for an all-zero map, as the reference
        with np.errstate(invalid="ignore", divide="ignore"):
            heatmaps[k] *= origin_max / np.max(heatmaps[k])
    return heatmaps


def darkpose_taylor(hm: np.ndarray, coord: np.ndarray) -> np.ndarray:
    """DarkPose inference.taylor: one Newton step on a log heatmap (H, W), added to ``coord``.

    ``coord`` is updated in place in its own dtype (float32 in DarkPose, float64 where a
    caller wants no rounding) and returned.
    """
    heatmap_height, heatmap_width = hm.shape
    px, py = int(coord[0]), int(coord[1])
    if 1 < px < heatmap_width - 2 and 1 < py < heatmap_height - 2:
        dx = 0.5 * (hm[py][px + 1] - hm[py][px - 1])
        dy = 0.5 * (hm[py + 1][px] - hm[py - 1][px])
        dxx = 0.25 * (hm[py][px + 2] - 2 * hm[py][px] + hm[py][px - 2])
        dxy = 0.25 * (hm[py + 1][px + 1] - hm[py - 1][px + 1] - hm[py + 1][px - 1] + hm[py - 1][px - 1])  # fmt: skip
        dyy = 0.25 * (hm[py + 2][px] - 2 * hm[py][px] + hm[py - 2][px])
        derivative = np.array([[dx], [dy]])
        hessian = np.array([[dxx, dxy], [dxy, dyy]])
        if dxx * dyy - dxy**2 != 0:
            offset = -np.linalg.inv(hessian) @ derivative
            coord += offset[:, 0]
    return coord


def darkpose_final_preds(batch_heatmaps: np.ndarray, kernel: int) -> tuple[np.ndarray, np.ndarray]:
    """DarkPose get_final_preds (blur, log, taylor), in heatmap pixels (float32 coordinates)."""
    coords, maxvals = get_max_preds(batch_heatmaps)
    hm = np.stack([gaussian_blur_f64(h, kernel) for h in batch_heatmaps])
    hm = np.log(np.maximum(hm, 1e-10))
    for n in range(coords.shape[0]):
        for p in range(coords.shape[1]):
            darkpose_taylor(hm[n][p], coords[n][p])
    return coords, maxvals[..., 0]


def hrnet_flip_back(
    output_flipped: np.ndarray, flip_pairs: Iterable[tuple[int, int]], shift: bool = True
) -> np.ndarray:
    """HRNet utils.transforms.flip_back (N, K, H, W), then the test-time one-pixel shift.

    The input is left untouched; ``shift=False`` for UDP, which flips without the shift.
    """
    output_flipped = output_flipped[:, :, :, ::-1].copy()
    for a, b in flip_pairs:
        tmp = output_flipped[:, a, :, :].copy()
        output_flipped[:, a, :, :] = output_flipped[:, b, :, :]
        output_flipped[:, b, :, :] = tmp
    if shift:
        output_flipped[:, :, :, 1:] = output_flipped.copy()[:, :, :, 0:-1]
    return output_flipped


# Per-instance decoders (K, H, W) -> float64 (K, 2) heatmap pixels and float32 (K,) scores, as
# the benchmark's reference runs them one box at a time. Coordinates stay float64 after the
# integer peak: rounding happens once, in ``ref_to_input``, where psapose's decode rounds.
def ref_decode_msra(hm: np.ndarray, kernel: int) -> tuple[np.ndarray, np.ndarray]:
    """HRNet get_final_preds post-processing: a quarter pixel toward the higher neighbour."""
    coords, maxvals = hrnet_final_preds(hm[None])
    return coords[0].astype(np.float64), maxvals[0]


def ref_decode_dark(hm: np.ndarray, kernel: int) -> tuple[np.ndarray, np.ndarray]:
    """DarkPose get_final_preds: blur, log(max(hm, 1e-10)), taylor() per joint."""
    coords, maxvals = get_max_preds(hm[None])
    coords = coords[0].astype(np.float64)
    logs = np.log(np.maximum(gaussian_blur_f64(hm, kernel), 1e-10))
    for p in range(len(coords)):
        darkpose_taylor(logs[p], coords[p])
    return coords, maxvals[0, :, 0]


def ref_decode_udp(hm: np.ndarray, kernel: int) -> tuple[np.ndarray, np.ndarray]:
    """mmpose refine_keypoints_dark_udp per joint (blur, clip, log, edge pad, Newton step)."""
    coords, maxvals = get_max_preds(hm[None])
    coords, maxvals = coords[0].astype(np.float64), maxvals[0, :, 0]
    logs = np.log(np.clip(gaussian_blur_f64(hm, kernel), 1e-3, 50.0))
    padded = np.pad(logs, ((0, 0), (1, 1), (1, 1)), mode="edge")
    eps = np.finfo(np.float32).eps * np.eye(2)
    for p in range(len(coords)):
        if maxvals[p] <= 0:
            continue
        m = padded[p]
        x, y = int(coords[p][0]) + 1, int(coords[p][1]) + 1
        i_, ix1, iy1, ix1y1 = m[y, x], m[y, x + 1], m[y + 1, x], m[y + 1, x + 1]
        ix1_y1_, ix1_, iy1_ = m[y - 1, x - 1], m[y, x - 1], m[y - 1, x]
        dx = 0.5 * (ix1 - ix1_)
        dy = 0.5 * (iy1 - iy1_)
        dxx = ix1 - 2 * i_ + ix1_
        dyy = iy1 - 2 * i_ + iy1_
        dxy = 0.5 * (ix1y1 - ix1 - iy1 + i_ + i_ - ix1_ - iy1_ + ix1_y1_)
        hessian = np.array([[dxx, dxy], [dxy, dyy]]) + eps
        if np.linalg.det(hessian) != 0:
            coords[p] -= np.linalg.inv(hessian) @ np.array([dx, dy])
    return coords, maxvals


REF_DECODERS = {"udp": ref_decode_udp, "dark": ref_decode_dark, "msra": ref_decode_msra}


# ============================================================================ to image pixels
def ref_to_input(
    coords: np.ndarray, input_size: Sequence[int], heatmap_size: Sequence[int], udp: bool
) -> np.ndarray:
    """Heatmap -> input-crop pixels, rounded to float32 where psapose's ``codec.decode`` rounds.

    HRNet keeps float32 coordinates in heatmap and image pixels; psapose returns them
    in float32 input-crop pixels. Rounding at the same place keeps the two paths'
    keypoints within float64 noise, so no OKS match can flip between them.
    """
    size_in, size_hm = np.asarray(input_size, float), np.asarray(heatmap_size, float)
    num, den = (size_hm - 1, size_in - 1) if udp else (size_hm, size_in)
    return (coords * den / num).astype(np.float32).astype(np.float64)


def ref_transform_preds(
    coords: np.ndarray,
    center: np.ndarray,
    scale: np.ndarray,
    output_size: Sequence[int],
    udp: bool,
) -> np.ndarray:
    """HRNet transform_preds: each joint through the inverse affine, one at a time."""
    target = np.zeros(coords.shape)
    trans = _exact_affine(center, scale, output_size, udp)
    for p in range(coords.shape[0]):
        target[p, 0:2] = np.dot(trans, np.array([coords[p, 0], coords[p, 1], 1.0]))
    return target


def _exact_affine(center, scale, output_size, udp: bool) -> np.ndarray:
    # HRNet builds the matrix with cv2.getAffineTransform on float32 points, which rounds
    # it to ~1e-5 px; the same map from the centre and scale in float64, as crop_to_image.
    w_out, h_out = output_size
    if udp:
        sx, sy = scale[0] / (w_out - 1.0), scale[1] / (h_out - 1.0)
        ox, oy = center[0] - scale[0] * 0.5, center[1] - scale[1] * 0.5
    else:
        sx = sy = scale[0] / w_out
        ox, oy = center[0] - w_out * 0.5 * sx, center[1] - h_out * 0.5 * sy
    return np.array([[sx, 0.0, ox], [0.0, sy, oy]])


# ============================================================================ OKS-NMS, rescoring
# HRNet lib/nms/nms.py, per instance. ``in_vis_thre`` follows mmpose's reading
# ((vg > t) & (vd > t)); HRNet's literal ``list(vg > t) and list(vd > t)`` keeps vd's mask only.


def ref_oks_iou(
    g: np.ndarray,
    d: np.ndarray,
    a_g: float,
    a_d: np.ndarray,
    sigmas: np.ndarray | None = None,
    in_vis_thre: float | None = None,
) -> np.ndarray:
    """HRNet lib/nms/nms.py oks_iou."""
    if not isinstance(sigmas, np.ndarray):
        sigmas = _HRNET_SIGMAS
    variances = (sigmas * 2) ** 2
    xg = g[0::3]
    yg = g[1::3]
    vg = g[2::3]
    ious = np.zeros(d.shape[0])
    for n_d in range(0, d.shape[0]):
        xd = d[n_d, 0::3]
        yd = d[n_d, 1::3]
        vd = d[n_d, 2::3]
        dx = xd - xg
        dy = yd - yg
        e = (dx**2 + dy**2) / variances / ((a_g + a_d[n_d]) / 2 + np.spacing(1)) / 2
        if in_vis_thre is not None:
            ind = list((vg > in_vis_thre) & (vd > in_vis_thre))
            e = e[ind]
        ious[n_d] = np.sum(np.exp(-e)) / e.shape[0] if e.shape[0] != 0 else 0.0
    return ious


def _db_arrays(kpts_db: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores, flattened keypoints and areas of a ``kpts_db``, as both HRNet NMS functions read them."""
    scores = np.array([kpts_db[i]["score"] for i in range(len(kpts_db))])
    kpts = np.array([kpts_db[i]["keypoints"].flatten() for i in range(len(kpts_db))])
    areas = np.array([kpts_db[i]["area"] for i in range(len(kpts_db))])
    return scores, kpts, areas


def ref_oks_nms(
    kpts_db: list[dict],
    thresh: float,
    sigmas: np.ndarray | None = None,
    in_vis_thre: float | None = None,
) -> list:
    """HRNet lib/nms/nms.py oks_nms."""
    if len(kpts_db) == 0:
        return []
    scores, kpts, areas = _db_arrays(kpts_db)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        oks_ovr = ref_oks_iou(
            kpts[i], kpts[order[1:]], areas[i], areas[order[1:]], sigmas, in_vis_thre
        )
        inds = np.where(oks_ovr <= thresh)[0]
        order = order[inds + 1]
    return keep


def ref_rescore(
    overlap: np.ndarray, scores: np.ndarray, thresh: float, type: str = "gaussian"
) -> np.ndarray:
    """HRNet lib/nms/nms.py rescore (soft-NMS's score decay)."""
    assert overlap.shape[0] == scores.shape[0]
    if type == "linear":
        inds = np.where(overlap >= thresh)[0]
        scores[inds] = scores[inds] * (1 - overlap[inds])
    else:
        scores = scores * np.exp(-(overlap**2) / thresh)
    return scores


def ref_soft_oks_nms(
    kpts_db: list[dict],
    thresh: float,
    sigmas: np.ndarray | None = None,
    in_vis_thre: float | None = None,
    max_dets: int = 20,
) -> np.ndarray | list:
    """HRNet lib/nms/nms.py soft_oks_nms."""
    if len(kpts_db) == 0:
        return []
    scores, kpts, areas = _db_arrays(kpts_db)
    order = scores.argsort()[::-1]
    scores = scores[order]
    keep = np.zeros(max_dets, dtype=np.intp)
    keep_cnt = 0
    while order.size > 0 and keep_cnt < max_dets:
        i = order[0]
        oks_ovr = ref_oks_iou(
            kpts[i], kpts[order[1:]], areas[i], areas[order[1:]], sigmas, in_vis_thre
        )
        order = order[1:]
        scores = ref_rescore(oks_ovr, scores[1:], thresh)
        tmp = scores.argsort()[::-1]
        order = order[tmp]
        scores = scores[tmp]
        keep[keep_cnt] = i
        keep_cnt += 1
    return keep[:keep_cnt]


# ============================================================================ results, COCOeval
def ref_evaluate(
    preds: np.ndarray,
    areas: np.ndarray,
    box_scores: np.ndarray,
    image_ids: np.ndarray,
    sigmas: np.ndarray | None = None,
    soft: bool = False,
    score_dtype: type | None = None,
) -> list[dict]:
    """HRNet COCODataset.evaluate up to the results list (in_vis_thre 0.2, oks_thre 0.9).

    ``score_dtype``: the dtype the keypoint scores are summed in. HRNet's prediction array
    is float32, so its scores sum in float32; pass ``np.float32`` where ``preds`` holds
    float32 scores in a float64 array (None: ``preds``' own dtype).
    """
    num_joints, in_vis_thre, oks_thre = preds.shape[1], 0.2, 0.9
    kpts = defaultdict(list)
    for idx, kpt in enumerate(preds):
        kpts[int(image_ids[idx])].append(
            {
                "keypoints": kpt,
                "area": areas[idx],
                "score": box_scores[idx],
                "image": image_ids[idx],
            }
        )
    oks_nmsed_kpts = []
    for img in kpts.keys():
        img_kpts = kpts[img]
        for n_p in img_kpts:
            box_score = n_p["score"]
            kpt_score = 0
            valid_num = 0
            for n_jt in range(0, num_joints):
                t_s = n_p["keypoints"][n_jt][2]
                if score_dtype is not None:
                    t_s = score_dtype(t_s)
                if t_s > in_vis_thre:
                    kpt_score = kpt_score + t_s
                    valid_num = valid_num + 1
            if valid_num != 0:
                kpt_score = kpt_score / valid_num
            n_p["score"] = kpt_score * box_score
        nms = ref_soft_oks_nms if soft else ref_oks_nms
        keep = nms(list(img_kpts), oks_thre, sigmas)
        if len(keep) == 0:
            oks_nmsed_kpts.append(img_kpts)
        else:
            oks_nmsed_kpts.append([img_kpts[_keep] for _keep in keep])
    results = []
    for img_kpts in oks_nmsed_kpts:
        _key_points = np.array([img_kpts[k]["keypoints"] for k in range(len(img_kpts))])
        key_points = np.zeros((_key_points.shape[0], num_joints * 3), dtype=np.float64)
        for ipt in range(num_joints):
            key_points[:, ipt * 3 + 0] = _key_points[:, ipt, 0]
            key_points[:, ipt * 3 + 1] = _key_points[:, ipt, 1]
            key_points[:, ipt * 3 + 2] = _key_points[:, ipt, 2]
        results.extend(
            {
                "image_id": int(img_kpts[k]["image"]),
                "category_id": 1,
                "keypoints": list(key_points[k]),
                "score": float(img_kpts[k]["score"]),
            }
            for k in range(len(img_kpts))
        )
    return results


def ref_cocoeval(gt_file: Path, results: list[dict]) -> dict[str, float]:
    """Stock pycocotools, as HRNet's _do_python_keypoint_eval (the results written to JSON)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(gt_file))
        coco_dt = coco.loadRes(results)
        coco_eval = COCOeval(coco, coco_dt, "keypoints")
        coco_eval.params.useSegm = None
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return {name: float(v) for name, v in zip(STAT_NAMES, coco_eval.stats, strict=True)}
