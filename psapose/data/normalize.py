"""Device-side image conversion: uint8 NHWC batches to normalised float NCHW."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "normalize_images"]

# ImageNet statistics in RGB order; the official code applies them in whatever
# channel order it feeds (BGR for the SimpleBaseline ResNets), and so do we.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_images(
    images: torch.Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = True,
) -> torch.Tensor:
    """``(x / 255 - mean) / std`` of a uint8 (N, H, W, 3) batch, as (N, 3, H, W).

    Images travel from the workers as uint8 (a quarter of the bytes of float32)
    and are converted where the model runs. The NHWC batch permuted to NCHW
    is already channels-last in memory, which is kept unless
    ``channels_last=False``.
    """
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"expected a uint8 (N, H, W, 3) batch, got {tuple(images.shape)} {images.dtype}"
        )
    device = images.device if device is None else torch.device(device)
    x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).to(dtype)
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], device=device, dtype=dtype)
    shift = torch.tensor(
        [m / s for m, s in zip(mean, std, strict=True)], device=device, dtype=dtype
    )
    x = x.mul_(scale.view(1, 3, 1, 1)).sub_(shift.view(1, 3, 1, 1))
    return x if channels_last else x.contiguous()
