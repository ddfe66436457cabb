"""Top-down transforms: box to centre/scale, random augmentation, affine crop, image reading.

Every geometric step is one 2x3 affine matrix from image pixels to crop pixels
(pixel centres at integers, as ``cv2.warpAffine``). The image is warped once
with it and the keypoints are mapped with the same matrix, so they stay exactly
where the image content moved. A horizontal flip is composed into the matrix
(mirroring the crop), so the full image is never flipped.

Two crop conventions, as in the reference code:

* standard (official HRNet ``get_affine_transform``): the box centre maps to
  ``(W/2, H/2)`` and the box width to ``W`` pixels;
* UDP (Huang et al., unbiased data processing): the centre maps to
  ``((W-1)/2, (H-1)/2)`` and the box to ``W-1`` by ``H-1`` pixels, so the crop,
  its flip and the heatmap grid share one continuous coordinate system.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    "COLORS",
    "Augmentation",
    "ImageReadError",
    "affine_matrix",
    "apply_affine",
    "box_to_center_scale",
    "check_color",
    "crop_to_image",
    "fix_aspect_ratio",
    "half_body_box",
    "image_header_size",
    "invert_affine",
    "read_image",
    "sample_augmentation",
    "warp_image",
]

# EXIF orientation is ignored, as the reference pipelines (cv2.imread with
# IGNORE_ORIENTATION in mmcv, PIL-free HRNet) do: COCO keypoints are labelled
# on the stored pixel grid.
_IMREAD_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION

# Channel orders a model may be trained on (bgr: OpenCV's, the official SimpleBaseline's).
COLORS = ("rgb", "bgr")


def check_color(color: str) -> str:
    """``color`` when it is one of :data:`COLORS`; a ``ValueError`` naming them otherwise."""
    if color not in COLORS:
        raise ValueError(f"color must be 'rgb' or 'bgr', got {color!r}")
    return color


class ImageReadError(OSError):
    """An image file that is missing, empty or cannot be decoded."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


# Bytes searched for the end-of-image marker: encoders may pad or append a short
# trailer after it, and a truncated file ends before it.
_END_MARKER_WINDOW = 1024
_JPEG_START, _JPEG_END = b"\xff\xd8", b"\xff\xd9"
_PNG_START, _PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND"


def _truncation_reason(data: bytes | np.ndarray) -> str | None:
    """Why a JPEG or PNG file looks cut short, or None.

    OpenCV decodes a truncated JPEG (and some truncated PNGs) without an error,
    filling the missing rows with grey, so the end-of-image marker is checked
    first: JPEG's EOI (FFD9) and PNG's IEND chunk.
    """
    head = bytes(data[:8])
    tail = bytes(data[-_END_MARKER_WINDOW:])
    if head.startswith(_JPEG_START) and _JPEG_END not in tail:
        return "truncated JPEG (no end-of-image marker)"
    if head.startswith(_PNG_START) and _PNG_END not in tail:
        return "truncated PNG (no IEND chunk)"
    return None


# Images larger than this are refused before decoding: a small file can declare a huge
# canvas (a decompression bomb) and take gigabytes in every DataLoader worker. PIL's
# error threshold; COCO's largest image has 0.3 megapixels.
MAX_IMAGE_PIXELS = int(os.environ.get("PSAPOSE_MAX_IMAGE_PIXELS", 178_956_970))

_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def image_header_size(data: bytes | np.ndarray) -> tuple[int, int] | None:
    """(width, height) declared by a PNG or JPEG header, without decoding; None otherwise."""
    head = bytes(data[:32])
    if head.startswith(_PNG_START) and len(head) >= 24 and head[12:16] == b"IHDR":
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if not head.startswith(_JPEG_START):
        return None
    raw = data if isinstance(data, bytes) else np.asarray(data, dtype=np.uint8)
    pos, end = 2, min(len(raw), 1 << 20)  # SOF comes early; do not scan huge files
    while pos + 9 < end:
        if raw[pos] != 0xFF:
            return None
        marker = int(raw[pos + 1])
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        length = (int(raw[pos + 2]) << 8) | int(raw[pos + 3])
        if marker in _JPEG_SOF:
            height = (int(raw[pos + 5]) << 8) | int(raw[pos + 6])
            width = (int(raw[pos + 7]) << 8) | int(raw[pos + 8])
            return width, height
        if length < 2:
            return None
        pos += 2 + length
    return None


def read_image(path: str | os.PathLike, color: str = "rgb") -> np.ndarray:
    """Decode an image file to ``uint8`` HxWx3 (grayscale becomes 3 channels).

    ``color`` is ``rgb`` or ``bgr`` (OpenCV's native order, which the official
    SimpleBaseline ResNet models were trained on). A missing, empty,
    undecodable or truncated (JPEG/PNG) file, one whose header declares more than
    :data:`MAX_IMAGE_PIXELS`, and any failure inside the decoder raise
    :class:`ImageReadError`.
    """
    check_color(color)
    try:
        data = np.fromfile(os.fspath(path), dtype=np.uint8)
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except OSError as err:
        raise ImageReadError(path, f"cannot read the file ({err.strerror or err})") from None
    if data.size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")
    truncated = _truncation_reason(data)
    if truncated:
        raise ImageReadError(path, truncated)
    size = image_header_size(data)
    if size is not None and size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise ImageReadError(
            path,
            f"{size[0]} x {size[1]} pixels, over the limit of {MAX_IMAGE_PIXELS:,} "
            "(PSAPOSE_MAX_IMAGE_PIXELS); a decompression bomb or a wrong header?",
        )
    try:
        image = cv2.imdecode(data, _IMREAD_FLAGS)
    except Exception as err:  # OpenCV raises cv2.error for some headers (sizes, depths)
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise ImageReadError(path, f"the decoder failed: {reason}") from None
    if image is None:
        raise ImageReadError(path, "not a decodable image")
    if image.ndim == 2:  # some builds return 1 channel for odd grayscale files
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ImageReadError(path, f"decoded to an unexpected {image.dtype} array {image.shape}")
    if color == "rgb":
        cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)
    return image


def fix_aspect_ratio(scale: np.ndarray, aspect_ratio: float) -> np.ndarray:
    """Grow the shorter side so that width / height == ``aspect_ratio`` (boxes along the last axis)."""
    scale = np.array(scale, dtype=np.float64)
    w, h = scale[..., 0], scale[..., 1]
    wide = w > aspect_ratio * h
    scale[..., 1] = np.where(wide, w / aspect_ratio, h)
    scale[..., 0] = np.where(wide, w, h * aspect_ratio)
    return scale


def box_to_center_scale(
    boxes: np.ndarray, aspect_ratio: float, padding: float = 1.25
) -> tuple[np.ndarray, np.ndarray]:
    """``xywh`` boxes (..., 4) to centres and padded, aspect-fixed sizes in pixels.

    As the official HRNet ``_xywh2cs``: centre ``(x + w/2, y + h/2)``, the
    shorter side grown to the input aspect ratio, then both sides times
    ``padding`` (1.25). Sizes are in pixels (HRNet divides by ``pixel_std`` 200).
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    center = boxes[..., :2] + boxes[..., 2:4] * 0.5
    scale = fix_aspect_ratio(boxes[..., 2:4], aspect_ratio) * padding
    return center, scale


def affine_matrix(
    center: np.ndarray,
    scale: np.ndarray,
    rotation: float,
    output_size: tuple[int, int],
    udp: bool = False,
    flip: bool = False,
) -> np.ndarray:
    """The 2x3 matrix from image pixels to crop pixels.

    Args:
        center: box centre (x, y) in image pixels.
        scale: box size (w, h) in image pixels (already padded and aspect-fixed).
        rotation: degrees; positive turns the image content counter-clockwise in
            the crop (the official HRNet sign).
        output_size: crop (H, W).
        udp: UDP's unbiased transform (sizes minus one) instead of the standard one.
        flip: mirror the crop horizontally (``x -> W - 1 - x``).
    """
    out_h, out_w = output_size
    cx, cy = float(center[0]), float(center[1])
    if udp:
        # get_warp_matrix(theta, 2c, out - 1, s) from UDP-Pose: separate x/y
        # scales map the box onto (W-1) x (H-1) pixels, centre on ((W-1)/2, (H-1)/2).
        sx, sy = (out_w - 1.0) / float(scale[0]), (out_h - 1.0) / float(scale[1])
        dst_cx, dst_cy = (out_w - 1.0) * 0.5, (out_h - 1.0) * 0.5
    else:
        # get_affine_transform from HRNet: a similarity fixed by the box width only.
        sx = sy = out_w / float(scale[0])
        dst_cx, dst_cy = out_w * 0.5, out_h * 0.5
    theta = math.radians(rotation)
    cos, sin = math.cos(theta), math.sin(theta)
    # Rotate about the box centre by -rotation in image axes (y down), then scale.
    a = np.array([[sx * cos, sx * sin], [-sy * sin, sy * cos]])
    t = np.array([dst_cx, dst_cy]) - a @ np.array([cx, cy])
    matrix = np.concatenate([a, t[:, None]], axis=1)
    if flip:
        matrix[0] = -matrix[0]
        matrix[0, 2] += out_w - 1.0
    return matrix


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine matrix (batched over leading axes)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    a, t = matrix[..., :2], matrix[..., 2:]
    a_inv = np.linalg.inv(a)
    return np.concatenate([a_inv, -a_inv @ t], axis=-1)


def apply_affine(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Map (..., 2) points with a 2x3 matrix."""
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def warp_image(image: np.ndarray, matrix: np.ndarray, output_size: tuple[int, int]) -> np.ndarray:
    """Bilinear affine crop to ``output_size`` (H, W), black outside the image."""
    out_h, out_w = output_size
    return cv2.warpAffine(
        image,
        matrix,
        (out_w, out_h),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )


def crop_to_image(
    keypoints: np.ndarray,
    center: np.ndarray,
    scale: np.ndarray,
    input_size: tuple[int, int],
    udp: bool = False,
) -> np.ndarray:
    """Map crop-pixel keypoints (N, K, 2) back to image pixels for unrotated, unflipped crops.

    Vectorised over N: ``x_img = (x - W/2) * s_w / W + c`` for both axes (standard) or
    ``(x - (W-1)/2) * s / (W-1) + c`` per axis (UDP), the inverses of :func:`affine_matrix`.
    """
    keypoints = np.asarray(keypoints, dtype=np.float64)
    center = np.asarray(center, dtype=np.float64)[..., None, :]
    scale = np.asarray(scale, dtype=np.float64)[..., None, :]
    h, w = input_size
    if udp:
        size = np.array([w - 1.0, h - 1.0])
        return (keypoints - size * 0.5) * (scale / size) + center
    # The standard crop is a similarity fixed by the box width: one factor for both axes.
    return (keypoints - np.array([w, h]) * 0.5) * (scale[..., :1] / w) + center


@dataclass(frozen=True)
class Augmentation:
    """Random top-down augmentation, as the official HRNet/mmpose training pipelines.

    Attributes:
        flip_prob: probability of a horizontal flip (left/right keypoints swapped).
        half_body_prob: probability of cropping to the upper or lower body, when
            more than ``half_body_min_joints`` keypoints are labelled.
        half_body_padding: box padding for the half-body crop (1.5 in HRNet).
        scale_factor: box size times ``clip(1 + N(0, sf), 1 - sf, 1 + sf)``.
        rotation_factor: rotation ``clip(N(0, rf), -2 rf, 2 rf)`` degrees ...
        rotation_prob: ... applied with this probability.
        shift_factor / shift_prob: centre moved by ``U(-1, 1) * sf * size`` (mmpose).
    """

    flip_prob: float = 0.5
    half_body_prob: float = 0.3
    half_body_min_joints: int = 8
    half_body_padding: float = 1.5
    scale_factor: float = 0.35
    rotation_factor: float = 45.0
    rotation_prob: float = 0.6
    shift_factor: float = 0.0
    shift_prob: float = 0.0

    def __post_init__(self) -> None:
        for name in ("flip_prob", "half_body_prob", "rotation_prob", "shift_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"augment.{name} must be in [0, 1], got {value}")
        for name in ("scale_factor", "rotation_factor", "shift_factor"):
            if getattr(self, name) < 0:
                raise ValueError(f"augment.{name} must be >= 0, got {getattr(self, name)}")
        if self.scale_factor >= 1:
            raise ValueError(f"augment.scale_factor must be < 1, got {self.scale_factor}")
        if self.half_body_padding <= 0:
            raise ValueError(f"augment.half_body_padding must be > 0, got {self.half_body_padding}")


def half_body_box(
    keypoints: np.ndarray,
    visible: np.ndarray,
    upper_body: tuple[int, ...],
    lower_body: tuple[int, ...],
    aspect_ratio: float,
    padding: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Centre and size of the box around the upper or lower body (HRNet ``half_body_transform``)."""
    upper = [k for k in upper_body if visible[k] > 0]
    lower = [k for k in lower_body if visible[k] > 0]
    if rng.random() < 0.5 and len(upper) > 2:
        chosen = upper
    else:
        chosen = lower if len(lower) > 2 else upper
    if len(chosen) < 2:
        return None
    points = keypoints[chosen]
    center = points.mean(axis=0)
    size = points.max(axis=0) - points.min(axis=0)
    return center, fix_aspect_ratio(size, aspect_ratio) * padding


def sample_augmentation(
    aug: Augmentation,
    keypoints: np.ndarray,
    visible: np.ndarray,
    center: np.ndarray,
    scale: np.ndarray,
    upper_body: tuple[int, ...],
    lower_body: tuple[int, ...],
    aspect_ratio: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, float, bool]:
    """Draw one augmentation: returns the new centre, size, rotation (degrees) and flip flag."""
    center = np.array(center, dtype=np.float64)
    scale = np.array(scale, dtype=np.float64)
    if (
        aug.half_body_prob > 0
        and (visible > 0).sum() > aug.half_body_min_joints
        and rng.random() < aug.half_body_prob
    ):
        box = half_body_box(
            keypoints, visible, upper_body, lower_body, aspect_ratio, aug.half_body_padding, rng
        )
        if box is not None:
            center, scale = box
    sf = aug.scale_factor
    scale = scale * float(np.clip(rng.standard_normal() * sf + 1.0, 1.0 - sf, 1.0 + sf))
    rotation = 0.0
    if aug.rotation_factor > 0 and rng.random() <= aug.rotation_prob:
        rf = aug.rotation_factor
        rotation = float(np.clip(rng.standard_normal() * rf, -2.0 * rf, 2.0 * rf))
    if aug.shift_factor > 0 and rng.random() < aug.shift_prob:
        center = center + rng.uniform(-1.0, 1.0, size=2) * aug.shift_factor * scale
    flip = bool(aug.flip_prob > 0 and rng.random() < aug.flip_prob)
    return center, scale, rotation, flip
