"""The fast PSA path equals the reference path; ``tools/benchmark.py model`` runs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from helpers import build, deterministic_weights

from psapose.models import PolarizedSelfAttention, PoseResNet
from psapose.models.attention import reference_psa, set_fast_psa

ROOT = Path(__file__).resolve().parents[1]
LAYOUTS = ["parallel", "sequential"]
VARIANTS = ["official", "paper"]
# (channels, height, width): odd sizes, an odd channel count, HRNet-like maps, and a map
# with fewer pixels than C/2 (the official sequential block then makes y = A_ch * x, as
# HRNet's 8x6 branch at 256 channels does). At least 24 channels: below that the official
# sequential block's LayerNorm normalises one or two values, whose normalised values do
# not depend on the input (gradient exactly zero), so its float32 gradients are rounding
# noise in both paths.
SHAPES = [(24, 7, 5), (33, 9, 7), (40, 5, 11), (64, 16, 12), (48, 3, 5)]


def _randomised(
    channels: int, layout: str, variant: str, seed: int, gain: float = 2.0
) -> PolarizedSelfAttention:
    """A block whose attention maps vary strongly: weights ``gain / sqrt(fan_in)``."""
    m = PolarizedSelfAttention(channels, layout, variant)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 1
            p.copy_(torch.randn(p.shape, generator=g) * gain / fan_in**0.5)
    return m


def _output_and_grads(
    m: torch.nn.Module, x: torch.Tensor, fast: bool
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    set_fast_psa(m, fast)
    m.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    out = m(x)
    # A non-uniform upstream gradient, so every output element matters.
    weights = torch.linspace(-1, 1, out.numel()).view_as(out)
    (out * weights).sum().backward()
    return out.detach(), [x.grad] + [p.grad for p in m.parameters()]


def _max_error(values: list[torch.Tensor], truth: list[torch.Tensor]) -> list[float]:
    """Per tensor: the largest difference from the float64 truth, relative to the truth's scale."""
    return [
        ((v.double() - t).abs().max() / t.abs().max().clamp_min(1e-12)).item()
        for v, t in zip(values, truth, strict=True)
    ]


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_fast_equals_reference(
    layout: str, variant: str, shape: tuple[int, int, int], channels_last: bool
) -> None:
    channels, h, w = shape
    m = _randomised(channels, layout, variant, seed=channels)
    x = torch.randn(3, channels, h, w, generator=torch.Generator().manual_seed(1))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    # In float64 the two paths are the same function: equal far below 1e-5.
    m64, x64 = m.double(), x.double()
    truth, truth_grads = _output_and_grads(m64, x64, fast=False)
    out64, grads64 = _output_and_grads(m64, x64, fast=True)
    torch.testing.assert_close(out64, truth, rtol=1e-10, atol=1e-10)
    assert len(grads64) == len(truth_grads) == 1 + len(list(m.parameters()))
    for grad, expected in zip(grads64, truth_grads, strict=True):
        torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-10)
    # The block is far from the identity: the comparison is not trivial.
    assert (truth - x64).abs().max() > 0.1

    # In float32: outputs equal to 1e-5. Gradients are sums over every pixel, where
    # float32 rounding alone moves the reference by more than 1e-5 from the exact
    # value; the fast path must be as close to the float64 truth as the reference.
    m32 = m.float()
    expected, expected_grads = _output_and_grads(m32, x, fast=False)
    out, grads = _output_and_grads(m32, x, fast=True)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    assert out.is_contiguous(memory_format=memory_format)
    # x's gradient comes back in x's memory format (autograd adds it to the gradients of
    # x's other uses; mixed formats make that sum several times slower).
    assert grads[0].is_contiguous(memory_format=memory_format)
    reference_errors = _max_error(expected_grads, truth_grads)
    fast_errors = _max_error(grads, truth_grads)
    for fast_error, reference_error in zip(fast_errors, reference_errors, strict=True):
        assert fast_error <= max(2 * reference_error, 1e-5), (fast_errors, reference_errors)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_fast_under_bf16_autocast(layout: str, variant: str, seed: int) -> None:
    m = _randomised(32, layout, variant, seed=3)
    x = torch.randn(2, 32, 12, 9, generator=torch.Generator().manual_seed(seed))
    x = x.contiguous(memory_format=torch.channels_last)
    exact, exact_grads = _output_and_grads(m, x, fast=False)
    errors = {}
    for fast in (False, True):
        m.fast = fast
        m.zero_grad(set_to_none=True)
        x_bf16 = x.to(torch.bfloat16).requires_grad_(True)  # as a bf16 conv output would be
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(x_bf16)
        (out.float() * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads = [x_bf16.grad] + [p.grad for p in m.parameters()]
        assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
        assert grads[0].dtype == torch.bfloat16
        assert grads[0].is_contiguous(memory_format=torch.channels_last)
        assert all(g.dtype == e.dtype for g, e in zip(grads[1:], exact_grads[1:], strict=True))
        # bf16 keeps 8 significant bits: both paths stay within a few percent of fp32.
        assert (out.float() - exact).abs().max() < 0.03 * exact.abs().max()
        errors[fast] = _max_error(grads, exact_grads)
    # Gradients within 10% of fp32, or as close as the reference's: bf16 rounding can
    # flip a ReLU or a LayerNorm of the official sequential bottleneck (4 hidden units
    # here), which moves a small gradient by more than that in both paths.
    for fast_error, reference_error in zip(errors[True], errors[False], strict=True):
        assert fast_error <= max(2 * reference_error, 0.1), (errors[True], errors[False])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_fast_inside_a_graph(layout: str, variant: str) -> None:
    """x used twice, on a map that is a slice (neither memory format), the output changed in
    place afterwards, backward twice through a kept graph: float64, equal to the reference."""
    m = _randomised(40, layout, variant, seed=5).double()
    base = torch.randn(3, 40, 11, 9, generator=torch.Generator().manual_seed(4), dtype=torch.double)
    results = {}
    for fast in (False, True):
        set_fast_psa(m, fast)
        m.zero_grad(set_to_none=True)
        leaf = base.clone().requires_grad_(True)
        x = leaf[:, :, 1:-1] * 1.5
        out = m(x[:, :, :, 1:])  # a slice: neither contiguous nor channels-last
        assert out._base is None  # an ordinary tensor: in-place changes are allowed
        out = out.mul_(2.0).relu_() + x[:, :, :, 1:].tanh()
        weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
        (out * weights).sum().backward(retain_graph=True)
        first = [leaf.grad.clone()] + [p.grad.clone() for p in m.parameters()]
        (out * weights.flip(0)).sum().backward()
        results[fast] = [out.detach()] + first + [leaf.grad] + [p.grad for p in m.parameters()]
    for fast, reference in zip(results[True], results[False], strict=True):
        torch.testing.assert_close(fast, reference, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fast_compiles_as_one_graph(layout: str) -> None:
    """torch.compile traces the fast path without a graph break (the ``aot_eager`` backend:
    tracing and autograd, no code generation); the compiled block computes the same
    outputs and gradients."""
    m = _randomised(32, layout, "official", seed=6)
    x = torch.randn(2, 32, 12, 9, generator=torch.Generator().manual_seed(7))
    x = x.contiguous(memory_format=torch.channels_last)
    eager, eager_grads = _output_and_grads(m, x, fast=True)
    torch._dynamo.reset()
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
    out, grads = _output_and_grads(compiled, x, fast=True)
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-6)
    for grad, expected in zip(grads, eager_grads, strict=True):
        torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6)


def test_fast_is_the_default_and_switchable() -> None:
    m = PolarizedSelfAttention(16)
    assert m.fast
    assert "fast=True" in repr(m)
    model = build("quickstart", "psa_sequential")
    blocks = [b for b in model.modules() if isinstance(b, PolarizedSelfAttention)]
    assert blocks and all(b.fast for b in blocks)
    assert set_fast_psa(model, False) == len(blocks)
    assert not any(b.fast for b in blocks)
    # reference_psa: every block on the reference path inside, each block's own path after.
    blocks[0].fast = True
    with reference_psa(model):
        assert not any(b.fast for b in blocks)
    assert blocks[0].fast and not any(b.fast for b in blocks[1:])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_state_dict_is_unchanged(layout: str) -> None:
    fast = PolarizedSelfAttention(32, layout, fast=True)
    reference = PolarizedSelfAttention(32, layout, fast=False)
    assert list(fast.state_dict()) == list(reference.state_dict())
    assert all(
        a.shape == b.shape
        for a, b in zip(fast.state_dict().values(), reference.state_dict().values(), strict=True)
    )
    fast.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 32, 6, 5)
    torch.testing.assert_close(fast(x), reference(x), rtol=1e-5, atol=1e-6)


SMALL_HEAD = {"deconv_channels": (32, 32), "deconv_kernels": (4, 4)}


def _whole_models() -> list[tuple[str, torch.nn.Module]]:
    # The paper variant and the other layouts are covered block by block above.
    return [
        ("hrnet_parallel", build("quickstart", "psa_parallel")),
        ("resnet18_sequential", PoseResNet(18, attention="psa_sequential", **SMALL_HEAD)),
    ]


@pytest.mark.parametrize("index", range(2), ids=["hrnet_parallel", "resnet18_sequential"])
def test_whole_model_fast_equals_reference(index: int) -> None:
    _, model = _whole_models()[index]
    # Deterministic, non-trivial weights (the pose init makes PSA nearly constant).
    model.load_state_dict(deterministic_weights(model.state_dict()))
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    x = x.contiguous(memory_format=torch.channels_last)
    # float32, eval mode: the same heatmaps to 1e-5.
    model.eval()
    with torch.no_grad():
        outputs = {}
        for fast in (False, True):
            set_fast_psa(model, fast)
            outputs[fast] = model(x)
    torch.testing.assert_close(outputs[True], outputs[False], rtol=1e-5, atol=1e-5)
    assert outputs[False].abs().max() > 1e-3
    # float64, training mode: the same heatmaps and parameter gradients (contiguous:
    # float64 channels-last convolutions take a slow path on the CPU).
    model = model.double().to(memory_format=torch.contiguous_format).train()
    x = x.contiguous()
    states = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {}
    for fast in (False, True):
        model.load_state_dict(states)  # the same BN running statistics for both
        outputs[fast], grads[fast] = _output_and_grads(model, x.double(), fast)
    # Deep random networks reach large values: compare relative to each tensor's scale.
    fast_errors = _max_error([outputs[True], *grads[True]], [outputs[False], *grads[False]])
    assert max(fast_errors) < 1e-7, fast_errors


def _benchmark_main():
    return importlib.import_module("psapose.commands.benchmark").main


TINY = ["model", "--backbones", "quickstart", "--input-sizes", "64x64", "--batch-size", "2"]
TINY += ["--repeats", "1", "--warmup", "0", "--threads", "1", "--json"]


def test_benchmark_model_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    main = _benchmark_main()
    argv = [*TINY, "--attention", "none", "psa_parallel", "--no-memory", "--psa-time"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["benchmark"] == "model" and result["batch_size"] == 2 and result["psa_time"]
    rows = {(r["attention"], r["psa"]): r for r in result["rows"]}
    assert set(rows) == {("none", None), ("psa_parallel", "reference"), ("psa_parallel", "fast")}
    for row in rows.values():
        assert row["input_size"] == [64, 64]
        for mode in ("train", "infer"):
            assert row[f"{mode}_images_per_s"] > 0 and row[f"{mode}_ms_best"] > 0
            assert row[f"{mode}_ratio"] > 0 and row[f"{mode}_ratio_median"] > 0
            assert row[f"{mode}_ms_median"] >= row[f"{mode}_ms_best"]
            assert row[f"{mode}_cpu_ms_best"] > 0 and row[f"{mode}_cpu_ratio"] > 0
    assert rows[("none", None)]["train_ratio"] == 1.0
    # --psa-time: the time inside the PSA blocks, a part of the step.
    assert "train_psa_ms_best" not in rows[("none", None)]
    for path in ("reference", "fast"):
        row = rows[("psa_parallel", path)]
        assert 0 < row["train_psa_forward_ms"] and 0 < row["train_psa_backward_ms"]
        psa = row["train_psa_forward_ms"] + row["train_psa_backward_ms"]
        assert abs(row["train_psa_ms_best"] - psa) < 0.02
        assert row["train_psa_ms_best"] < row["train_ms_best"]
        assert row["train_psa_share"] > 0
        assert 0 < row["infer_psa_forward_ms"] < row["infer_ms_best"]
        assert row["infer_psa_backward_ms"] == 0  # no backward in inference
        # The same time by the blocks' input shape: the quick-start backbone's PSA blocks
        # on 64x64 inputs, their count and forward/backward times adding up to the totals.
        shapes = row["train_psa_by_shape"]
        assert all(len(s["shape"]) == 3 and s["blocks"] >= 1 for s in shapes)
        quickstart = build("quickstart", "psa_parallel").modules()
        assert sum(s["blocks"] for s in shapes) == sum(
            isinstance(m, PolarizedSelfAttention) for m in quickstart
        )
        assert abs(sum(s["forward_ms"] for s in shapes) - row["train_psa_forward_ms"]) < 0.05
        assert abs(sum(s["backward_ms"] for s in shapes) - row["train_psa_backward_ms"]) < 0.05
        assert all(s["backward_ms"] == 0 for s in row["infer_psa_by_shape"])


def test_benchmark_model_memory(capsys: pytest.CaptureFixture[str]) -> None:
    main = _benchmark_main()
    argv = [*TINY, "--attention", "psa_sequential", "--no-reference", "--modes", "infer"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    (row,) = result["rows"]
    assert row["psa"] == "fast" and "train_ratio" not in row  # no `none` row to compare with
    assert row["infer_peak_mib"] > 0
    assert "peak" in result["memory"]
