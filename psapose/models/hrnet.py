"""HRNet for top-down pose estimation, with attention in its residual blocks.

Module names are those of the official pose code
(leoxiaobin/deep-high-resolution-net.pytorch, ``lib/models/pose_hrnet.py``):
``conv1``, ``bn1``, ``conv2``, ``bn2``, ``layer1``, ``transition1``,
``stage2.0.branches.0.0.conv1``, ``stage2.0.fuse_layers.0.1.0``, ...,
``final_layer``. With attention ``none`` the official pose checkpoints load with
``strict=True``; the backbone part of an ImageNet HRNet classification
checkpoint (``hrnet_w32-36af842e.pth``) loads by the same names.
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

__all__ = ["HighResolutionModule", "PoseHRNet"]


class HighResolutionModule(nn.Module):
    """Parallel branches of residual blocks followed by all-to-all fusion.

    ``fuse_layers[i][j]`` brings branch ``j`` to the resolution and width of
    branch ``i``: 1x1 conv + BN + nearest upsampling for ``j > i``, a chain of
    stride-2 3x3 convs for ``j < i``, nothing for ``j == i``. When
    ``multi_scale_output`` is false only the highest-resolution output is fused.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        num_blocks: Sequence[int],
        in_channels: Sequence[int],
        channels: Sequence[int],
        multi_scale_output: bool = True,
        attention: AttentionSpec | None = None,
    ) -> None:
        super().__init__()
        if not (len(num_blocks) == len(in_channels) == len(channels)):
            raise ValueError(
                f"HRNet module: num_blocks {list(num_blocks)}, in_channels {list(in_channels)} and "
                f"channels {list(channels)} must have one entry per branch"
            )
        self.num_branches = len(channels)
        self.multi_scale_output = multi_scale_output
        self.branches = nn.ModuleList(
            make_layer(block, in_channels[i], channels[i], num_blocks[i], attention=attention)
            for i in range(self.num_branches)
        )
        self.out_channels = [c * block.expansion for c in channels]
        self.fuse_layers = self._make_fuse_layers() if self.num_branches > 1 else None
        self.relu = nn.ReLU(inplace=True)

    def _make_fuse_layers(self) -> nn.ModuleList:
        ch = self.out_channels
        fuse_layers = []
        for i in range(self.num_branches if self.multi_scale_output else 1):
            row: list[nn.Module | None] = []
            for j in range(self.num_branches):
                if j > i:
                    row.append(
                        nn.Sequential(
                            nn.Conv2d(ch[j], ch[i], 1, 1, 0, bias=False),
                            nn.BatchNorm2d(ch[i], momentum=BN_MOMENTUM),
                            nn.Upsample(scale_factor=2 ** (j - i), mode="nearest"),
                        )
                    )
                elif j == i:
                    row.append(None)
                else:
                    steps = []
                    for k in range(i - j):
                        last = k == i - j - 1
                        out = ch[i] if last else ch[j]
                        step = [
                            nn.Conv2d(ch[j], out, 3, 2, 1, bias=False),
                            nn.BatchNorm2d(out, momentum=BN_MOMENTUM),
                        ]
                        if not last:
                            step.append(nn.ReLU(inplace=True))
                        steps.append(nn.Sequential(*step))
                    row.append(nn.Sequential(*steps))
            fuse_layers.append(nn.ModuleList(row))
        return nn.ModuleList(fuse_layers)

    def forward(self, x: list[torch.Tensor]) -> list[torch.Tensor]:
        x = [branch(xi) for branch, xi in zip(self.branches, x, strict=True)]
        if self.fuse_layers is None:
            return x
        fused = []
        for i, row in enumerate(self.fuse_layers):
            # Same summation order as the reference code, so outputs match bit for bit.
            y = x[0] if i == 0 else row[0](x[0])
            for j in range(1, self.num_branches):
                y = y + (x[j] if i == j else row[j](x[j]))
            fused.append(self.relu(y))
        return fused


class PoseHRNet(nn.Module):
    """HRNet-W{width} with a 1x1 heatmap head on the highest-resolution branch.

    Args:
        width: channels of the highest-resolution branch (32 for W32, 48 for W48);
            branch ``b`` has ``width * 2**b`` channels.
        num_keypoints: K, the number of keypoints.
        channels_per_keypoint: head outputs per keypoint (1 for heatmap codecs,
            3 for UDP's combined classification + offset target).
        attention: the attention block for the residual blocks (an
            :class:`AttentionSpec`, a mapping of its fields, a name such as
            ``"psa_parallel"``, or ``None``).
        attention_blocks: ``all`` (every BasicBlock and Bottleneck) or ``basic``
            (BasicBlocks only, as in the official PSA code).
        num_modules: HRNet modules in stages 2, 3, 4 (official: 1, 4, 3).
        num_blocks: BasicBlocks per branch in every module (official: 4).
        stem_blocks: Bottlenecks in ``layer1`` (official: 4).
        final_conv_kernel: kernel size of the head convolution (1 or 3).
        init: ``hrnet`` for the official N(0, 0.001) initialisation, ``default``
            to keep PyTorch's.

    ``forward`` maps ``[N, 3, H, W]`` images to ``[N, K*channels_per_keypoint, H/4, W/4]``.
    """

    backbone_prefixes = (
        "conv1", "bn1", "conv2", "bn2", "layer1",
        "transition1", "stage2", "transition2", "stage3", "transition3", "stage4",
    )  # fmt: skip
    head_prefixes = ("final_layer",)

    def __init__(
        self,
        width: int = 32,
        num_keypoints: int = 17,
        channels_per_keypoint: int = 1,
        attention: AttentionSpec | Mapping | str | None = None,
        attention_blocks: str = "all",
        num_modules: Sequence[int] = (1, 4, 3),
        num_blocks: int = 4,
        stem_blocks: int = 4,
        final_conv_kernel: int = 1,
        init: str = "hrnet",
    ) -> None:
        super().__init__()
        attention = as_attention_spec(attention)
        check_model_options(attention_blocks, final_conv_kernel, init)
        if len(num_modules) != 3:
            raise ValueError(
                f"num_modules needs one count per stage 2, 3, 4, got {list(num_modules)}"
            )
        self.width = width
        self.num_keypoints = num_keypoints
        self.channels_per_keypoint = channels_per_keypoint
        self.attention = attention
        self.attention_blocks = attention_blocks
        basic_attention = attention_for(BasicBlock, attention, attention_blocks)

        # Stem: two stride-2 3x3 convolutions, then Bottlenecks at 1/4 resolution.
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, momentum=BN_MOMENTUM)
        self.conv2 = nn.Conv2d(64, 64, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(64, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = make_layer(
            Bottleneck,
            64,
            64,
            stem_blocks,
            attention=attention_for(Bottleneck, attention, attention_blocks),
        )

        channels = [64 * Bottleneck.expansion]
        for stage, modules in enumerate(num_modules, start=2):
            branch_channels = [width * 2**b for b in range(stage)]
            setattr(
                self, f"transition{stage - 1}", self._make_transition(channels, branch_channels)
            )
            # Only the last module of stage 4 drops its lower-resolution outputs.
            stage_modules = [
                HighResolutionModule(
                    BasicBlock,
                    [num_blocks] * stage,
                    branch_channels,
                    branch_channels,
                    multi_scale_output=not (stage == 4 and m == modules - 1),
                    attention=basic_attention,
                )
                for m in range(modules)
            ]
            setattr(self, f"stage{stage}", nn.Sequential(*stage_modules))
            channels = branch_channels

        self.final_layer = heatmap_conv(
            width, num_keypoints, channels_per_keypoint, final_conv_kernel
        )
        if init == "hrnet":
            init_pose_weights(self)

    @staticmethod
    def _make_transition(in_channels: Sequence[int], out_channels: Sequence[int]) -> nn.ModuleList:
        layers: list[nn.Module | None] = []
        for i, out in enumerate(out_channels):
            if i < len(in_channels):
                if in_channels[i] == out:
                    layers.append(None)
                else:
                    layers.append(
                        nn.Sequential(
                            nn.Conv2d(in_channels[i], out, 3, 1, 1, bias=False),
                            nn.BatchNorm2d(out, momentum=BN_MOMENTUM),
                            nn.ReLU(inplace=True),
                        )
                    )
            else:
                # A new, lower-resolution branch grown from the lowest existing one.
                steps = []
                for k in range(i + 1 - len(in_channels)):
                    c_in = in_channels[-1]
                    c_out = out if k == i - len(in_channels) else c_in
                    steps.append(
                        nn.Sequential(
                            nn.Conv2d(c_in, c_out, 3, 2, 1, bias=False),
                            nn.BatchNorm2d(c_out, momentum=BN_MOMENTUM),
                            nn.ReLU(inplace=True),
                        )
                    )
                layers.append(nn.Sequential(*steps))
        return nn.ModuleList(layers)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Backbone features, highest resolution first (one per branch of the last module)."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        features = [self.layer1(x)]
        for stage in (2, 3, 4):
            transition = getattr(self, f"transition{stage - 1}")
            inputs = []
            for i, t in enumerate(transition):
                if t is None:
                    inputs.append(features[i])
                else:
                    # Existing branches change width in place; new ones grow from the lowest.
                    inputs.append(t(features[i] if i < len(features) else features[-1]))
            features = getattr(self, f"stage{stage}")(inputs)
        return features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_layer(self.forward_features(x)[0])
