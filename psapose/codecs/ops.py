"""Batched heatmap arithmetic shared by the codecs.

Everything here works on tensors of any leading shape ``(..., H, W)``, on the
tensor's own device, without Python loops over instances or keypoints:

* :func:`gaussian_kernel1d` and :func:`gaussian_blur`: OpenCV's ``GaussianBlur``
  (``ksize=(k, k)``, ``sigma=0``) reproduced in torch, with zero padding (mmpose
  ``gaussian_blur``, DarkPose) or cv2's default ``BORDER_REFLECT_101``.
* :func:`heatmap_argmax`: the integer peak and its value (HRNet ``get_max_preds``).
* :func:`read_pixels`: values at integer offsets from the peak, edge-clamped.
* :func:`local_blur` and :func:`modulated_values`: the blurred, rescaled map of mmpose
  ``gaussian_blur`` around each peak, in float64, for the DARK and DARK-UDP steps.
* :func:`gaussian_targets` and :func:`window_in_map`: the Gaussian target and the
  "any part of the window in the map" rule of HRNet ``generate_target``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from functools import lru_cache
from typing import Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "Border",
    "Peak",
    "check_kernel_size",
    "gaussian_blur",
    "gaussian_kernel1d",
    "gaussian_targets",
    "heatmap_argmax",
    "local_blur",
    "modulated_values",
    "read_pixels",
    "window_in_map",
]

Border = Literal["zero", "reflect"]

# cv2.getGaussianKernel(n, sigma<=0) returns these fixed kernels for odd n <= 9 instead of
# sampling a Gaussian (OpenCV imgproc/src/smooth.dispatch.cpp, getGaussianKernelBitExact).
_SMALL_GAUSSIAN = {
    1: (1.0,),
    3: (0.25, 0.5, 0.25),
    5: (0.0625, 0.25, 0.375, 0.25, 0.0625),
    7: (0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125),
    9: tuple(v / 256 for v in (4, 13, 30, 51, 60, 51, 30, 13, 4)),
}


def check_kernel_size(name: str, value: object) -> int:
    """A positive odd integer, or a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive odd integer, got {value!r}")
    if value % 2 == 0:
        raise ValueError(f"{name} must be odd (the blur is centred on each pixel), got {value}")
    return int(value)


def gaussian_kernel1d(size: int) -> np.ndarray:
    """The weights of ``cv2.getGaussianKernel(size, 0)`` (OpenCV >= 4.2's bit-exact kernel).

    ``cv2.GaussianBlur(img, (size, size), 0)`` applies these, rounded to float32 for a
    float32 image. sigma = 0.3 * ((size - 1) / 2 - 1) + 0.8 (2.0 for 11, 3.2 for 17),
    computed by OpenCV as one fused ``0.15 * size + 0.35``; it samples half of the
    kernel, normalises by ``2 * sum(half) + 1`` and uses a fixed table for sizes 1-9.
    OpenCV's own polynomial ``exp`` makes its float64 weights differ from these in the
    last bit; rounded to float32 they are identical (checked for sizes 1-199).
    """
    size = check_kernel_size("kernel size", size)
    if size in _SMALL_GAUSSIAN:
        return np.asarray(_SMALL_GAUSSIAN[size], dtype=np.float64)
    sigma = float(Fraction(size) * Fraction(0.15) + Fraction(0.35))  # fused multiply-add
    scale = -0.125 / (sigma * sigma)  # -0.5 / sigma^2 for x counted in half pixels
    half = [math.exp(float(x * x) * scale) for x in range(1 - size, 0, 2)]
    total = 0.0
    for value in half:  # sequential, as OpenCV
        total += value
    norm = 1.0 / (total * 2.0 + 1.0)
    side = [value * norm for value in half]
    return np.asarray([*side, norm, *side[::-1]], dtype=np.float64)


def _reflect101(index: int, n: int) -> int:
    """cv2.borderInterpolate(index, n, BORDER_REFLECT_101): ...2 1 | 0 1 2 ... n-1 | n-2..."""
    if n == 1:
        return 0
    while not 0 <= index < n:
        index = -index if index < 0 else 2 * (n - 1) - index
    return index


@lru_cache(maxsize=128)
def _blur_matrix_np(n: int, size: int, border: Border) -> np.ndarray:
    # out[i] = sum_j M[i, j] * in[j]: the 1-D blur with its border folded into a banded matrix,
    # so the whole 2-D blur is two matrix products (BLAS), much faster than a 1-channel conv.
    weights = gaussian_kernel1d(size).astype(np.float32)  # cv2's kernel for float32 images
    half = size // 2
    matrix = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        for tap in range(-half, half + 1):
            j = i + tap
            if border == "reflect":
                j = _reflect101(j, n)
            elif not 0 <= j < n:
                continue  # zero padding
            matrix[i, j] += weights[tap + half]
    return matrix


def gaussian_blur(heatmaps: Tensor, kernel_size: int, border: Border = "zero") -> Tensor:
    """``cv2.GaussianBlur(map, (k, k), 0)`` on every map of ``heatmaps`` (..., H, W), float32.

    ``border="zero"`` pads with zeros as mmpose ``gaussian_blur`` and DarkPose do (they
    blur a zero-padded copy); ``border="reflect"`` is cv2's default BORDER_REFLECT_101
    (mmpose UDPHeatmap 'combined' blurs the maps in place). Separable: rows, then
    columns, as OpenCV; agrees with cv2 to float32 rounding (~1e-7 of the peak).
    Runs as two matrix products at the process's float32 matmul precision: with TF32
    enabled the blur is ~1e-3 off, which only moves the rescale factor of
    :func:`modulated_values` (the Taylor step itself is computed in float64).
    """
    if border not in ("zero", "reflect"):
        raise ValueError(f"border must be 'zero' or 'reflect', got {border!r}")
    height, width = heatmaps.shape[-2:]
    x = heatmaps.float()
    rows = torch.from_numpy(_blur_matrix_np(width, kernel_size, border)).to(x.device)
    cols = torch.from_numpy(_blur_matrix_np(height, kernel_size, border)).to(x.device)
    return cols @ (x @ rows.T)


class Peak(NamedTuple):
    """The maximum of each map: integer pixel, value, and whether the value is positive."""

    ix: Tensor  # (...) long, column of the first maximum in row-major order (as np.argmax)
    iy: Tensor  # (...) long, row
    score: Tensor  # (...) the maximum value
    found: Tensor  # (...) bool, score > 0: get_max_preds zeroes the coordinates otherwise

    @property
    def coords(self) -> Tensor:
        """(..., 2) float32 (x, y), 0 where no positive maximum (HRNet ``get_max_preds``)."""
        xy = torch.stack((self.ix, self.iy), dim=-1).float()
        return torch.where(self.found[..., None], xy, 0.0)


_NUMPY_ARGMAX_DTYPES = (torch.float32, torch.float64)


def heatmap_argmax(heatmaps: Tensor) -> Peak:
    """Batched argmax over the last two dims (HRNet ``get_max_preds``, mmpose ``get_heatmap_maximum``).

    Ties go to the first maximum in row-major order, as ``np.argmax``.
    """
    width = heatmaps.shape[-1]
    flat = heatmaps.flatten(-2)
    if flat.device.type == "cpu" and flat.dtype in _NUMPY_ARGMAX_DTYPES and flat.numel():
        # NumPy's argmax is SIMD-vectorised, ~10x faster on the CPU than torch's
        # max-with-index; the same first-maximum rule (NaN counts as the maximum in both).
        index = torch.from_numpy(np.argmax(flat.detach().numpy(), axis=-1))
        score = flat.gather(-1, index[..., None])[..., 0]
    else:
        score, index = flat.max(dim=-1)
    return Peak(index % width, index.div(width, rounding_mode="floor"), score, score > 0)


def read_pixels(
    maps: Tensor, iy: Tensor, ix: Tensor, offsets: Sequence[tuple[int, int]] = ((0, 0),)
) -> Tensor:
    """``maps[..., iy + dy, ix + dx]`` for each ``(dy, dx)`` in ``offsets`` -> (..., len(offsets)).

    Indices are clamped to the map, which is reading an edge-padded map (mmpose
    ``refine_keypoints_dark_udp`` pads with ``mode='edge'``); callers that need the
    pixel inside the map guard for it themselves.
    """
    height, width = maps.shape[-2:]
    dy = torch.tensor([o[0] for o in offsets], device=maps.device)
    dx = torch.tensor([o[1] for o in offsets], device=maps.device)
    rows = (iy[..., None] + dy).clamp(0, height - 1)
    cols = (ix[..., None] + dx).clamp(0, width - 1)
    return maps.flatten(-2).gather(-1, rows * width + cols)


@lru_cache(maxsize=32)
def _local_band_np(kernel_size: int, reach: int) -> np.ndarray:
    # (2 reach + 1, span): row r holds the kernel at columns r .. r + k - 1 of the patch.
    weights = gaussian_kernel1d(kernel_size)
    band = np.zeros((2 * reach + 1, kernel_size + 2 * reach), dtype=np.float64)
    for r in range(2 * reach + 1):
        band[r, r : r + kernel_size] = weights
    return band


def local_blur(heatmaps: Tensor, iy: Tensor, ix: Tensor, kernel_size: int, reach: int) -> Tensor:
    """The zero-padded Gaussian blur of each map at the pixels within ``reach`` of (iy, ix), in float64.

    ``heatmaps`` (..., H, W), integer ``iy``/``ix`` (...). Returns (..., 2r+1, 2r+1) with
    ``out[..., reach + dy, reach + dx]`` the blurred value at ``(iy + dy, ix + dx)``. Only a
    ``(k + 2r)^2`` patch per map is read, so float64 costs nothing here.
    """
    height, width = heatmaps.shape[-2:]
    half = kernel_size // 2 + reach
    span = 2 * half + 1
    offsets = torch.arange(-half, half + 1, device=heatmaps.device)
    rows, cols = iy[..., None] + offsets, ix[..., None] + offsets
    inside = ((rows >= 0) & (rows < height))[..., :, None] & ((cols >= 0) & (cols < width))[..., None, :]  # fmt: skip
    index = rows.clamp(0, height - 1)[..., :, None] * width + cols.clamp(0, width - 1)[..., None, :]
    patch = heatmaps.flatten(-2).gather(-1, index.flatten(-2)).unflatten(-1, (span, span))
    patch = torch.where(inside, patch.double(), 0.0)
    band_t = torch.from_numpy(_local_band_np(kernel_size, reach)).to(heatmaps.device).T
    # Both passes as one matrix product each over all maps (band @ patch @ band.T would
    # broadcast into a batch of tiny products): columns first, then rows of the transpose.
    columns = patch @ band_t  # (..., span, 2r+1)
    return (columns.transpose(-1, -2) @ band_t).transpose(-1, -2)


@lru_cache(maxsize=32)
def _kernel_mass(kernel_size: int) -> float:
    # The sum of the 2-D float32 kernel: no blurred pixel exceeds the map's maximum times it.
    return float(gaussian_kernel1d(kernel_size).astype(np.float32).astype(np.float64).sum()) ** 2


# Relative slack on the bounds of the float32 blurred maximum: float32 rounding is ~1e-6;
# TF32 matmuls (see gaussian_blur) are ~1e-3 off.
_BLUR_SLACK = 4e-3


def modulated_values(
    heatmaps: Tensor,
    peak: Peak,
    kernel_size: int,
    taps: Sequence[tuple[int, int]],
    clamp_to_map: bool = False,
    value_range: tuple[float, float] | None = None,
) -> Tensor:
    """mmpose ``gaussian_blur`` (zero padding, each map rescaled to its original maximum) at peak + taps.

    Returns (..., len(taps)) float64, for ``(dy, dx)`` in ``taps``; ``clamp_to_map``
    reads an edge-padded map instead (mmpose ``refine_keypoints_dark_udp``). The values
    are blurred in float64 around the peak: the Taylor step divides by second
    differences of their logs, and float32 rounding alone moves it by up to ~1e-2 px
    where the log-Hessian is nearly singular (flat or noisy peaks).

    The rescale factor ``peak / blurred maximum`` needs the whole blurred map (in
    float32, as :func:`gaussian_blur`). With ``value_range=(lo, hi)``, the interval the
    caller clips the values to before taking their log, that blur is skipped for every
    map whose taps stay strictly inside ``(lo, hi)`` for any factor the blurred maximum
    allows: it lies between the blurred value at the peak and the peak times the
    kernel's sum. For those maps the clip does nothing and the factor cancels in the
    differences of the logs, so the caller's result is the same (to float64 rounding);
    their values are scaled by the factor's upper bound instead of the exact one. Only
    the other maps (non-positive or tiny taps, or values near ``hi``) are blurred whole.
    """
    height, width = heatmaps.shape[-2:]
    reach = max(max(abs(dy), abs(dx)) for dy, dx in taps)
    block = local_blur(heatmaps, peak.iy, peak.ix, kernel_size, reach)
    dy = torch.tensor([t[0] for t in taps], device=heatmaps.device)
    dx = torch.tensor([t[1] for t in taps], device=heatmaps.device)
    rows, cols = peak.iy[..., None] + dy, peak.ix[..., None] + dx
    if clamp_to_map:
        rows, cols = rows.clamp(0, height - 1), cols.clamp(0, width - 1)
    index = (
        (rows - peak.iy[..., None] + reach) * (2 * reach + 1) + cols - peak.ix[..., None] + reach
    )
    values = block.flatten(-2).gather(-1, index)
    score = peak.score.double()
    if value_range is None:
        ratio = torch.ones_like(score)
        exact = torch.ones_like(peak.found)
    else:
        low, high = value_range
        lower = block[..., reach, reach] * (1 - _BLUR_SLACK)  # <= the blurred maximum
        upper = score * (_kernel_mass(kernel_size) * (1 + _BLUR_SLACK))  # >= it (score > 0)
        ratio = torch.where(lower > 0, score / lower, 1.0)  # the factor's upper bound
        inside = (
            (lower > 0)
            & (values.amin(dim=-1) * (score / upper) > low)
            & (values.amax(dim=-1) * ratio < high)
        )
        # Without a positive maximum the caller discards the step: no factor is needed.
        exact = peak.found & ~inside
    if bool(exact.any()):
        which = exact.flatten().nonzero()[:, 0]
        maps = heatmaps.flatten(0, -3).index_select(0, which)
        blurred_max = gaussian_blur(maps, kernel_size, border="zero").amax(dim=(-2, -1)).double()
        # mmpose divides by the blurred maximum; an all-zero map would give 0/0 = NaN.
        factor = score.flatten()[which]
        factor = torch.where(blurred_max != 0, factor / blurred_max, 1.0)
        ratio = ratio.flatten().index_put((which,), factor).view_as(score)
    return values * ratio[..., None]


def window_in_map(centre: Tensor, radius: float, size: tuple[int, int], truncate: bool) -> Tensor:
    """HRNet ``generate_target``'s check that some of the Gaussian window is in the map.

    ``ul = centre - radius`` and ``br = centre + radius + 1`` (through Python ``int()``,
    i.e. truncation toward zero, when ``truncate``, as HRNet and mmpose's
    ``.astype(np.int64)``; raw floats for mmpose's unbiased encoding). The joint is out
    when ``ul >= size`` or ``br < 0`` on either axis. ``centre`` (..., 2) as (x, y);
    ``size`` (H, W). NaN centres count as out.
    """
    upper_left = centre - radius
    lower_right = centre + radius + 1
    if truncate:
        upper_left, lower_right = upper_left.trunc(), lower_right.trunc()
    limit = centre.new_tensor([size[1], size[0]])
    inside = (upper_left < limit) & (lower_right >= 0)
    return inside.all(dim=-1)


def gaussian_targets(
    centre: Tensor,
    sigma: float,
    size: tuple[int, int],
    keep: Tensor,
    window_centre: Tensor | None = None,
    window_radius: float = math.inf,
) -> Tensor:
    """Unnormalised Gaussians ``exp(-((x - cx)^2 + (y - cy)^2) / (2 sigma^2))`` at integer pixels.

    ``centre`` (..., 2) float64 (x, y) in heatmap pixels; ``keep`` (...) bool, False
    gives an all-zero map. With ``window_centre``, pixels farther than
    ``window_radius`` from it on either axis are 0 (HRNet ``generate_target``'s
    ``(2*tmp_size+1)^2`` patch). Returns (..., H, W) float32.

    The Gaussian is separable, so it is built as the outer product of per-axis
    profiles, computed in float64 from the float64 centre, each rounded to float32
    (within 2e-7 of HRNet's float32 ``exp`` of the summed squares).
    """
    height, width = size
    two_sigma2 = 2.0 * sigma * sigma
    profiles = []
    for axis, n in ((0, width), (1, height)):
        pixels = torch.arange(n, dtype=torch.float64, device=centre.device)
        d = pixels - centre[..., axis : axis + 1]
        profile = torch.exp(-(d * d) / two_sigma2)
        if window_centre is not None:
            outside = (pixels - window_centre[..., axis : axis + 1]).abs() > window_radius
            profile = profile.masked_fill(outside, 0.0)
        # where, not a product: an unlabelled joint may carry NaN or inf coordinates.
        profiles.append(torch.where(keep[..., None], profile, 0.0).float())
    gx, gy = profiles
    return gy[..., :, None] * gx[..., None, :]
