"""Shared test utilities."""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Mapping
from functools import cache
from pathlib import Path

import torch

from psapose.config import build_model, compose_config

ASSETS = Path(__file__).parent / "assets"
SHARED_DATA = Path(
    os.environ.get("PSAPOSE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


def deterministic_weights(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights that are a pure function of each tensor's name and shape.

    Any two models with the same state-dict names and shapes (psapose's and the
    official code's) get identical weights, so their outputs can be compared
    through a stored reference. BN statistics are random too, so every tensor matters.
    """
    out = {}
    for key, ref in state.items():
        if not ref.is_floating_point():
            out[key] = ref.clone()
            continue
        g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        if key.endswith("running_var"):
            t = torch.rand(ref.shape, generator=g) + 0.5
        elif key.endswith("running_mean"):
            t = torch.randn(ref.shape, generator=g) * 0.1
        elif ref.dim() >= 2:
            t = torch.randn(ref.shape, generator=g) / ref[0].numel() ** 0.5
        elif key.endswith("weight"):
            t = torch.rand(ref.shape, generator=g) + 0.5
        else:
            t = torch.randn(ref.shape, generator=g) * 0.1
        out[key] = t
    return out


def deterministic_input(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@cache
def official_manifest() -> dict[str, list]:
    """State-dict names and shapes recorded from the official HRNet pose and ImageNet
    classification models (leoxiaobin/deep-high-resolution-net.pytorch, HRNet/HRNet-Image-Classification)."""
    with gzip.open(ASSETS / "official_state_dict_manifest.json.gz", "rt") as f:
        return json.load(f)


def build(
    model: str, attention: str = "none", variant: str | None = None, placement: str = "all"
) -> torch.nn.Module:
    """A model from the project's configs, as ``tools/*.py model=... attention=...`` builds it."""
    overrides = [f"model={model}", f"attention={attention}", f"model.attention_blocks={placement}"]
    if variant:
        overrides.append(f"attention.variant={variant}")
    return build_model(compose_config(overrides))
