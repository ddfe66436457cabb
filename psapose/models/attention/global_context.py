"""Global Context (GCNet, Cao et al. 2019), a channel-attention peer of PSA (the paper's Table 1)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["GlobalContext"]


class GlobalContext(nn.Module):
    """Global Context block (GCNet): softmax attention pooling, a LayerNorm
    bottleneck transform, and additive fusion. Parameter names follow mmcv's
    ``ContextBlock`` (``conv_mask``, ``channel_add_conv``); the last convolution
    starts at zero so the block starts as the identity."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.conv_mask = nn.Conv2d(channels, 1, kernel_size=1)
        self.channel_add_conv = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1),
            nn.LayerNorm([hidden, 1, 1]),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, kernel_size=1),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_normal_(self.conv_mask.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.conv_mask.bias)
        nn.init.zeros_(self.channel_add_conv[-1].weight)
        nn.init.zeros_(self.channel_add_conv[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = self.conv_mask(x).flatten(2).softmax(dim=2)  # [N, 1, HW]
        context = torch.matmul(x.flatten(2), mask.transpose(1, 2)).unsqueeze(-1)  # [N, C, 1, 1]
        return x + self.channel_add_conv(context)
