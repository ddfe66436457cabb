"""Drawing keypoints and skeletons by the dataset's keypoint spec."""

from __future__ import annotations

import numpy as np
import pytest

from psapose.data import load_keypoint_spec
from psapose.visualize import SIDE_COLORS, draw_poses, heatmap_image, image_grid

SPEC = load_keypoint_spec("coco")


def test_draw_poses_colours_keypoints_by_side_and_skips_low_scores():
    image = np.zeros((200, 160, 3), np.uint8)
    kps = np.stack([np.linspace(20, 140, 17), np.linspace(20, 180, 17)], axis=1)
    scores = np.full(17, 0.9)
    scores[16] = 0.1  # right ankle below the threshold
    out = draw_poses(image, kps, scores, SPEC, threshold=0.3, radius=3)
    assert image.max() == 0, "the input must not be modified"
    nose, left_eye, right_eye = (tuple(np.round(kps[k]).astype(int)) for k in (0, 1, 2))
    assert tuple(out[nose[1], nose[0]]) == SIDE_COLORS["center"]
    assert tuple(out[left_eye[1], left_eye[0]]) == SIDE_COLORS["left"]
    assert tuple(out[right_eye[1], right_eye[0]]) == SIDE_COLORS["right"]
    x, y = np.round(kps[16]).astype(int)
    assert out[y - 2 : y + 3, x - 2 : x + 3].max() == 0
    # Limbs: left_hip-left_knee in the left colour, the hips' link in the centre colour.
    limbs = np.full((17, 2), np.nan)
    limbs[11], limbs[13], limbs[12] = (40, 40), (40, 160), (120, 40)
    out = draw_poses(image, limbs, None, SPEC, radius=3, thickness=3)
    assert tuple(out[100, 40]) == SIDE_COLORS["left"]
    assert tuple(out[40, 80]) == SIDE_COLORS["center"]


def test_draw_poses_batches_people_and_boxes():
    image = np.zeros((100, 100, 3), np.uint8)
    kps = np.full((2, 17, 2), np.nan)
    kps[0, 0], kps[1, 0] = (20, 30), (70, 80)
    out = draw_poses(image, kps, None, SPEC, boxes=np.array([[5, 5, 40, 40], [50, 50, 40, 40]]))
    assert (
        tuple(out[30, 20]) == SIDE_COLORS["center"] and tuple(out[80, 70]) == SIDE_COLORS["center"]
    )
    assert out[5, 20].min() > 100  # the white box edge


def test_heatmap_image_and_grid_shapes():
    heat = np.zeros((17, 8, 6), np.float32)
    heat[3, 2, 4] = 1.0
    small = heatmap_image(heat)
    assert small.shape == (8, 6, 3) and small[2, 4, 0] > 100  # red at the peak of the jet map
    over = heatmap_image(heat, np.zeros((32, 24, 3), np.uint8))
    assert over.shape == (32, 24, 3)
    grid = image_grid([np.full((4, 5, 3), i, np.uint8) for i in range(5)], columns=2, pad=1)
    assert (
        grid.shape == (3 * 5 + 1, 2 * 6 + 1, 3)
        and grid[1, 1, 0] == 0
        and grid[1 + 5, 1 + 6, 0] == 3
    )
    with pytest.raises(ValueError):
        image_grid([])
