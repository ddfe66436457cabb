"""The heatmap codec interface: keypoints in input-image pixels <-> heatmaps, batched in torch.

A codec owns the two sizes and the coordinate mapping between them, so the data
pipeline, the loss and the evaluation never convert coordinates themselves:

* standard (MSRA, DARK): ``x_hm = x_in * W_hm / W_in`` (stride 4), HRNet ``generate_target``;
* UDP: ``x_hm = x_in * (W_hm - 1) / (W_in - 1)``, the same for y with the heights.

Pixel centres are at integer coordinates (as ``cv2.warpAffine``), in both spaces.
``decode`` returns input-image coordinates consistent with ``encode``; for UDP that is
``x_hm * (W_in - 1) / (W_hm - 1)``, where mmpose returns ``x_hm / (W_hm - 1) * W_in``
and compensates in its affine transform.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import Tensor

__all__ = ["HeatmapCodec"]


def size_pair(name: str, value: Any) -> tuple[int, int]:
    """``value`` as (height, width) of positive integers, or a ValueError naming ``name``."""
    try:
        items = list(value)  # tuples, lists, OmegaConf ListConfig, arrays
    except TypeError:
        items = None
    if (
        isinstance(value, str | bytes)
        or items is None
        or len(items) != 2
        or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in items)
        or not all(v > 0 for v in items)
    ):
        raise ValueError(f"{name} must be two positive integers (height, width), got {value!r}")
    return int(items[0]), int(items[1])


def positive_number(name: str, value: Any) -> float:
    """``value`` as a finite float > 0, or a ValueError naming ``name``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def default_sigma(heatmap_height: int) -> float:
    """2 px at a 64-row heatmap, scaled with the height (3 at 96): the HRNet/UDP configs' sigmas."""
    return 2.0 * heatmap_height / 64


def default_blur_kernel(sigma: float) -> int:
    """About 6 sigma - 1, odd (11 at sigma 2, 17 at sigma 3): mmpose/DarkPose's BLUR_KERNEL settings."""
    return 2 * max(0, round(3 * sigma - 1)) + 1


class HeatmapCodec:
    """Base class: size checks, the coordinate mapping, batching and dtype handling.

    Subclasses set the class attributes and implement :meth:`_encode` (heatmap-pixel
    keypoints in float64) and :meth:`_decode` (float32 heatmaps, heatmap-pixel results).

    Attributes:
        input_size: (H, W) of the network input crop.
        heatmap_size: (H, W) of the heatmaps; ``input_size // 4`` by default.
        channels_per_keypoint: heatmap channels per keypoint (3 for the UDP combined target).
        use_udp: whether the data pipeline must crop with UDP's affine (scale by size - 1).
        flip_shift: whether flip testing shifts flipped heatmaps one pixel right (HRNet).
    """

    channels_per_keypoint: int = 1
    use_udp: bool = False
    flip_shift: bool = True

    def __init__(self, input_size: Any, heatmap_size: Any = None) -> None:
        self.input_size = size_pair("input_size", input_size)
        if heatmap_size is None:
            heatmap_size = (self.input_size[0] // 4, self.input_size[1] // 4)
            if min(heatmap_size) < 1:
                raise ValueError(
                    f"input_size {self.input_size} is too small for the default heatmap_size "
                    f"input_size // 4; give heatmap_size"
                )
        self.heatmap_size = size_pair("heatmap_size", heatmap_size)
        if any(h > i for h, i in zip(self.heatmap_size, self.input_size, strict=True)):
            raise ValueError(
                f"heatmap_size {self.heatmap_size} must not exceed input_size {self.input_size}"
            )
        if self.use_udp and min(self.heatmap_size) < 2:
            # UDP measures both spaces by size - 1.
            raise ValueError(
                f"heatmap_size must be at least 2 x 2 for UDP codecs, got {self.heatmap_size}"
            )
        # x_hm = x_in * num / den per axis (x, y), with integer num and den so that a float32
        # coordinate times num is exact in float64 and the mapping rounds once.
        (h_hm, w_hm), (h_in, w_in) = self.heatmap_size, self.input_size
        if self.use_udp:
            self._num, self._den = (w_hm - 1, h_hm - 1), (w_in - 1, h_in - 1)
        else:
            self._num, self._den = (w_hm, h_hm), (w_in, h_in)

    # ------------------------------------------------------------------ coordinates
    def to_heatmap(self, keypoints: Tensor) -> Tensor:
        """Input-image pixels (..., 2) -> heatmap pixels (..., 2), float64."""
        kp = torch.as_tensor(keypoints).double()
        return kp * kp.new_tensor(self._num) / kp.new_tensor(self._den)

    def to_input(self, keypoints: Tensor) -> Tensor:
        """Heatmap pixels (..., 2) -> input-image pixels (..., 2), float32."""
        kp = torch.as_tensor(keypoints).double()
        return (kp * kp.new_tensor(self._den) / kp.new_tensor(self._num)).float()

    # ------------------------------------------------------------------ public API
    def encode(self, keypoints: Tensor, visible: Tensor) -> tuple[Tensor, Tensor]:
        """Training targets for keypoints in input-image pixels.

        Args:
            keypoints: (N, K, 2) or (K, 2) (x, y), pixel centres at integers.
            visible: (N, K) or (K,); > 0 means labelled.

        Returns:
            targets (N, K * c, H, W) float32 and weights (N, K) float32 (1 for a labelled
            joint whose target lies in the map, else 0 with an all-zero target), on the
            keypoints' device; unbatched in, unbatched out.
        """
        kp = torch.as_tensor(keypoints)
        vis = torch.as_tensor(visible, device=kp.device)
        unbatched = kp.dim() == 2
        if unbatched:
            kp, vis = kp[None], vis[None]
        if kp.dim() != 3 or kp.shape[-1] != 2:
            raise ValueError(f"keypoints must be (N, K, 2) or (K, 2), got {tuple(kp.shape)}")
        if vis.shape != kp.shape[:2]:
            raise ValueError(
                f"visible must be {tuple(kp.shape[:2])} to match keypoints, got {tuple(vis.shape)}"
            )
        targets, keep = self._encode(self.to_heatmap(kp), vis > 0)
        weights = keep.float()
        return (targets[0], weights[0]) if unbatched else (targets, weights)

    def decode(self, heatmaps: Tensor) -> tuple[Tensor, Tensor]:
        """Keypoints in input-image pixels from heatmaps (any float dtype, computed in float32).

        Args:
            heatmaps: (N, K * c, H, W) or (K * c, H, W), (H, W) = ``heatmap_size``.

        Returns:
            keypoints (N, K, 2) float32 and scores (N, K) float32 (unbatched in, unbatched out).
        """
        hm = torch.as_tensor(heatmaps)
        unbatched = hm.dim() == 3
        if unbatched:
            hm = hm[None]
        c = self.channels_per_keypoint
        if hm.dim() != 4 or hm.shape[1] % c:
            raise ValueError(
                f"heatmaps must be (N, K*{c}, H, W) or (K*{c}, H, W), got {tuple(hm.shape)}"
            )
        if tuple(hm.shape[-2:]) != self.heatmap_size:
            raise ValueError(
                f"heatmaps are {tuple(hm.shape[-2:])} but this codec's heatmap_size is {self.heatmap_size}"
            )
        keypoints, scores = self._decode(hm.float())
        keypoints, scores = self.to_input(keypoints), scores.float()
        return (keypoints[0], scores[0]) if unbatched else (keypoints, scores)

    # ------------------------------------------------------------------ subclass hooks
    def _encode(self, keypoints: Tensor, visible: Tensor) -> tuple[Tensor, Tensor]:
        """(N, K, 2) float64 heatmap pixels, (N, K) bool -> targets (N, K*c, H, W), kept (N, K) bool."""
        raise NotImplementedError

    def _decode(self, heatmaps: Tensor) -> tuple[Tensor, Tensor]:
        """(N, K*c, H, W) float32 -> keypoints (N, K, 2) in heatmap pixels, scores (N, K)."""
        raise NotImplementedError

    def _extra_repr(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        fields = {"input_size": self.input_size, "heatmap_size": self.heatmap_size}
        fields.update(self._extra_repr())
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in fields.items())})"
