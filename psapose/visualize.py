"""Drawing poses and heatmaps for TensorBoard, the demo and reports (OpenCV, uint8 RGB)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from psapose.data.keypoint_spec import KeypointSpec

__all__ = ["SIDE_COLORS", "draw_poses", "heatmap_image", "image_grid"]

# RGB colours by body side, from the spec's flip pairs (first of a pair is "left").
SIDE_COLORS = {"left": (255, 128, 0), "right": (0, 160, 255), "center": (0, 220, 90)}


def _limb_side(spec: KeypointSpec, a: int, b: int) -> str:
    sides = {spec.side(a), spec.side(b)}
    return sides.pop() if len(sides) == 1 else "center"


def draw_poses(
    image: np.ndarray,
    keypoints: np.ndarray,
    scores: np.ndarray | None,
    spec: KeypointSpec,
    threshold: float = 0.3,
    boxes: np.ndarray | None = None,
    radius: int | None = None,
    thickness: int | None = None,
) -> np.ndarray:
    """Draw people on a copy of ``image`` (H, W, 3 uint8).

    Args:
        keypoints: (P, K, 2) or (K, 2) in image pixels.
        scores: (P, K) confidences or visibilities; a keypoint is drawn when its
            score exceeds ``threshold`` (all drawn when ``None``).
        spec: the keypoint spec, for the skeleton and left/right colours.
        boxes: optional (P, 4) xywh boxes drawn as rectangles.
    """
    canvas = np.ascontiguousarray(image).copy()
    if canvas.ndim == 2:
        canvas = cv2.cvtColor(canvas, cv2.COLOR_GRAY2RGB)
    keypoints = np.asarray(keypoints, dtype=np.float64)
    if keypoints.ndim == 2:
        keypoints = keypoints[None]
    people = keypoints.shape[0]
    scores = (
        np.ones(keypoints.shape[:2]) if scores is None else np.asarray(scores).reshape(people, -1)
    )
    size = max(canvas.shape[:2])
    radius = radius or max(2, round(size / 160))
    thickness = thickness or max(1, round(size / 240))
    # Fixed-point drawing (shift=4) keeps sub-pixel positions visible on small crops.
    shift, unit = 4, 16.0

    def pt(p: np.ndarray) -> tuple[int, int]:
        return int(round(p[0] * unit)), int(round(p[1] * unit))

    if boxes is not None:
        for x, y, w, h in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
            cv2.rectangle(
                canvas, pt((x, y)), pt((x + w, y + h)), (255, 255, 255), 1, cv2.LINE_AA, shift
            )
    for person, score in zip(keypoints, scores, strict=True):
        shown = (score > threshold) & np.isfinite(person).all(axis=1)
        for a, b in spec.skeleton:
            if shown[a] and shown[b]:
                color = SIDE_COLORS[_limb_side(spec, a, b)]
                cv2.line(canvas, pt(person[a]), pt(person[b]), color, thickness, cv2.LINE_AA, shift)
        for k in np.flatnonzero(shown):
            color = SIDE_COLORS[spec.side(int(k))]
            cv2.circle(canvas, pt(person[k]), int(radius * unit), color, -1, cv2.LINE_AA, shift)
            cv2.circle(
                canvas, pt(person[k]), int(radius * unit), (255, 255, 255), 1, cv2.LINE_AA, shift
            )
    return canvas


def heatmap_image(
    heatmaps: np.ndarray, image: np.ndarray | None = None, alpha: float = 0.6
) -> np.ndarray:
    """The per-pixel maximum over keypoint channels (K, h, w) as a colour map, over ``image`` if given."""
    heat = np.asarray(heatmaps, dtype=np.float32).max(axis=0)
    heat = np.clip(heat, 0.0, 1.0)
    colored = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    if image is None:
        return np.ascontiguousarray(colored)
    h, w = image.shape[:2]
    colored = cv2.resize(colored, (w, h), interpolation=cv2.INTER_LINEAR)
    return cv2.addWeighted(image, 1.0 - alpha, colored, alpha, 0.0)


def image_grid(images: Sequence[np.ndarray], columns: int = 4, pad: int = 2) -> np.ndarray:
    """Tile equally sized (H, W, 3) images into one, row by row, with black gaps."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    h, w = images[0].shape[:2]
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    grid = np.zeros((rows * (h + pad) + pad, columns * (w + pad) + pad, 3), dtype=np.uint8)
    for i, img in enumerate(images):
        if img.shape[:2] != (h, w):
            img = cv2.resize(img, (w, h))
        r, c = divmod(i, columns)
        grid[
            pad + r * (h + pad) : pad + r * (h + pad) + h,
            pad + c * (w + pad) : pad + c * (w + pad) + w,
        ] = img
    return grid
