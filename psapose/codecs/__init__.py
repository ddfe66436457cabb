"""Heatmap codecs: keypoints in input-image pixels <-> training targets and back, batched in torch.

=================  ==================  =========  =======================================
codec              encoding            mapping    decoding
=================  ==================  =========  =======================================
``MSRAHeatmap``    HRNet Gaussian      stride     argmax + quarter pixel (HRNet)
``DarkHeatmap``    unbiased Gaussian   stride     argmax + blur + Taylor (DarkPose)
``UDPHeatmap``     UDP Gaussian        size - 1   argmax + DARK-UDP (mmpose)
``UDPCombined``    disc + offsets      size - 1   blurred argmax + offsets (mmpose)
=================  ==================  =========  =======================================

Build one from the ``codec`` config group (``configs/codec/*.yaml``) with
``hydra.utils.instantiate(cfg.codec)``.
"""

from .base import HeatmapCodec
from .flip import average_flip, flip_heatmaps, flip_keypoints
from .msra import DarkHeatmap, MSRAHeatmap
from .ops import Peak, gaussian_blur, gaussian_kernel1d, heatmap_argmax
from .udp import UDPCombined, UDPHeatmap

__all__ = [
    "DarkHeatmap",
    "HeatmapCodec",
    "MSRAHeatmap",
    "Peak",
    "UDPCombined",
    "UDPHeatmap",
    "average_flip",
    "flip_heatmaps",
    "flip_keypoints",
    "gaussian_blur",
    "gaussian_kernel1d",
    "heatmap_argmax",
]
