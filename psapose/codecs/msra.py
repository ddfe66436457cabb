"""MSRA heatmaps (SimpleBaseline / HRNet) and their DARK variant.

* :class:`MSRAHeatmap`: HRNet ``generate_target`` (Gaussian at the rounded heatmap
  position inside a 6-sigma patch) or, with ``unbiased=True``, mmpose's unbiased
  Gaussian; decoded by the argmax and HRNet's quarter-pixel rule (``get_final_preds``).
* :class:`DarkHeatmap`: the unbiased encoding decoded by DarkPose's distribution-aware
  Taylor step (``gaussian_blur`` + ``taylor`` in DarkPose ``lib/core/inference.py``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .base import HeatmapCodec, default_blur_kernel, default_sigma, positive_number
from .ops import (
    Peak,
    check_kernel_size,
    gaussian_targets,
    heatmap_argmax,
    modulated_values,
    read_pixels,
    window_in_map,
)

__all__ = ["DarkHeatmap", "MSRAHeatmap", "refine_dark", "refine_quarter"]


def refine_quarter(heatmaps: Tensor, peak: Peak) -> Tensor:
    """HRNet ``get_final_preds`` post-processing: a quarter pixel toward the higher neighbour.

    Only where ``1 < px < W - 1 and 1 < py < H - 1`` (both axes, as HRNet; mmpose's
    ``refine_keypoints`` guards each axis separately). Returns (..., 2) float32 offsets.
    """
    height, width = heatmaps.shape[-2:]
    # (dy, dx): right, left, down, up
    v = read_pixels(heatmaps, peak.iy, peak.ix, ((0, 1), (0, -1), (1, 0), (-1, 0)))
    diff = torch.stack((v[..., 0] - v[..., 1], v[..., 2] - v[..., 3]), dim=-1)
    inside = (
        peak.found & (peak.ix > 1) & (peak.ix < width - 1) & (peak.iy > 1) & (peak.iy < height - 1)
    )
    return torch.where(inside[..., None], torch.sign(diff) * 0.25, 0.0)


# (dy, dx) of the pixels DarkPose's taylor() reads around the peak.
_TAYLOR_TAPS = (
    (0, 0),
    (0, 1),
    (0, -1),
    (1, 0),
    (-1, 0),
    (0, 2),
    (0, -2),
    (2, 0),
    (-2, 0),
    (1, 1),
    (-1, 1),
    (1, -1),
    (-1, -1),
)


def refine_dark(heatmaps: Tensor, peak: Peak, kernel_size: int) -> Tensor:
    """DarkPose ``get_final_preds``: blur, ``log(max(hm, 1e-10))``, one Newton step at the peak.

    The derivatives are DarkPose ``taylor``'s (central differences, the second ones
    over 2 px), taken only where ``1 < px < W - 2 and 1 < py < H - 2`` and the Hessian
    determinant is nonzero, and the step is ``-H^-1 g``; all in float64 from the
    float64 blurred values of :func:`~psapose.codecs.ops.modulated_values` (DarkPose
    blurs in float64 too, then stores float32). Returns (..., 2) float64 offsets.
    """
    height, width = heatmaps.shape[-2:]
    floor = 1e-10  # DarkPose's log(max(hm, 1e-10))
    v = modulated_values(heatmaps, peak, kernel_size, _TAYLOR_TAPS, value_range=(floor, math.inf))
    v = v.clamp_min(floor).log()
    c, xp, xm, yp, ym, xp2, xm2, yp2, ym2, pp, mp, pm, mm = v.unbind(-1)
    dx = 0.5 * (xp - xm)
    dy = 0.5 * (yp - ym)
    dxx = 0.25 * (xp2 - 2 * c + xm2)
    dxy = 0.25 * (pp - mp - pm + mm)
    dyy = 0.25 * (yp2 - 2 * c + ym2)
    det = dxx * dyy - dxy * dxy
    apply = (
        peak.found
        & (peak.ix > 1)
        & (peak.ix < width - 2)
        & (peak.iy > 1)
        & (peak.iy < height - 2)
        & (det != 0)
    )
    det = torch.where(apply, det, 1.0)
    offset = -torch.stack((dyy * dx - dxy * dy, dxx * dy - dxy * dx), dim=-1) / det[..., None]
    return torch.where(apply[..., None], offset, 0.0)


class MSRAHeatmap(HeatmapCodec):
    """Gaussian heatmaps with the standard (stride) mapping.

    Encoding (``unbiased=False``) follows HRNet ``generate_target``: ``mu = int(x_hm + 0.5)``,
    window ``ul = mu - 3 sigma``, ``br = mu + 3 sigma + 1``; a joint whose window lies
    wholly outside the map (``ul >= size`` or ``br < 0``) or that is unlabelled gets
    weight 0 and a zero map, else ``exp(-d^2 / (2 sigma^2))`` on pixels within
    ``3 sigma`` of ``mu`` on both axes. ``unbiased=True`` is mmpose
    ``generate_unbiased_gaussian_heatmaps`` (DarkPose): centred on the sub-pixel
    position, no patch, the window rule on the unrounded position.

    The patch is ``|x - mu| <= 3 sigma``: HRNet's when ``3 sigma`` is an integer (the
    default sigmas 2 and 3); for other sigmas HRNet's patch is lopsided and, clipped at
    the left or top edge, off-centre, which is not reproduced.

    Decoding: argmax (score = the maximum; coordinates 0 where it is <= 0) and HRNet's
    quarter-pixel rule.

    Args:
        input_size: (H, W) of the network input.
        heatmap_size: (H, W); default ``input_size // 4``.
        sigma: Gaussian sigma in heatmap pixels; default ``2 * H_hm / 64``.
        unbiased: centre the Gaussian on the sub-pixel position (DARK encoding).
    """

    def __init__(
        self,
        input_size: Any,
        heatmap_size: Any = None,
        sigma: float | None = None,
        unbiased: bool = False,
    ) -> None:
        super().__init__(input_size, heatmap_size)
        if sigma is None:
            sigma = default_sigma(self.heatmap_size[0])
        self.sigma = positive_number("sigma", sigma)
        if not isinstance(unbiased, bool):
            raise ValueError(f"unbiased must be true or false, got {unbiased!r}")
        self.unbiased = unbiased

    def _encode(self, keypoints: Tensor, visible: Tensor) -> tuple[Tensor, Tensor]:
        radius = 3 * self.sigma
        if self.unbiased:
            keep = visible & window_in_map(keypoints, radius, self.heatmap_size, truncate=False)
            targets = gaussian_targets(keypoints, self.sigma, self.heatmap_size, keep)
        else:
            mu = (keypoints + 0.5).trunc()  # Python int(): truncation toward zero
            keep = visible & window_in_map(mu, radius, self.heatmap_size, truncate=True)
            targets = gaussian_targets(mu, self.sigma, self.heatmap_size, keep, mu, radius)
        return targets, keep

    def _decode(self, heatmaps: Tensor) -> tuple[Tensor, Tensor]:
        peak = heatmap_argmax(heatmaps)
        return peak.coords + refine_quarter(heatmaps, peak), peak.score

    def _extra_repr(self) -> dict[str, Any]:
        return {"sigma": self.sigma, "unbiased": self.unbiased}


class DarkHeatmap(MSRAHeatmap):
    """DARK: the unbiased MSRA encoding, decoded with DarkPose's Taylor refinement.

    Decoding follows DarkPose ``get_final_preds``: argmax (scores are the maxima before
    blurring), mmpose/DarkPose ``gaussian_blur`` (cv2 kernel, zero padding, each map
    rescaled to its original maximum), ``log(max(hm, 1e-10))`` and ``taylor``.

    Args:
        input_size: (H, W) of the network input.
        heatmap_size: (H, W); default ``input_size // 4``.
        sigma: Gaussian sigma in heatmap pixels; default ``2 * H_hm / 64``.
        blur_kernel: odd blur size; default about ``6 sigma - 1`` (11 at sigma 2, 17 at 3).
    """

    def __init__(
        self,
        input_size: Any,
        heatmap_size: Any = None,
        sigma: float | None = None,
        blur_kernel: int | None = None,
    ) -> None:
        super().__init__(input_size, heatmap_size, sigma, unbiased=True)
        if blur_kernel is None:
            blur_kernel = default_blur_kernel(self.sigma)
        self.blur_kernel = check_kernel_size("blur_kernel", blur_kernel)

    def _decode(self, heatmaps: Tensor) -> tuple[Tensor, Tensor]:
        peak = heatmap_argmax(heatmaps)
        return peak.coords + refine_dark(heatmaps, peak, self.blur_kernel), peak.score

    def _extra_repr(self) -> dict[str, Any]:
        return {"sigma": self.sigma, "blur_kernel": self.blur_kernel}
