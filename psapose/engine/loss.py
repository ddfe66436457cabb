"""Heatmap losses with per-keypoint target weights."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["CombinedTargetMSELoss", "KeypointMSELoss", "build_loss"]


class KeypointMSELoss(nn.Module):
    """HRNet's ``JointsMSELoss``: ``0.5 * mean((w * (pred - target))^2)`` over batch, keypoints and pixels.

    ``weights`` (N, K) are the codec's target weights, optionally times the dataset's
    per-keypoint ``joint_weights`` (mmpose ``use_target_weight`` with joint weights).
    """

    def __init__(self, joint_weights: Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("joint_weights", joint_weights, persistent=False)

    def forward(self, heatmaps: Tensor, targets: Tensor, weights: Tensor) -> Tensor:
        w = weights if self.joint_weights is None else weights * self.joint_weights
        diff = (heatmaps.float() - targets) * w[:, :, None, None]
        return 0.5 * diff.pow(2).mean()


class CombinedTargetMSELoss(nn.Module):
    """UDP's combined-target loss (mmpose ``CombinedTargetMSELoss``).

    Per keypoint the channels are (class, x offset, y offset). The class map is
    compared as a heatmap; the offsets only where the target disc is (both
    multiplied by the target class map), each term halved and averaged over keypoints.
    """

    def __init__(self, joint_weights: Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("joint_weights", joint_weights, persistent=False)

    def forward(self, heatmaps: Tensor, targets: Tensor, weights: Tensor) -> Tensor:
        n, c, h, w_ = heatmaps.shape
        pred = heatmaps.float().view(n, c // 3, 3, h * w_)
        target = targets.view(n, c // 3, 3, h * w_)
        w = weights if self.joint_weights is None else weights * self.joint_weights
        w = w[:, :, None]
        disc = target[:, :, 0]
        loss = 0.5 * ((pred[:, :, 0] - disc) * w).pow(2).mean(dim=(0, 2))
        for axis in (1, 2):
            loss = loss + 0.5 * ((disc * (pred[:, :, axis] - target[:, :, axis])) * w).pow(2).mean(
                dim=(0, 2)
            )
        return loss.mean()


def build_loss(channels_per_keypoint: int, joint_weights: Tensor | None = None) -> nn.Module:
    """The loss that matches a codec's targets."""
    if channels_per_keypoint == 3:
        return CombinedTargetMSELoss(joint_weights)
    return KeypointMSELoss(joint_weights)
