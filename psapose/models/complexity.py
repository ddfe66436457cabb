"""Parameter and FLOP counts, in the paper's convention and as true multiply-adds.

*Paper convention*: the counter of the official HRNet code
(``lib/utils/utils.py: get_model_summary``), which the PSA paper's GFLOPs
follow. It adds, for every convolution (transposed ones included) and linear
layer called in a forward pass of one image, ``weight.numel() x output H x W``
(``output.numel() x in_features`` for linear layers), and divides by 2**30.
It ignores matrix products, pooling and element-wise work, and it counts a
stride-2 transposed convolution 4x (weights times the *upsampled* output size).

*True multiply-adds*: every multiply-add of convolutions (transposed ones at
their real cost), linear layers and matrix products, from
``torch.utils.flop_counter`` (its FLOPs / 2), in units of 10**9.

Both run on the ``meta`` device when the model is there, so even HRNet-W48 at
384x288 is counted without allocating a tensor.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from psapose.models.attention import reference_psa

__all__ = [
    "Complexity",
    "count_parameters",
    "measure_complexity",
    "paper_convention_macs",
    "paper_convention_macs_by_part",
    "true_macs",
]


@dataclass(frozen=True)
class Complexity:
    params: int
    paper_gflops: float  # convolution multiply-adds / 2**30, the HRNet counter
    true_gmacs: float  # all multiply-adds / 1e9


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _probe(model: nn.Module, input_size: tuple[int, int], in_channels: int) -> torch.Tensor:
    param = next(model.parameters())
    return torch.zeros(1, in_channels, *input_size, device=param.device, dtype=param.dtype)


def _run_eval(model: nn.Module, x: torch.Tensor) -> None:
    """One forward pass in eval mode, with PSA blocks on their reference path: the counts
    are those of the paper's formulation (the fast path computes the same function with
    fewer multiply-adds, and without the 1x1 convolutions the paper counts)."""
    was_training = model.training
    model.eval()
    try:
        with reference_psa(model), torch.no_grad():
            model(x)
    finally:
        model.train(was_training)


_COUNTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear)


def paper_convention_macs_by_part(
    model: nn.Module, input_size: tuple[int, int], in_channels: int = 3
) -> dict[str, int]:
    """Multiply-adds as the HRNet repository's counter reports them (see module docstring),
    per top-level part of the model (``layer1``, ``stage2``, ``final_layer``, ...)."""
    totals: dict[str, int] = defaultdict(int)

    def hook(part: str, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if isinstance(module, nn.Linear):
            totals[part] += output.numel() * inputs[0].shape[1]
        else:
            totals[part] += module.weight.numel() * output.shape[2:].numel()

    handles = [
        m.register_forward_hook(partial(hook, name.split(".", 1)[0]))
        for name, m in model.named_modules()
        if isinstance(m, _COUNTED)
    ]
    try:
        _run_eval(model, _probe(model, input_size, in_channels))
    finally:
        for h in handles:
            h.remove()
    return dict(totals)


def paper_convention_macs(
    model: nn.Module, input_size: tuple[int, int], in_channels: int = 3
) -> int:
    """Multiply-adds as the HRNet repository's counter reports them (see module docstring)."""
    return sum(paper_convention_macs_by_part(model, input_size, in_channels).values())


def true_macs(model: nn.Module, input_size: tuple[int, int], in_channels: int = 3) -> int:
    """Every multiply-add of convolutions, linear layers and matrix products for one image."""
    with FlopCounterMode(display=False) as counter:
        _run_eval(model, _probe(model, input_size, in_channels))
    return counter.get_total_flops() // 2


def measure_complexity(
    model: nn.Module, input_size: tuple[int, int], in_channels: int = 3
) -> Complexity:
    """Parameters and both FLOP counts for one ``input_size`` = (height, width) image."""
    return Complexity(
        params=count_parameters(model),
        paper_gflops=paper_convention_macs(model, input_size, in_channels) / 2**30,
        true_gmacs=true_macs(model, input_size, in_channels) / 1e9,
    )
