"""SimpleBaseline: a ResNet with a deconvolution heatmap head (Xiao et al. 2018).

Backbone names are torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
``layer4``), the head's those of the official pose code (``deconv_layers``,
``final_layer``). torchvision ImageNet weights initialise the backbone and the
official ``pose_resnet_*.pth`` checkpoints load with ``strict=True``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .attention import AttentionSpec, as_attention_spec
from .blocks import (
    BN_MOMENTUM,
    BasicBlock,
    Bottleneck,
    attention_for,
    check_model_options,
    heatmap_conv,
    init_pose_weights,
    make_layer,
)

__all__ = ["RESNET_SPECS", "PoseResNet"]

RESNET_SPECS: dict[int, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}

# kernel -> (padding, output_padding) that doubles the resolution exactly.
_DECONV_PADDING = {4: (1, 0), 3: (1, 1), 2: (0, 0)}


class PoseResNet(nn.Module):
    """ResNet-{depth} SimpleBaseline.

    Args:
        depth: 18, 34, 50, 101 or 152.
        num_keypoints: K, the number of keypoints.
        channels_per_keypoint: head outputs per keypoint (1, or 3 for UDP's combined target).
        attention: the attention block for the residual blocks (see :class:`AttentionSpec`).
        attention_blocks: ``all`` or ``basic`` (BasicBlocks only: none in ResNet-50/101/152).
        deconv_channels: output channels of each stride-2 transposed convolution.
        deconv_kernels: their kernel sizes (4, 3 or 2).
        final_conv_kernel: kernel size of the last convolution (1 or 3).
        init: ``hrnet`` for the official N(0, 0.001) initialisation, ``default`` for PyTorch's.

    ``forward`` maps ``[N, 3, H, W]`` images to ``[N, K*channels_per_keypoint, H/4, W/4]``
    with the default three deconvolutions.
    """

    backbone_prefixes = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")
    head_prefixes = ("deconv_layers", "final_layer")

    def __init__(
        self,
        depth: int = 50,
        num_keypoints: int = 17,
        channels_per_keypoint: int = 1,
        attention: AttentionSpec | Mapping | str | None = None,
        attention_blocks: str = "all",
        deconv_channels: Sequence[int] = (256, 256, 256),
        deconv_kernels: Sequence[int] = (4, 4, 4),
        final_conv_kernel: int = 1,
        init: str = "hrnet",
    ) -> None:
        super().__init__()
        if depth not in RESNET_SPECS:
            raise ValueError(f"ResNet depth must be one of {sorted(RESNET_SPECS)}, got {depth}")
        attention = as_attention_spec(attention)
        check_model_options(attention_blocks, final_conv_kernel, init)
        if len(deconv_channels) != len(deconv_kernels):
            raise ValueError(
                f"deconv_channels {list(deconv_channels)} and deconv_kernels {list(deconv_kernels)} differ in length"
            )
        bad = [k for k in deconv_kernels if k not in _DECONV_PADDING]
        if bad:
            raise ValueError(f"deconv_kernels must be 2, 3 or 4, got {bad}")
        self.depth = depth
        self.num_keypoints = num_keypoints
        self.channels_per_keypoint = channels_per_keypoint
        self.attention = attention
        self.attention_blocks = attention_blocks
        block, layers = RESNET_SPECS[depth]
        block_attention = attention_for(block, attention, attention_blocks)

        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = 64
        for i, (planes, count) in enumerate(zip((64, 128, 256, 512), layers, strict=True), start=1):
            stride = 1 if i == 1 else 2
            setattr(
                self,
                f"layer{i}",
                make_layer(block, inplanes, planes, count, stride, block_attention),
            )
            inplanes = planes * block.expansion

        deconv: list[nn.Module] = []
        for channels, kernel in zip(deconv_channels, deconv_kernels, strict=True):
            padding, output_padding = _DECONV_PADDING[kernel]
            deconv += [
                nn.ConvTranspose2d(inplanes, channels, kernel, stride=2, padding=padding,
                                   output_padding=output_padding, bias=False),
                nn.BatchNorm2d(channels, momentum=BN_MOMENTUM),
                nn.ReLU(inplace=True),
            ]  # fmt: skip
            inplanes = channels
        self.deconv_layers = nn.Sequential(*deconv)
        self.final_layer = heatmap_conv(
            inplanes, num_keypoints, channels_per_keypoint, final_conv_kernel
        )
        if init == "hrnet":
            init_pose_weights(self)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Backbone features at strides 4, 8, 16 and 32."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        features = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            features.append(x)
        return features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_layer(self.deconv_layers(self.forward_features(x)[-1]))
