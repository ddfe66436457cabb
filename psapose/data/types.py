"""The keys, shapes and dtypes of a top-down sample and of a batch of them, named once.

:class:`~psapose.data.coco.TopDownDataset` builds these dicts; the trainer, inference,
the API and the tools read them by key. ``K`` keypoints, an ``(H, W)`` input crop
(``input_size``), ``(h, w)`` heatmaps (``codec.heatmap_size``), ``c`` heatmap channels per
keypoint (``codec.channels_per_keypoint``: 1, or 3 for UDP's combined target) and ``B``
samples per batch.

Three stages, the same keys throughout (plain dicts at run time: these only name them):

* :class:`CropSample`: ``TopDownDataset.crop`` / ``placeholder``, NumPy arrays;
* :class:`Sample`: ``TopDownDataset[index]`` (or ``[(index, epoch)]``), tensors;
* :class:`Batch`: what torch's default collate makes of a list of samples.
"""

from __future__ import annotations

from typing import TypedDict

import numpy as np
from torch import Tensor

__all__ = ["Batch", "CropSample", "Sample"]


class _CropFields(TypedDict):
    image: np.ndarray  # uint8 (H, W, 3), the crop in the dataset's colour order
    keypoints: np.ndarray  # float32 (K, 2) crop pixels; 0 where not visible; flip applied
    visible: np.ndarray  # float32 (K,), 1 where labelled
    center: np.ndarray  # float64 (2,) crop centre, image pixels (after augmentation)
    scale: np.ndarray  # float64 (2,) crop width and height, image pixels
    rotation: float  # degrees
    flipped: bool
    matrix: np.ndarray  # float64 (2, 3) image -> crop affine (``affine_matrix``)
    image_id: int
    score: float  # box score (1 for ground truth)
    area: float  # annotation area, the OKS scale
    index: int  # dataset row


class CropSample(_CropFields, total=False):
    """``TopDownDataset.crop``; ``placeholder`` (an unreadable image) adds ``valid``/``error``."""

    valid: bool  # False for a placeholder
    error: str  # why the image could not be read, path included


class _SampleFields(TypedDict):
    image: Tensor  # uint8 (H, W, 3); normalised on the device (``normalize_images``)
    keypoints: Tensor  # float32 (K, 2) crop pixels
    visible: Tensor  # float32 (K,)
    center: Tensor  # float64 (2,)
    scale: Tensor  # float64 (2,)
    rotation: float
    flipped: bool
    image_id: int
    score: float
    area: float
    index: int
    valid: bool  # False: a same-shaped placeholder for an unreadable image
    error: str  # "" when valid


class Sample(_SampleFields, total=False):
    """``TopDownDataset[index]``; the targets only when the dataset has a codec."""

    target: Tensor  # float32 (K * c, h, w), ``codec.encode``
    target_weight: Tensor  # float32 (K,)


class _BatchFields(TypedDict):
    image: Tensor  # uint8 (B, H, W, 3)
    keypoints: Tensor  # float32 (B, K, 2)
    visible: Tensor  # float32 (B, K)
    center: Tensor  # float64 (B, 2)
    scale: Tensor  # float64 (B, 2)
    rotation: Tensor  # float64 (B,)
    flipped: Tensor  # bool (B,)
    image_id: Tensor  # int64 (B,)
    score: Tensor  # float64 (B,)
    area: Tensor  # float64 (B,)
    index: Tensor  # int64 (B,)
    valid: Tensor  # bool (B,)
    error: list[str]  # B strings, "" for the valid samples


class Batch(_BatchFields, total=False):
    """A collated list of :class:`Sample` (torch's default ``collate``)."""

    target: Tensor  # float32 (B, K * c, h, w)
    target_weight: Tensor  # float32 (B, K)
