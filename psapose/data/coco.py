"""COCO-format top-down datasets: person instances from annotations or detection files.

One row per person crop, held as a struct of NumPy arrays (cheap to send to
DataLoader workers, a few hundred bytes per person even for full COCO):

* ``load_coco_annotations``: ground-truth people (training, and validation with
  ground-truth boxes): non-crowd annotations of the keypoint category with at
  least one labelled keypoint and a box of positive area after clipping to the
  image, as the official HRNet loader keeps them;
* ``load_detections``: person boxes from a detection-results file (validation
  with detector boxes, test-dev), above a score threshold.

``TopDownDataset`` turns a row into a network input: read, augment, affine
crop (uint8), keypoints in crop pixels, and optionally the codec's targets.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from psapose.data.keypoint_spec import KeypointSpec
from psapose.data.transforms import (
    Augmentation,
    ImageReadError,
    affine_matrix,
    apply_affine,
    box_to_center_scale,
    check_color,
    read_image,
    sample_augmentation,
    warp_image,
)
from psapose.data.types import CropSample, Sample
from psapose.evaluation.coco_eval import keypoint_category

__all__ = [
    "AnnotationError",
    "AnnotationFileNotFound",
    "Instances",
    "TopDownDataset",
    "load_coco_annotations",
    "load_detections",
    "read_json",
]


class AnnotationError(ValueError):
    """An annotation or detection file that cannot be used, with the file, record and field named."""


class AnnotationFileNotFound(AnnotationError):
    """The annotation or detection file does not exist (an optional split may lack one)."""


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; a missing or invalid file raises :class:`AnnotationError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationFileNotFound(f"{path}: file not found")
    try:
        with path.open("rb") as f:
            return json.load(f)
    except OSError as err:
        raise AnnotationError(f"{path}: cannot read the file ({err.strerror or err})") from err
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise AnnotationError(f"{path}: not valid JSON: {err}") from err


@dataclass
class Instances:
    """Person crops as a struct of arrays (N rows, over M images).

    Attributes:
        source: the annotation (or image-info) file the images come from.
        image_files / image_ids / image_sizes: per image (M), sizes as (width, height).
        image_index: (N,) row -> image.
        boxes: (N, 4) xywh person boxes in image pixels.
        centers / scales: (N, 2) crop centre and padded, aspect-fixed size in pixels.
        keypoints: (N, K, 3) x, y, visibility (0 unlabelled, 1 occluded, 2 visible); zeros for detections.
        scores: (N,) box score (1 for ground truth).
        areas: (N,) annotation area (box area for detections), the OKS scale.
        ann_ids: (N,) annotation id, -1 for detections.
        skipped: counts of records left out and why.
    """

    source: str
    image_files: list[str]
    image_ids: np.ndarray
    image_sizes: np.ndarray
    image_index: np.ndarray
    boxes: np.ndarray
    centers: np.ndarray
    scales: np.ndarray
    keypoints: np.ndarray
    scores: np.ndarray
    areas: np.ndarray
    ann_ids: np.ndarray
    skipped: dict[str, int] = field(default_factory=dict)
    ann_file: str = ""  # the file listing the images (and, for evaluation, the ground truth)
    has_annotations: bool = False  # whether ann_file holds keypoint annotations to score against
    category_id: int = 1  # the keypoint category the rows belong to

    def __len__(self) -> int:
        return len(self.image_index)

    @property
    def num_images(self) -> int:
        """Images with at least one instance."""
        return len(np.unique(self.image_index))

    def summary(self) -> str:
        skipped = ", ".join(f"{v} {k}" for k, v in self.skipped.items() if v)
        return f"{len(self)} person instances in {self.num_images} images from {self.source}" + (
            f" (skipped: {skipped})" if skipped else ""
        )


def _images_table(data: dict, source: str, image_dir: Path) -> tuple[dict[int, int], list, list]:
    images = data.get("images")
    if not isinstance(images, list):
        raise AnnotationError(f"{source}: missing or invalid field 'images' (a list is required)")
    index: dict[int, int] = {}
    files, sizes = [], []
    for i, img in enumerate(images):
        where = f"{source}: images[{i}]"
        if not isinstance(img, dict):
            raise AnnotationError(f"{where}: expected an object")
        for key in ("id", "file_name", "width", "height"):
            if key not in img:
                raise AnnotationError(f"{where} (id {img.get('id')}): missing field '{key}'")
        if not _is_int(img["id"]):
            raise AnnotationError(f"{where}: field 'id' must be an integer, got {img['id']!r:.40}")
        if img["id"] in index:
            raise AnnotationError(f"{where}: duplicate image id {img['id']}")
        if not isinstance(img["file_name"], str) or not img["file_name"]:
            raise AnnotationError(f"{where} (id {img['id']}): field 'file_name' must be a path")
        width, height = (
            _number_list([img[k]], 1, f"{where} (id {img['id']}): field '{k}'")[0]
            for k in ("width", "height")
        )
        if width <= 0 or height <= 0:
            raise AnnotationError(
                f"{where} (id {img['id']}): fields 'width'/'height' must be positive, "
                f"got {img['width']} x {img['height']}"
            )
        index[img["id"]] = len(files)
        files.append(str(image_dir / img["file_name"]))
        sizes.append((width, height))
    return index, files, sizes


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _keypoint_category(data: dict, source: str, num_keypoints: int, category_id: int | None) -> int:
    """The keypoint category: ``category_id`` if given, else the one whose keypoint list fits.

    The chosen category's keypoint names, when the file lists them, must be as many
    as the keypoint spec has: a file labelled for another skeleton is named at load.
    """
    cats = [c for c in data.get("categories") or [] if isinstance(c, dict)]
    if category_id is not None:
        chosen = next((c for c in cats if c.get("id") == category_id), None)
        if cats and chosen is None:
            ids = ", ".join(str(c.get("id")) for c in cats)
            raise AnnotationError(
                f"{source}: no category with id {category_id} (data.category_id); "
                f"the file has {ids}"
            )
    else:
        chosen = keypoint_category(cats, num_keypoints)
        if chosen is None:
            return 1  # COCO's person
    names = chosen.get("keypoints") if chosen is not None else None
    if isinstance(names, list) and names and len(names) != num_keypoints:
        raise AnnotationError(
            f"{source}: category {chosen.get('id')} ({chosen.get('name', '?')!r}) lists "
            f"{len(names)} keypoints ({', '.join(map(str, names[:4]))}, ...) but the keypoint "
            f"spec has {num_keypoints}; set data.keypoints to the YAML for this data"
        )
    return int(category_id if category_id is not None else chosen["id"])


def _number_list(value: Any, length: int, where: str) -> np.ndarray:
    if not isinstance(value, list) or len(value) != length:
        got = f"{len(value)} numbers" if isinstance(value, list) else type(value).__name__
        raise AnnotationError(f"{where}: expected {length} numbers, got {got}")
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise AnnotationError(f"{where}: not all numbers ({err})") from err
    if not np.isfinite(array).all():
        raise AnnotationError(f"{where}: contains NaN or infinite values")
    return array


def _instances(
    source: str,
    files: list[str],
    image_of: dict[int, int],
    sizes: list,
    image_index: list[int],
    boxes: Any,
    aspect_ratio: float,
    padding: float,
    **rows: Any,
) -> Instances:
    """The image table and the boxes' crops, shared by both loaders; ``rows`` the per-person arrays."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(len(image_index), 4)
    centers, scales = box_to_center_scale(boxes, aspect_ratio, padding)
    return Instances(
        source=source,
        image_files=files,
        image_ids=np.asarray(list(image_of), dtype=np.int64),
        image_sizes=np.asarray(sizes, dtype=np.float64).reshape(-1, 2),
        image_index=np.asarray(image_index, dtype=np.int64),
        boxes=boxes,
        centers=centers,
        scales=scales,
        **rows,
    )


def _ground_truth_rows(
    anns: list,
    source: str,
    image_of: dict[int, int],
    sizes: list,
    num_keypoints: int,
    category: int,
) -> tuple[dict[str, list], dict[str, int]]:
    """Checked ground-truth people of ``category`` and the counts of records left out."""
    skipped = {"other category": 0, "crowd": 0, "no keypoints": 0, "empty box": 0}
    rows: dict[str, list] = {k: [] for k in ("image", "box", "kps", "area", "id")}
    for i, ann in enumerate(anns):
        where = f"{source}: annotations[{i}] (id {ann.get('id') if isinstance(ann, dict) else '?'})"
        if not isinstance(ann, dict):
            raise AnnotationError(f"{where}: expected an object")
        if ann.get("category_id") != category:
            skipped["other category"] += 1
            continue
        for key in ("image_id", "bbox", "keypoints"):
            if key not in ann:
                raise AnnotationError(f"{where}: missing field '{key}'")
        if not _is_int(ann["image_id"]) or ann["image_id"] not in image_of:
            raise AnnotationError(
                f"{where}: field 'image_id' {ann['image_id']!r:.40} is not in 'images'"
            )
        if "id" in ann and not _is_int(ann["id"]):
            raise AnnotationError(f"{where}: field 'id' must be an integer")
        # Crowd regions are checked too: COCOeval reads their box and keypoints.
        kps = _number_list(ann["keypoints"], 3 * num_keypoints, f"{where}: field 'keypoints'")
        kps = kps.reshape(num_keypoints, 3)
        x, y, w, h = _number_list(ann["bbox"], 4, f"{where}: field 'bbox'")
        if "area" in ann:
            area = float(_number_list([ann["area"]], 1, f"{where}: field 'area'")[0])
        else:
            area = float(w * h)
        crowd = _number_list([ann.get("iscrowd", 0)], 1, f"{where}: field 'iscrowd'")[0]
        if crowd:
            skipped["crowd"] += 1
            continue
        if not (kps[:, 2] > 0).any():
            skipped["no keypoints"] += 1
            continue
        if w < 0 or h < 0:
            raise AnnotationError(f"{where}: field 'bbox' has a negative size ({w}, {h})")
        if w == 0 or h == 0:
            # A labelled person needs a box to crop: a zero-size one is a labelling error.
            raise AnnotationError(f"{where}: field 'bbox' has zero area ({w}, {h})")
        img = image_of[ann["image_id"]]
        width, height = sizes[img]
        x1, y1 = max(0.0, x), max(0.0, y)
        x2 = min(width - 1.0, x1 + max(0.0, w - 1.0))
        y2 = min(height - 1.0, y1 + max(0.0, h - 1.0))
        if not (area > 0 and x2 >= x1 and y2 >= y1):
            skipped["empty box"] += 1
            continue
        rows["image"].append(img)
        rows["box"].append((x1, y1, x2 - x1, y2 - y1))
        rows["kps"].append(kps)
        rows["area"].append(area)
        rows["id"].append(ann.get("id", -1))
    return rows, skipped


def load_coco_annotations(
    ann_file: str | os.PathLike,
    image_dir: str | os.PathLike,
    num_keypoints: int,
    aspect_ratio: float,
    padding: float = 1.25,
    category_id: int | None = None,
) -> Instances:
    """Ground-truth person instances of a COCO keypoint annotation file.

    Kept: annotations of the keypoint category, ``iscrowd`` 0, at least one
    labelled keypoint, and a box of positive area once clipped to the image
    (HRNet's ``clean_bbox``: corners clipped to ``[0, size - 1]``).
    """
    source = str(ann_file)
    data = read_json(ann_file)
    if not isinstance(data, dict):
        raise AnnotationError(f"{source}: expected a COCO annotation object")
    image_of, files, sizes = _images_table(data, source, Path(image_dir))
    anns = data.get("annotations")
    if not isinstance(anns, list):
        raise AnnotationError(
            f"{source}: missing or invalid field 'annotations' (a list is required)"
        )
    category = _keypoint_category(data, source, num_keypoints, category_id)
    rows, skipped = _ground_truth_rows(anns, source, image_of, sizes, num_keypoints, category)
    n = len(rows["image"])
    return _instances(
        source, files, image_of, sizes, rows["image"], rows["box"], aspect_ratio, padding,
        keypoints=np.asarray(rows["kps"], dtype=np.float32).reshape(n, num_keypoints, 3),
        scores=np.ones(n, dtype=np.float32),
        areas=np.asarray(rows["area"], dtype=np.float64),
        ann_ids=np.asarray(rows["id"], dtype=np.int64),
        skipped=skipped,
        ann_file=source,
        has_annotations=True,
        category_id=category,
    )  # fmt: skip


def load_detections(
    det_file: str | os.PathLike,
    image_file: str | os.PathLike,
    image_dir: str | os.PathLike,
    num_keypoints: int,
    aspect_ratio: float,
    padding: float = 1.25,
    score_threshold: float = 0.0,
    category_id: int = 1,
) -> Instances:
    """Person boxes of a detection-results file (``[{image_id, category_id, bbox, score}]``).

    ``image_file`` is the annotation or image-info file (``image_info_test-dev2017.json``)
    that lists the images. Boxes scoring below ``score_threshold``, of another
    category, or on images not listed there (a full-val detection file with a
    subset of the images) are left out and counted.
    """
    source = str(det_file)
    info = read_json(image_file)
    if not isinstance(info, dict):
        raise AnnotationError(f"{image_file}: expected a COCO annotation or image-info object")
    image_of, files, sizes = _images_table(info, str(image_file), Path(image_dir))
    has_annotations = isinstance(info.get("annotations"), list) and bool(info["annotations"])
    if has_annotations:
        # Evaluation scores against this ground truth: check it now, not after training.
        category = _keypoint_category(info, str(image_file), num_keypoints, category_id)
        _ground_truth_rows(
            info["annotations"], str(image_file), image_of, sizes, num_keypoints, category
        )
    dets = read_json(det_file)
    if not isinstance(dets, list):
        raise AnnotationError(f"{source}: expected a list of detections")
    skipped = {
        "other category": 0,
        "below score threshold": 0,
        "image not listed": 0,
        "empty box": 0,
    }
    rows: dict[str, list] = {k: [] for k in ("image", "box", "score")}
    for i, det in enumerate(dets):
        where = f"{source}: [{i}]"
        if not isinstance(det, dict):
            raise AnnotationError(f"{where}: expected an object")
        for key in ("image_id", "bbox", "score"):
            if key not in det:
                raise AnnotationError(f"{where}: missing field '{key}'")
        if det.get("category_id", category_id) != category_id:
            skipped["other category"] += 1
            continue
        score = float(_number_list([det["score"]], 1, f"{where}: field 'score'")[0])
        if score < score_threshold:
            skipped["below score threshold"] += 1
            continue
        if not _is_int(det["image_id"]):
            raise AnnotationError(f"{where}: field 'image_id' must be an integer")
        if det["image_id"] not in image_of:
            skipped["image not listed"] += 1
            continue
        box = _number_list(det["bbox"], 4, f"{where}: field 'bbox'")
        if box[2] <= 0 or box[3] <= 0:
            skipped["empty box"] += 1
            continue
        rows["image"].append(image_of[det["image_id"]])
        rows["box"].append(box)
        rows["score"].append(score)
    n = len(rows["image"])
    boxes = np.asarray(rows["box"], dtype=np.float64).reshape(n, 4)
    return _instances(
        source, files, image_of, sizes, rows["image"], boxes, aspect_ratio, padding,
        keypoints=np.zeros((n, num_keypoints, 3), dtype=np.float32),
        scores=np.asarray(rows["score"], dtype=np.float32),
        areas=boxes[:, 2] * boxes[:, 3],
        ann_ids=np.full(n, -1, dtype=np.int64),
        skipped=skipped,
        ann_file=str(image_file),
        has_annotations=has_annotations,
        category_id=category_id,
    )  # fmt: skip


class TopDownDataset(Dataset):
    """Person crops for training or evaluation.

    A sample is a dict (:class:`~psapose.data.types.Sample`, which gives every key's shape and
    dtype; a DataLoader batch is a :class:`~psapose.data.types.Batch`):

    * ``image``: uint8 (H, W, 3) crop in ``color`` order (float conversion and
      normalisation happen on the device, see :func:`psapose.data.normalize_images`);
    * ``keypoints`` (K, 2) float32 in crop pixels and ``visible`` (K,) float32
      (1 where labelled), already swapped left/right for flipped samples;
    * ``center``, ``scale`` (2,) float64, ``rotation``, ``flipped``: the crop;
    * ``image_id``, ``score``, ``area``, ``index``: for evaluation;
    * ``target``, ``target_weight``: the codec's targets when a codec is given;
    * ``valid`` and ``error``: False and the reason (path included) when the image
      cannot be read (missing, empty, truncated, not an image). Such a sample is a
      same-shaped placeholder (zero image, no visible keypoint), so one bad file
      neither kills a DataLoader worker nor changes the batch shape; the trainer
      gives it zero loss weight and counts it, evaluation drops it.

    Augmentation randomness depends only on ``(seed, epoch, index)``, never on
    worker scheduling: the same sample is the same on any number of workers and
    after a resume. ``dataset[(index, epoch)]`` draws for a given epoch;
    ``dataset[index]`` uses :attr:`epoch`.
    """

    def __init__(
        self,
        instances: Instances,
        spec: KeypointSpec,
        input_size: Sequence[int],
        codec: Any = None,
        udp: bool | None = None,
        augment: Augmentation | None = None,
        color: str = "rgb",
        seed: int = 0,
    ) -> None:
        if instances.keypoints.shape[1] != spec.num_keypoints:
            raise ValueError(
                f"{instances.source}: {instances.keypoints.shape[1]} keypoints per person, "
                f"but the keypoint spec {spec.name!r} has {spec.num_keypoints}"
            )
        check_color(color)
        self.instances = instances
        self.spec = spec
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.codec = codec
        self.udp = bool(getattr(codec, "use_udp", False)) if udp is None else bool(udp)
        if codec is not None and bool(getattr(codec, "use_udp", self.udp)) != self.udp:
            raise ValueError(f"udp={self.udp} contradicts the codec's use_udp={codec.use_udp}")
        self.augment = augment
        self.color = color
        self.seed = int(seed)
        self.epoch = 0
        self.aspect_ratio = self.input_size[1] / self.input_size[0]
        self._flip_indices = spec.flip_indices

    def __len__(self) -> int:
        return len(self.instances)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def crop(self, index: int, epoch: int | None = None) -> CropSample:
        """The sample as NumPy arrays, before conversion to tensors (and without targets)."""
        inst = self.instances
        epoch = self.epoch if epoch is None else epoch
        path = inst.image_files[inst.image_index[index]]
        # Decode as BGR and convert the (smaller) crop, not the whole image.
        image = read_image(path, "bgr")
        keypoints = inst.keypoints[index, :, :2].astype(np.float64)
        visible = (inst.keypoints[index, :, 2] > 0).astype(np.float32)
        center, scale = inst.centers[index], inst.scales[index]
        rotation, flip = 0.0, False
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, epoch, index])
            center, scale, rotation, flip = sample_augmentation(
                self.augment,
                keypoints,
                visible,
                center,
                scale,
                self.spec.upper_body,
                self.spec.lower_body,
                self.aspect_ratio,
                rng,
            )
        matrix = affine_matrix(center, scale, rotation, self.input_size, self.udp, flip)
        crop = warp_image(image, matrix, self.input_size)
        if self.color == "rgb":
            cv2.cvtColor(crop, cv2.COLOR_BGR2RGB, dst=crop)
        keypoints = apply_affine(keypoints, matrix)
        if flip:
            keypoints, visible = keypoints[self._flip_indices], visible[self._flip_indices]
        keypoints[visible == 0] = 0.0
        return {
            "image": crop,
            "keypoints": keypoints.astype(np.float32),
            "visible": visible,
            "center": np.asarray(center, dtype=np.float64),
            "scale": np.asarray(scale, dtype=np.float64),
            "rotation": rotation,
            "flipped": flip,
            "matrix": matrix,
            "image_id": int(inst.image_ids[inst.image_index[index]]),
            "score": float(inst.scores[index]),
            "area": float(inst.areas[index]),
            "index": int(index),
        }

    def placeholder(self, index: int, error: str) -> CropSample:
        """A sample of the usual shapes standing in for one whose image cannot be read."""
        inst = self.instances
        height, width = self.input_size
        center, scale = inst.centers[index], inst.scales[index]
        return {
            "image": np.zeros((height, width, 3), dtype=np.uint8),
            "keypoints": np.zeros((self.spec.num_keypoints, 2), dtype=np.float32),
            "visible": np.zeros(self.spec.num_keypoints, dtype=np.float32),
            "center": np.asarray(center, dtype=np.float64),
            "scale": np.asarray(scale, dtype=np.float64),
            "rotation": 0.0,
            "flipped": False,
            "matrix": affine_matrix(center, scale, 0.0, self.input_size, self.udp),
            "image_id": int(inst.image_ids[inst.image_index[index]]),
            "score": float(inst.scores[index]),
            "area": float(inst.areas[index]),
            "index": int(index),
            "valid": False,
            "error": error,
        }

    def __getitem__(self, key: int | tuple[int, int]) -> Sample:
        index, epoch = key if isinstance(key, tuple) else (key, self.epoch)
        try:
            sample = self.crop(int(index), int(epoch))
        except ImageReadError as err:
            sample = self.placeholder(int(index), str(err))
        out: Sample = {
            "image": torch.from_numpy(sample["image"]),
            "keypoints": torch.from_numpy(sample["keypoints"]),
            "visible": torch.from_numpy(sample["visible"]),
            "center": torch.from_numpy(sample["center"]),
            "scale": torch.from_numpy(sample["scale"]),
            "rotation": sample["rotation"],
            "flipped": sample["flipped"],
            "image_id": sample["image_id"],
            "score": sample["score"],
            "area": sample["area"],
            "index": sample["index"],
            "valid": sample.get("valid", True),
            "error": sample.get("error", ""),
        }
        if self.codec is not None:
            target, weight = self.codec.encode(out["keypoints"], out["visible"])
            out["target"], out["target_weight"] = target, weight
        return out
