"""COCO keypoint results and their evaluation with pycocotools.

The path of HRNet's ``COCODataset.evaluate`` (``lib/dataset/coco.py``), on arrays:

1. :func:`rescore`: box score x mean of the keypoint scores above 0.2;
2. per-image OKS-NMS at 0.9 (or soft OKS-NMS) with the padded box areas (:mod:`.nms`);
3. :func:`keypoint_results`: the COCO results list (``image_id``, ``category_id``,
   flat ``keypoints``, ``score``), in HRNet's order;
4. :func:`evaluate_keypoints`: ``COCOeval(iouType='keypoints')`` and its ten numbers
   (by default through :mod:`.fast_cocoeval`, the same numbers without its Python loops).

Plus the file side: :func:`write_results`, :func:`write_test_dev_results` (the
evaluation server's file name and zip), :func:`load_results`, and
:func:`ground_truth_results` (an annotation file written as results, which must
score AP 1.0).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .nms import group_by_image, nms_per_image, resolve_sigmas

__all__ = [
    "STAT_NAMES",
    "ResultArrays",
    "evaluate_keypoints",
    "format_table",
    "ground_truth_results",
    "keypoint_category",
    "keypoint_results",
    "load_results",
    "rescore",
    "results_to_arrays",
    "test_dev_file_name",
    "write_results",
    "write_test_dev_results",
]

logger = logging.getLogger(__name__)

# COCOeval.stats for iouType 'keypoints', in its order.
STAT_NAMES = ("AP", "AP50", "AP75", "APM", "APL", "AR", "AR50", "AR75", "ARM", "ARL")
NMS_MODES = ("oks", "soft", "none")


def rescore(
    box_scores: np.ndarray, keypoint_scores: np.ndarray, threshold: float = 0.2
) -> np.ndarray:
    """HRNet's instance score: box score x the mean of the keypoint scores above ``threshold``.

    An instance with no keypoint above the threshold scores ``box_score * 0``. The sum
    runs keypoint by keypoint in the keypoint scores' dtype, as HRNet's loop does, so
    the result is bit-identical to it.

    Args:
        box_scores: (N,) detection (or ground-truth: 1) box scores.
        keypoint_scores: (N, K) per-keypoint confidences (heatmap maxima).

    Returns:
        (N,) scores.
    """
    box = np.asarray(box_scores)
    kps = np.asarray(keypoint_scores)
    if not np.issubdtype(kps.dtype, np.floating):
        kps = kps.astype(np.float64)
    if not np.issubdtype(box.dtype, np.floating):
        box = box.astype(np.float64)
    if kps.ndim != 2 or box.shape != (len(kps),):
        raise ValueError(
            f"expected box_scores (N,) and keypoint_scores (N, K), got {box.shape} and {kps.shape}"
        )
    valid = kps > threshold
    total = np.zeros(len(kps), dtype=kps.dtype)
    for k in range(kps.shape[1]):
        total += np.where(valid[:, k], kps[:, k], kps.dtype.type(0))
    count = valid.sum(axis=1)
    mean = np.zeros_like(total)
    np.divide(total, count.astype(kps.dtype), out=mean, where=count > 0)
    return mean * box


def _image_id_array(image_ids: Any, n: int) -> np.ndarray:
    ids = np.asarray(image_ids).reshape(-1)
    if len(ids) != n:
        raise ValueError(f"image_ids has {len(ids)} entries for {n} instances")
    if n and not np.issubdtype(ids.dtype, np.integer):
        as_int = ids.astype(np.int64)
        if not np.array_equal(as_int, ids):
            raise ValueError("image_ids must be integers (COCO image ids)")
        ids = as_int
    return ids


def keypoint_results(
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
) -> list[dict]:
    """The COCO keypoint results list of a set of predictions, as HRNet's ``evaluate`` writes it.

    Scores are rescored (:func:`rescore`), then ``nms`` runs within each image:
    ``"oks"`` (greedy OKS-NMS), ``"soft"`` (soft OKS-NMS, at most 20 people per image) or
    ``"none"``. Results come grouped by image in order of first appearance, each image's
    people in the order NMS keeps them (their input order for ``"none"``).

    Args:
        image_ids: (N,) COCO image id of each person.
        keypoints: (N, K, 2) x, y in image pixels.
        keypoint_scores: (N, K) keypoint confidences (written as the third value).
        box_scores: (N,) person box scores.
        areas: (N,) OKS scale for NMS: HRNet's padded box ``w * h`` (``prod(scale * 200)``).
        sigmas: (K,) OKS constants; ``None`` for COCO's.
        category_id: the results' ``category_id``.

    Returns:
        ``[{"image_id", "category_id", "keypoints": [x, y, score] * K, "score"}]``, Python
        ints and floats.
    """
    if nms not in NMS_MODES:
        raise ValueError(f"nms must be one of {', '.join(NMS_MODES)}, got {nms!r}")
    kps = np.asarray(keypoints)
    kscore = np.asarray(keypoint_scores)
    if kps.ndim != 3 or kps.shape[-1] != 2 or kscore.shape != kps.shape[:2]:
        raise ValueError(
            f"expected keypoints (N, K, 2) and keypoint_scores (N, K), got {kps.shape} and {kscore.shape}"
        )
    n, num_keypoints = kscore.shape
    ids = _image_id_array(image_ids, n)
    area = np.asarray(areas).reshape(-1)
    if len(area) != n:
        raise ValueError(f"areas has {len(area)} entries for {n} instances")
    sigma = resolve_sigmas(sigmas, num_keypoints)
    scores = rescore(box_scores, kscore, rescore_threshold)
    # HRNet's (N, K, 3) prediction array: NMS sees it in its own dtype.
    dtype = np.result_type(kps.dtype, kscore.dtype)
    if not np.issubdtype(dtype, np.floating):
        dtype = np.float64
    full = np.empty((n, num_keypoints, 3), dtype=dtype)
    full[..., :2] = kps
    full[..., 2] = kscore
    if nms == "none":
        order = group_by_image(ids)[0]
    else:
        order = nms_per_image(
            ids, full, scores, area, sigma, threshold=nms_threshold, soft=nms == "soft"
        )
    flat = full[order].astype(np.float64).reshape(len(order), 3 * num_keypoints).tolist()
    out_ids = ids[order].tolist()
    out_scores = scores[order].astype(np.float64).tolist()
    cat = int(category_id)
    return [
        {"image_id": i, "category_id": cat, "keypoints": k, "score": s}
        for i, k, s in zip(out_ids, flat, out_scores, strict=True)
    ]


# ----------------------------------------------------------------------------- files


def write_results(results: list[dict], path: str | os.PathLike) -> Path:
    """Write a COCO results list as JSON (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        json.dump(results, f)
    return path


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def test_dev_file_name(name: str) -> str:
    """``person_keypoints_test-dev2017_<name>_results.json``, the server's naming rule."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"invalid results name {name!r}: use letters, digits, '.', '_' and '-' "
            "(no slashes or spaces), starting with a letter or digit"
        )
    return f"person_keypoints_test-dev2017_{name}_results.json"


def write_test_dev_results(
    results: list[dict], out_dir: str | os.PathLike, name: str
) -> tuple[Path, Path]:
    """The COCO test-dev submission: the named JSON and a zip holding just that file.

    Returns ``(json_path, zip_path)``; the zip has the same stem and the JSON at its root.
    """
    file_name = test_dev_file_name(name)
    json_path = write_results(results, Path(out_dir) / file_name)
    zip_path = json_path.with_suffix(".zip")
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.write(json_path, arcname=file_name)
    return json_path, zip_path


def load_results(results: list | str | os.PathLike) -> list[dict]:
    """A results list, from a list or a JSON file, checked for the keypoint fields."""
    if isinstance(results, str | os.PathLike):
        path = Path(results)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: results file not found")
        try:
            with path.open("rb") as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not valid JSON: {err}") from err
        source = str(path)
    else:
        data, source = results, "results"
    if not isinstance(data, list):
        raise ValueError(f"{source}: expected a list of results, got {type(data).__name__}")
    for i, r in enumerate(data):
        if not isinstance(r, dict):
            raise ValueError(f"{source}[{i}]: expected an object, got {type(r).__name__}")
        for key in ("image_id", "category_id", "keypoints", "score"):
            if key not in r:
                raise ValueError(f"{source}[{i}]: missing field '{key}'")
        kps = r["keypoints"]
        if not isinstance(kps, list | tuple | np.ndarray) or np.ndim(kps) != 1 or len(kps) % 3:
            raise ValueError(f"{source}[{i}]: 'keypoints' must be a flat list [x, y, score] * K")
        for key in ("image_id", "category_id"):
            if not isinstance(r[key], int | np.integer) or isinstance(r[key], bool):
                raise ValueError(
                    f"{source}[{i}]: field '{key}' must be an integer, got {r[key]!r:.40}"
                )
    _check_finite([r["score"] for r in data], source, "score")
    _check_finite([r["keypoints"] for r in data], source, "keypoints")
    return data


def _check_finite(values: list, source: str, field: str) -> None:
    """Every value a finite number (not a string, not a bool): NaN scores sort anywhere and
    NaN keypoints match nothing, yet COCOeval scores them without a word (all-NaN scores gave
    AP 1.0), and a numeric string fails deep inside it."""

    def numbers(value: Any) -> np.ndarray | None:
        try:
            array = np.asarray(value)
        except ValueError:  # ragged
            return None
        return array if array.dtype.kind in "iuf" else None

    whole = numbers(values)  # one array for the common case
    rows = [(0, whole)] if whole is not None else [(i, numbers(v)) for i, v in enumerate(values)]
    for offset, array in rows:
        if array is None:
            raise ValueError(
                f"{source}[{offset}]: field '{field}' holds a value that is not a number"
            )
        bad = ~np.isfinite(array.reshape(max(len(array), 1) if array.ndim else 1, -1)).all(axis=1)
        if bad.any():
            i = offset + int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{source}[{i}]: field '{field}' is not finite ({values[i]!r:.60}); "
                f"{int(bad.sum()) if whole is not None else 'one or more'} results have NaN or "
                f"infinite {field}"
            )


class ResultArrays(NamedTuple):
    """A results list as arrays (N people, K keypoints)."""

    image_ids: np.ndarray  # (N,) int64
    category_ids: np.ndarray  # (N,) int64
    keypoints: np.ndarray  # (N, K, 2)
    keypoint_scores: np.ndarray  # (N, K)
    scores: np.ndarray  # (N,)
    areas: np.ndarray  # (N,) box area of all K keypoints, as COCO.loadRes sets it


def results_to_arrays(results: list | str | os.PathLike) -> ResultArrays:
    """A results list (or file) as arrays, e.g. to rescore and re-run NMS on a saved file."""
    data = load_results(results)
    lengths = {len(r["keypoints"]) for r in data}
    if len(lengths) > 1:
        raise ValueError(f"results have different keypoint counts: {sorted(lengths)}")
    k = (lengths.pop() // 3) if lengths else 0
    flat = np.asarray([r["keypoints"] for r in data], dtype=np.float64).reshape(len(data), k, 3)
    x, y = flat[..., 0], flat[..., 1]
    if k:
        areas = (x.max(1) - x.min(1)) * (y.max(1) - y.min(1))
    else:
        areas = np.zeros(len(data))
    return ResultArrays(
        image_ids=np.asarray([r["image_id"] for r in data], dtype=np.int64),
        category_ids=np.asarray([r["category_id"] for r in data], dtype=np.int64),
        keypoints=flat[..., :2].copy(),
        keypoint_scores=flat[..., 2].copy(),
        scores=np.asarray([r["score"] for r in data], dtype=np.float64),
        areas=areas,
    )


def _read_coco(gt: Any):
    from pycocotools.coco import COCO

    if isinstance(gt, COCO):
        return gt
    path = Path(gt)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ground-truth annotation file not found")
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def keypoint_category(categories: Any, num_keypoints: int | None = None) -> dict | None:
    """The keypoint category of a COCO file's ``categories`` list, psapose's one rule.

    The one category whose keypoint list fits: exactly ``num_keypoints`` names when the
    count is known (a loader with a keypoint spec), any names otherwise; else the file's
    only category; else None, which callers read as COCO's person (id 1).
    """
    cats = [c for c in categories or [] if isinstance(c, dict)]
    if num_keypoints is None:
        fits = [c for c in cats if c.get("keypoints")]
    else:
        fits = [c for c in cats if len(c.get("keypoints") or []) == num_keypoints]
    if len(fits) == 1:
        return fits[0]
    return cats[0] if len(cats) == 1 else None


def _keypoint_category(dataset: dict, category_id: int | None) -> int:
    if category_id is not None:
        return int(category_id)
    chosen = keypoint_category(dataset.get("categories"))
    return 1 if chosen is None else int(chosen["id"])


def ground_truth_results(ann_file: Any, category_id: int | None = None) -> list[dict]:
    """The ground truth of a COCO keypoint file written as a results list.

    One result per non-crowd annotation of the keypoint category with at least one
    labelled keypoint: its keypoints as stored, keypoint score 1 where labelled
    (v > 0) and 0 elsewhere, score 1. Evaluated against the same file it scores AP 1.

    Args:
        ann_file: path of the annotation file, or a pycocotools ``COCO``.
        category_id: the keypoint category; by default the one category with keypoints.
    """
    dataset = _read_coco(ann_file).dataset
    cat = _keypoint_category(dataset, category_id)
    out = []
    for ann in dataset.get("annotations", []):
        if ann.get("category_id") != cat or ann.get("iscrowd", 0):
            continue
        kps = np.asarray(ann.get("keypoints") or [], dtype=np.float64).reshape(-1, 3)
        labelled = kps[:, 2] > 0
        if not labelled.any():
            continue
        kps[:, 2] = labelled
        out.append(
            {
                "image_id": int(ann["image_id"]),
                "category_id": cat,
                "keypoints": kps.reshape(-1).tolist(),
                "score": 1.0,
            }
        )
    return out


# ----------------------------------------------------------------------------- evaluation


def evaluate_keypoints(
    gt: str | os.PathLike | Any,
    results: list | str | os.PathLike,
    sigmas: np.ndarray | Sequence[float] | None = None,
    image_ids: Sequence[int] | None = None,
    fast: bool = True,
) -> dict[str, float]:
    """COCO keypoint AP/AR of a results list against a ground truth (pycocotools ``COCOeval``).

    Args:
        gt: annotation file path or a pycocotools ``COCO``.
        results: results list or JSON file (see :func:`keypoint_results`).
        sigmas: (K,) OKS constants for a keypoint set other than COCO-17 (set as
            ``params.kpt_oks_sigmas``); ``None`` keeps pycocotools' COCO sigmas.
        image_ids: evaluate on these images only (``params.imgIds``); default all.
        fast: load and match with :mod:`.fast_cocoeval` (the same numbers as stock
            pycocotools, several times faster on val2017); ``False`` runs stock
            ``loadRes`` and ``COCOeval``.

    Returns:
        ``{AP, AP50, AP75, APM, APL, AR, AR50, AR75, ARM, ARL}`` (floats, pycocotools' -1
        where a range has no ground truth). pycocotools' printout is not shown (it is
        logged at DEBUG level); print :func:`format_table` of the result instead. An
        empty results list gives zeros and a warning.

    Raises:
        ValueError: results on an image the ground truth does not have (the first such id
            is named), or keypoint counts that do not match the sigmas.
    """
    from pycocotools.cocoeval import COCOeval

    from .fast_cocoeval import FastKeypointEval, load_keypoint_results

    coco = _read_coco(gt)
    data = load_results(results)
    known = set(coco.getImgIds())
    if image_ids is not None:
        image_ids = sorted({int(i) for i in image_ids})
        missing = [i for i in image_ids if i not in known]
        if missing:
            raise ValueError(f"image_ids: image {missing[0]} is not in the ground truth")
    for r in data:
        if r["image_id"] not in known:
            raise ValueError(
                f"results are for image {r['image_id']!r}, which is not in the ground truth "
                f"({len(known)} images); are these results for another annotation file?"
            )
    if not data:
        warnings.warn(
            "evaluate_keypoints: no results to evaluate; every metric is reported as 0",
            RuntimeWarning,
            stacklevel=2,
        )
        return dict.fromkeys(STAT_NAMES, 0.0)
    sigma = None if sigmas is None else resolve_sigmas(sigmas, len(np.ravel(sigmas)))
    expected = len(sigma) if sigma is not None else 17
    for i, r in enumerate(data):
        if len(r["keypoints"]) != 3 * expected:
            raise ValueError(
                f"results[{i}] has {len(r['keypoints']) // 3} keypoints, the sigmas {expected}"
                + ("" if sigmas is not None else " (COCO's; pass sigmas for other keypoint sets)")
            )
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        # loadRes adds 'area', 'bbox' and 'id' to the dicts it gets: give it copies.
        copies = [dict(r) for r in data]
        if fast:
            coco_dt = load_keypoint_results(coco, copies)
            coco_eval = FastKeypointEval(coco, coco_dt)
        else:
            coco_dt = coco.loadRes(copies)
            coco_eval = COCOeval(coco, coco_dt, "keypoints")
        coco_eval.params.useSegm = None
        if sigma is not None:
            coco_eval.params.kpt_oks_sigmas = np.array(sigma, dtype=np.float64)
        if image_ids is not None:
            coco_eval.params.imgIds = image_ids
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    logger.debug("COCOeval output:\n%s", buffer.getvalue())
    return {name: float(v) for name, v in zip(STAT_NAMES, coco_eval.stats, strict=True)}


def format_table(stats: dict[str, float], digits: int = 4) -> str:
    """Two aligned rows: the metric names and their values."""
    values = [f"{v:.{digits}f}" for v in stats.values()]
    widths = [max(len(k), len(v)) for k, v in zip(stats, values, strict=True)]
    head = " ".join(k.rjust(w) for k, w in zip(stats, widths, strict=True))
    row = " ".join(v.rjust(w) for v, w in zip(values, widths, strict=True))
    return f"{head}\n{row}"
