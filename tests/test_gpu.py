"""CUDA checks (run with `pytest -m gpu` on a machine with a GPU)."""

from __future__ import annotations

import pytest
import torch
from helpers import build, deterministic_input, deterministic_weights

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("variant", ["official", "paper"])
@pytest.mark.parametrize("attention", ["psa_parallel", "psa_sequential"])
def test_cuda_matches_cpu(attention: str, variant: str, monkeypatch) -> None:
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    model = build("quickstart", attention, variant)
    model.load_state_dict(deterministic_weights(model.state_dict()))
    model.eval()
    x = deterministic_input((2, 3, 128, 96))
    with torch.no_grad():
        reference = model(x)
        out = model.cuda()(x.cuda()).cpu()
    assert (out - reference).abs().max() <= 1e-4 * reference.abs().max()


@pytest.mark.parametrize("model_name", ["quickstart", "hrnet_w32", "resnet50"])
@pytest.mark.parametrize("attention", ["psa_parallel", "psa_sequential"])
def test_bf16_autocast_channels_last_training_step_is_finite(
    model_name: str, attention: str
) -> None:
    torch.manual_seed(0)
    model = build(model_name, attention).cuda().to(memory_format=torch.channels_last).train()
    x = torch.randn(4, 3, 256, 192, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(x)
    assert out.shape == (4, 17, 64, 48)
    out.float().square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
