"""Horizontal flip of heatmaps and keypoints, for flip augmentation and flip testing.

``flip_indices[k]`` is the keypoint that ``k`` becomes under the flip
(:attr:`psapose.data.keypoint_spec.KeypointSpec.flip_indices`); a flip swaps pairs,
so it must be its own inverse, and then ``out[k] = in[flip_indices[k]]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .base import HeatmapCodec

__all__ = ["average_flip", "flip_heatmaps", "flip_keypoints"]


def _flip_index(flip_indices: Any, num_keypoints: int, device: torch.device) -> Tensor:
    index = torch.as_tensor(flip_indices, device=device).long()
    ok = index.dim() == 1 and len(index) == num_keypoints
    if ok and num_keypoints:
        ok = bool(((index >= 0) & (index < num_keypoints)).all()) and bool(
            (index[index] == torch.arange(num_keypoints, device=device)).all()
        )
    if not ok:
        raise ValueError(
            f"flip_indices must reorder the {num_keypoints} keypoints and be its own inverse "
            f"(pairs swapped, others fixed), got {torch.as_tensor(flip_indices).tolist()}"
        )
    return index


def flip_heatmaps(
    heatmaps: Tensor, flip_indices: Any, channels_per_keypoint: int = 1, shift: bool = False
) -> Tensor:
    """Mirror heatmaps (..., K * c, H, W) along W and swap left/right keypoint channels.

    With ``c = 3`` (the UDP combined target ``[class, x_offset, y_offset]``) the triples
    are swapped together and the x offset changes sign. ``shift=True`` then moves the
    columns one pixel right as HRNet's flip test (``out[..., 1:] = out[..., :-1]``,
    column 0 kept), the correction for the standard mapping's half-stride offset;
    without it the function is its own inverse.
    """
    c = channels_per_keypoint
    if c not in (1, 3):
        raise ValueError(f"channels_per_keypoint must be 1 or 3, got {c!r}")
    if heatmaps.dim() < 3 or heatmaps.shape[-3] % c:
        raise ValueError(f"heatmaps must be (..., K*{c}, H, W), got {tuple(heatmaps.shape)}")
    num_keypoints = heatmaps.shape[-3] // c
    index = _flip_index(flip_indices, num_keypoints, heatmaps.device)
    if c == 3:
        index = (index[:, None] * 3 + torch.arange(3, device=heatmaps.device)).flatten()
    # Swap the channels with one index_select, then mirror: a single pass each (advanced
    # indexing of the mirrored maps took ~10x longer on the CPU).
    out = heatmaps.index_select(-3, index).flip(-1)
    if c == 3:
        out.unflatten(-3, (num_keypoints, 3))[..., 1, :, :].neg_()  # x offsets change sign
    if shift:
        out = torch.cat((out[..., :1], out[..., :-1]), dim=-1)
    return out


def flip_keypoints(
    keypoints: Tensor, visible_or_scores: Tensor, flip_indices: Any, width: float
) -> tuple[Tensor, Tensor]:
    """Mirror keypoints (..., K, 2) in an image ``width`` pixels wide and reorder them.

    ``x -> width - 1 - x`` (pixel centres at integers) and ``out[k] = in[flip_indices[k]]``
    for the keypoints and their visibilities or scores (..., K). Its own inverse.
    """
    keypoints = torch.as_tensor(keypoints)
    values = torch.as_tensor(visible_or_scores, device=keypoints.device)
    if keypoints.dim() < 2 or keypoints.shape[-1] != 2:
        raise ValueError(f"keypoints must be (..., K, 2), got {tuple(keypoints.shape)}")
    if values.shape != keypoints.shape[:-1]:
        raise ValueError(
            f"visible_or_scores must be {tuple(keypoints.shape[:-1])}, got {tuple(values.shape)}"
        )
    index = _flip_index(flip_indices, keypoints.shape[-2], keypoints.device)
    flipped = torch.stack((width - 1 - keypoints[..., 0], keypoints[..., 1]), dim=-1)
    return flipped[..., index, :], values[..., index]


def average_flip(
    heatmaps: Tensor, flipped_heatmaps: Tensor, flip_indices: Any, codec: HeatmapCodec
) -> Tensor:
    """Flip test: the mean of the model's heatmaps and those of the mirrored image, mirrored back.

    Uses ``codec.channels_per_keypoint`` and ``codec.flip_shift`` (HRNet's one-pixel
    shift for the standard mapping, none for UDP).
    """
    if heatmaps.shape != flipped_heatmaps.shape:
        raise ValueError(
            f"heatmaps {tuple(heatmaps.shape)} and flipped_heatmaps "
            f"{tuple(flipped_heatmaps.shape)} must have the same shape"
        )
    shift = codec.flip_shift
    back = flip_heatmaps(flipped_heatmaps, flip_indices, codec.channels_per_keypoint)
    if back.dtype != torch.result_type(heatmaps, back):
        if shift:
            back = torch.cat((back[..., :1], back[..., :-1]), dim=-1)
        return (heatmaps + back) * 0.5
    # (heatmaps + back) * 0.5 to the bit, without extra passes over the maps: ``back`` is a
    # fresh tensor, summed and halved in place; HRNet's shift (column w of the mirrored
    # maps moves to w + 1, column 0 stays) is folded into the sum instead of a copy.
    if not shift:
        return back.add_(heatmaps).mul_(0.5)
    out = torch.empty_like(back)
    torch.add(heatmaps[..., 1:], back[..., :-1], out=out[..., 1:])
    torch.add(heatmaps[..., :1], back[..., :1], out=out[..., :1])
    return out.mul_(0.5)
