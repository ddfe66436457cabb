"""Pose models: backbones with attention in their residual blocks, and heatmap heads."""

from .attention import (
    AttentionSpec,
    GlobalContext,
    PolarizedSelfAttention,
    SqueezeExcitation,
    as_attention_spec,
)
from .blocks import BasicBlock, Bottleneck, attention_blocks
from .hrnet import HighResolutionModule, PoseHRNet
from .resnet import PoseResNet

__all__ = [
    "AttentionSpec",
    "BasicBlock",
    "Bottleneck",
    "GlobalContext",
    "HighResolutionModule",
    "PolarizedSelfAttention",
    "PoseHRNet",
    "PoseResNet",
    "SqueezeExcitation",
    "as_attention_spec",
    "attention_blocks",
]
