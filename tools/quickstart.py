#!/usr/bin/env python
"""Quick start: build the configured model, run it, and print its size and cost.

    python tools/quickstart.py                                  # the default (small HRNet + PSA)
    python tools/quickstart.py model=hrnet_w32 attention=psa_sequential input_size=[384,288]

Runs one forward and backward pass on a random batch and prints, per part of
the network, parameters and GFLOPs (paper convention) plus the totals.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from psapose.config import build_model, input_size
from psapose.models import attention_blocks
from psapose.models.complexity import paper_convention_macs_by_part, true_macs

log = logging.getLogger("quickstart")


def per_part_table(model: torch.nn.Module, size: tuple[int, int]) -> list[tuple[str, int, float]]:
    """(top-level part, parameters, paper-convention GFLOPs) for each part of the model that has weights."""
    params: dict[str, int] = defaultdict(int)
    for name, p in model.named_parameters():
        params[name.split(".", 1)[0]] += p.numel()
    macs = paper_convention_macs_by_part(model, size)
    return [(name, params[name], macs.get(name, 0) / 2**30) for name in params]


@hydra.main(config_path="../configs", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    size = input_size(cfg)
    log.info("resolved config in %s/.hydra/config.yaml", HydraConfig.get().runtime.output_dir)
    model = build_model(cfg)
    num_attention = len(attention_blocks(model))

    images = torch.randn(2, 3, *size)
    model.train()
    start = time.perf_counter()
    heatmaps = model(images)
    heatmaps.square().mean().backward()
    step_time = time.perf_counter() - start
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    finite = all(torch.isfinite(g).all() for g in grads)

    parts = per_part_table(model, size)  # one counting pass; the totals are its sums
    print(
        f"\n{type(model).__name__} ({cfg.model._target_}), attention {model.attention}, placement {model.attention_blocks}"
    )
    print(
        f"input {list(images.shape)} -> heatmaps {list(heatmaps.shape)}; {num_attention} attention blocks"
    )
    print(
        f"forward+backward on the CPU: {step_time * 1000:.0f} ms for a batch of 2; gradients finite: {finite}\n"
    )
    print(f"{'part':<14} {'parameters':>12} {'GFLOPs':>8}")
    print("-" * 36)
    for name, n_params, gflops in parts:
        print(f"{name:<14} {n_params:>12,} {gflops:>8.3f}")
    print("-" * 36)
    print(f"{'total':<14} {sum(p[1] for p in parts):>12,} {sum(p[2] for p in parts):>8.3f}")
    print(f"\nGFLOPs: convolution multiply-adds / 2^30 (the paper's convention); "
          f"all multiply-adds: {true_macs(model, size) / 1e9:.3f} G")  # fmt: skip
    if not finite:
        raise SystemExit("non-finite gradients")


if __name__ == "__main__":
    main()
