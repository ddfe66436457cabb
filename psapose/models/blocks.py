"""Residual blocks with an attention slot.

Parameter names follow torchvision and the official HRNet pose code
(``conv1``, ``bn1``, ..., ``downsample.0``), so their checkpoints load as they
are. The attention block, when there is one, is the submodule ``deattn`` (the
official PSA naming) and sits after the first 3x3 convolution and its BN+ReLU:
after ``conv1`` in a :class:`BasicBlock`, after ``conv2`` in a :class:`Bottleneck`.
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import AttentionSpec, GlobalContext

BN_MOMENTUM = 0.1


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        attention: AttentionSpec | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.deattn = attention.build(planes) if attention is not None else None
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        if self.deattn is not None:
            out = self.deattn(out)
        out = self.bn2(self.conv2(out))
        return self.relu(out + residual)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        attention: AttentionSpec | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        # Stride on the 3x3 convolution, as torchvision and the official pose code do.
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.deattn = attention.build(planes) if attention is not None else None
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        if self.deattn is not None:
            out = self.deattn(out)
        out = self.bn3(self.conv3(out))
        return self.relu(out + residual)


BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {
    "basic": BasicBlock,
    "bottleneck": Bottleneck,
}


def make_layer(
    block: type[BasicBlock] | type[Bottleneck],
    inplanes: int,
    planes: int,
    num_blocks: int,
    stride: int = 1,
    attention: AttentionSpec | None = None,
) -> nn.Sequential:
    """``num_blocks`` blocks; the first one projects the shortcut when shape changes."""
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(planes * block.expansion, momentum=BN_MOMENTUM),
        )
    layers = [block(inplanes, planes, stride, downsample, attention)]
    inplanes = planes * block.expansion
    layers += [block(inplanes, planes, attention=attention) for _ in range(1, num_blocks)]
    return nn.Sequential(*layers)


def attention_for(
    block: type[BasicBlock] | type[Bottleneck], attention: AttentionSpec, attention_blocks: str
) -> AttentionSpec | None:
    """The spec a block of this type gets under the placement rule ``attention_blocks``.

    ``all`` puts attention in every residual block; ``basic`` only in BasicBlocks,
    which is what the official PSA code does.
    """
    if attention.kind == "none":
        return None
    if attention_blocks == "all" or (attention_blocks == "basic" and block is BasicBlock):
        return attention
    return None


def attention_blocks(model: nn.Module) -> dict[str, nn.Module]:
    """The attention block of every residual block that has one, by the block's name."""
    return {
        name: m.deattn
        for name, m in model.named_modules()
        if isinstance(m, (BasicBlock, Bottleneck)) and m.deattn is not None
    }


ATTENTION_PLACEMENTS = ("all", "basic")
INITS = ("hrnet", "default")


def check_model_options(attention_blocks: str, final_conv_kernel: int, init: str) -> None:
    """Validate the options every pose model shares."""
    if attention_blocks not in ATTENTION_PLACEMENTS:
        raise ValueError(
            f"attention_blocks must be one of {list(ATTENTION_PLACEMENTS)}, got {attention_blocks!r}"
        )
    if final_conv_kernel not in (1, 3):
        raise ValueError(f"final_conv_kernel must be 1 or 3, got {final_conv_kernel}")
    if init not in INITS:
        raise ValueError(f"init must be one of {list(INITS)}, got {init!r}")


def heatmap_conv(
    in_channels: int, num_keypoints: int, channels_per_keypoint: int, kernel: int
) -> nn.Conv2d:
    """The last layer of every head (``final_layer``): K x channels_per_keypoint outputs."""
    return nn.Conv2d(
        in_channels, num_keypoints * channels_per_keypoint, kernel, stride=1, padding=kernel // 2
    )


def init_pose_weights(module: nn.Module, std: float = 0.001) -> None:
    """The official HRNet/SimpleBaseline initialisation: every (transposed)
    convolution from N(0, std) with zero bias, every BatchNorm/LayerNorm at (1, 0).

    It covers attention blocks too, as the official PSA training code does; a
    parallel PSA block then starts close to the identity (both masks near 0.5).
    Global Context blocks then get GCNet's own recipe back (zero last
    convolution: exactly the identity).
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for m in module.modules():
        if isinstance(m, GlobalContext):
            m.reset_parameters()
