"""UDP heatmaps (Huang et al., *The Devil is in the Details*, 2020), as in mmpose ``UDPHeatmap``.

Both codecs use UDP's unit-length mapping ``x_hm = x_in * (W_hm - 1) / (W_in - 1)``,
so an encoded target flips exactly with ``x_in -> W_in - 1 - x_in`` (no flip shift).

* :class:`UDPHeatmap`: mmpose ``generate_udp_gaussian_heatmaps`` (sub-pixel Gaussian in
  a 6-sigma patch around the rounded position), decoded by the argmax and mmpose
  ``refine_keypoints_dark_udp``.
* :class:`UDPCombined`: UDP's combined target, a binary disc plus x / y offset maps
  per keypoint, decoded as mmpose ``UDPHeatmap(heatmap_type='combined')``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .base import HeatmapCodec, default_blur_kernel, default_sigma, positive_number
from .ops import (
    Peak,
    check_kernel_size,
    gaussian_blur,
    gaussian_targets,
    heatmap_argmax,
    modulated_values,
    read_pixels,
    window_in_map,
)

__all__ = ["UDPCombined", "UDPHeatmap", "refine_dark_udp"]

# float32 machine epsilon, added to the Hessian's diagonal by mmpose.
_EPS32 = float(torch.finfo(torch.float32).eps)

# (dy, dx) of the pixels refine_keypoints_dark_udp reads: i_, ix1, iy1, ix1y1, ix1_y1_, ix1_, iy1_
_UDP_TAPS = ((0, 0), (0, 1), (1, 0), (1, 1), (-1, -1), (0, -1), (-1, 0))

# mmpose clips the blurred, rescaled map to this range before its log.
_UDP_CLIP = (1e-3, 50.0)


def refine_dark_udp(heatmaps: Tensor, peak: Peak, kernel_size: int) -> Tensor:
    """mmpose ``refine_keypoints_dark_udp``: one Newton step on the log of the blurred map.

    Blur as mmpose ``gaussian_blur`` (zero padding, rescaled to each map's maximum),
    clip to [1e-3, 50], log, pad one pixel with edge values, then mmpose's finite
    differences (one-pixel steps, its 8-term ``dxy``) and ``-(H + eps I)^-1 g``, with
    eps float32's epsilon; all in float64 (mmpose: float32 values, float64 inverse).
    Applied at every peak with a positive maximum (mmpose also refines the -1
    placeholder of the others; we leave them at 0). Returns (..., 2) float64 offsets.
    """
    v = modulated_values(
        heatmaps, peak, kernel_size, _UDP_TAPS, clamp_to_map=True, value_range=_UDP_CLIP
    )
    i_, ix1, iy1, ix1y1, ix1_y1_, ix1_, iy1_ = v.clamp(*_UDP_CLIP).log().unbind(-1)
    dx = 0.5 * (ix1 - ix1_)
    dy = 0.5 * (iy1 - iy1_)
    dxx = ix1 - 2 * i_ + ix1_
    dyy = iy1 - 2 * i_ + iy1_
    dxy = 0.5 * (ix1y1 - ix1 - iy1 + i_ + i_ - ix1_ - iy1_ + ix1_y1_)
    a, d = dxx + _EPS32, dyy + _EPS32
    det = a * d - dxy * dxy
    # mmpose's np.linalg.inv raises on a singular Hessian; we skip the step there instead.
    apply = peak.found & (det != 0)
    det = torch.where(apply, det, 1.0)
    offset = torch.stack((d * dx - dxy * dy, a * dy - dxy * dx), dim=-1) / det[..., None]
    return torch.where(apply[..., None], -offset, 0.0)


class UDPHeatmap(HeatmapCodec):
    """UDP Gaussian heatmaps with DARK-UDP decoding (mmpose ``UDPHeatmap``, 'gaussian').

    Encoding: ``mu = int(x_hm + 0.5)``; the joint is dropped (weight 0, zero map) when
    unlabelled or when the window ``[mu - 3 sigma, mu + 3 sigma + 1)`` misses the map;
    otherwise ``exp(-((x - x_hm)^2 + (y - y_hm)^2) / (2 sigma^2))`` on pixels within
    ``3 sigma`` of ``mu`` on both axes, centred on the sub-pixel position (for a
    non-integer ``3 sigma`` mmpose's patch is lopsided; see :class:`~psapose.codecs.MSRAHeatmap`).

    Decoding: argmax (score = the maximum before blurring) and
    :func:`refine_dark_udp`; keypoints returned as ``x_hm * (W_in - 1) / (W_hm - 1)``.

    Args:
        input_size: (H, W) of the network input.
        heatmap_size: (H, W); default ``input_size // 4``.
        sigma: Gaussian sigma in heatmap pixels; default ``2 * H_hm / 64``.
        blur_kernel: odd blur size; default about ``6 sigma - 1`` (11 at sigma 2, 17 at 3).
    """

    use_udp = True
    flip_shift = False

    def __init__(
        self,
        input_size: Any,
        heatmap_size: Any = None,
        sigma: float | None = None,
        blur_kernel: int | None = None,
    ) -> None:
        super().__init__(input_size, heatmap_size)
        if sigma is None:
            sigma = default_sigma(self.heatmap_size[0])
        self.sigma = positive_number("sigma", sigma)
        if blur_kernel is None:
            blur_kernel = default_blur_kernel(self.sigma)
        self.blur_kernel = check_kernel_size("blur_kernel", blur_kernel)

    def _encode(self, keypoints: Tensor, visible: Tensor) -> tuple[Tensor, Tensor]:
        radius = 3 * self.sigma
        mu = (keypoints + 0.5).trunc()  # .astype(np.int64): truncation toward zero
        keep = visible & window_in_map(mu, radius, self.heatmap_size, truncate=True)
        targets = gaussian_targets(keypoints, self.sigma, self.heatmap_size, keep, mu, radius)
        return targets, keep

    def _decode(self, heatmaps: Tensor) -> tuple[Tensor, Tensor]:
        peak = heatmap_argmax(heatmaps)
        return peak.coords + refine_dark_udp(heatmaps, peak, self.blur_kernel), peak.score

    def _extra_repr(self) -> dict[str, Any]:
        return {"sigma": self.sigma, "blur_kernel": self.blur_kernel}


class UDPCombined(HeatmapCodec):
    """UDP's combined classification + offset target (mmpose ``UDPHeatmap``, 'combined').

    Three channels per keypoint, ``[class, x_offset, y_offset]`` (``(K, 3, H, W)``
    flattened to ``(K * 3, H, W)``), with ``r = radius_factor * H_hm`` (3.5 px at 64):
    ``class = 1`` where ``((x_hm - x)^2 + (y_hm - y)^2) / r^2 <= 1``, and
    ``x_offset = (x_hm - x) / r``, ``y_offset = (y_hm - y) / r`` over the whole map (as
    UDP-Pose; mmpose 1.x zeroes them outside the disc). A joint is kept when labelled
    and ``int(x_hm + 0.5)``, ``int(y_hm + 0.5)`` lie in the map; others get weight 0
    and zero maps.

    Decoding as mmpose: blur the class maps (cv2 kernel ``blur_kernel``, default
    ``2 * 11 + 1``, cv2's default reflect-101 border, no rescale), argmax (scores are
    the blurred maxima), add ``r *`` the offsets read at the argmax pixel. mmpose also
    blurs the offset maps (kernel 11); ``offset_blur_kernel=11`` does that, the default
    ``None`` reads them as predicted.

    Args:
        input_size: (H, W) of the network input.
        heatmap_size: (H, W); default ``input_size // 4``.
        radius_factor: disc radius and offset unit as a fraction of the heatmap height.
        blur_kernel: odd blur size for the class maps; default 23.
        offset_blur_kernel: odd blur size for the offset maps, or None for no blur.
    """

    channels_per_keypoint = 3
    use_udp = True
    flip_shift = False

    def __init__(
        self,
        input_size: Any,
        heatmap_size: Any = None,
        radius_factor: float = 0.0546875,
        blur_kernel: int | None = None,
        offset_blur_kernel: int | None = None,
    ) -> None:
        super().__init__(input_size, heatmap_size)
        self.radius_factor = positive_number("radius_factor", radius_factor)
        self.radius = self.radius_factor * self.heatmap_size[0]
        self.blur_kernel = check_kernel_size(
            "blur_kernel", 2 * 11 + 1 if blur_kernel is None else blur_kernel
        )
        self.offset_blur_kernel = (
            None
            if offset_blur_kernel is None
            else check_kernel_size("offset_blur_kernel", offset_blur_kernel)
        )

    def _encode(self, keypoints: Tensor, visible: Tensor) -> tuple[Tensor, Tensor]:
        height, width = self.heatmap_size
        mu = (keypoints + 0.5).trunc()
        limit = mu.new_tensor([width, height])
        keep = visible & ((mu >= 0) & (mu < limit)).all(dim=-1)
        # Offsets in float64 (the class test compares them with 1), rounded once to float32.
        pixels_x = torch.arange(width, dtype=torch.float64, device=mu.device)
        pixels_y = torch.arange(height, dtype=torch.float64, device=mu.device)
        x_off = (keypoints[..., 0:1] - pixels_x) / self.radius  # (N, K, W)
        y_off = (keypoints[..., 1:2] - pixels_y) / self.radius  # (N, K, H)
        # Zero the dropped joints per axis (where, not a product: their coordinates may be NaN).
        x_off = torch.where(keep[..., None], x_off, 0.0)
        y_off = torch.where(keep[..., None], y_off, 0.0)
        disc = x_off.square()[..., None, :] + y_off.square()[..., :, None] <= 1
        disc &= keep[..., None, None]
        shape = (*keypoints.shape[:2], height, width)
        targets = torch.stack(
            (
                disc.float(),
                x_off.float()[..., None, :].expand(shape),
                y_off.float()[..., :, None].expand(shape),
            ),
            dim=2,
        )
        return targets.flatten(1, 2), keep

    def _decode(self, heatmaps: Tensor) -> tuple[Tensor, Tensor]:
        classes, x_off, y_off = heatmaps[:, 0::3], heatmaps[:, 1::3], heatmaps[:, 2::3]
        blurred = gaussian_blur(classes, self.blur_kernel, border="reflect")
        peak = heatmap_argmax(blurred)
        if self.offset_blur_kernel is not None:
            x_off = gaussian_blur(x_off, self.offset_blur_kernel, border="reflect")
            y_off = gaussian_blur(y_off, self.offset_blur_kernel, border="reflect")
        offsets = torch.stack(
            (
                read_pixels(x_off, peak.iy, peak.ix)[..., 0],
                read_pixels(y_off, peak.iy, peak.ix)[..., 0],
            ),
            dim=-1,
        )
        offsets = torch.where(peak.found[..., None], offsets * self.radius, 0.0)
        return peak.coords + offsets, peak.score

    def _extra_repr(self) -> dict[str, Any]:
        return {
            "radius_factor": self.radius_factor,
            "blur_kernel": self.blur_kernel,
            "offset_blur_kernel": self.offset_blur_kernel,
        }
