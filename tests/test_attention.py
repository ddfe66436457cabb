"""Attention blocks: PSA against independent formulations and the official module's outputs."""

from __future__ import annotations

import pytest
import torch
from helpers import ASSETS

from psapose.models import (
    AttentionSpec,
    GlobalContext,
    PolarizedSelfAttention,
    SqueezeExcitation,
    as_attention_spec,
)


def _w(conv: torch.nn.Conv2d) -> torch.Tensor:
    """A 1x1 convolution's weight as a [out, in] matrix."""
    return conv.weight[:, :, 0, 0]


def paper_psa_einsum(m: PolarizedSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """The paper's equations (3)-(6), written independently with einsum."""
    n, c, h, w = x.shape
    xf = x.reshape(n, c, h * w)
    # Channel-only branch: A_ch = sigmoid(LN(W_z (W_v X) softmax_HW(W_q X))).
    wv = torch.einsum("oc,ncp->nop", _w(m.conv_v_right), xf)  # [N, C/2, HW]
    wq = torch.einsum("oc,ncp->nop", _w(m.conv_q_right), xf)[:, 0]  # [N, HW]
    pooled = torch.einsum("nop,np->no", wv, torch.softmax(wq, dim=1))  # [N, C/2]
    z = torch.einsum("co,no->nc", _w(m.conv_up[0]), pooled)  # [N, C]
    ln = m.conv_up[1]
    z = (z - z.mean(1, keepdim=True)) / torch.sqrt(z.var(1, unbiased=False, keepdim=True) + ln.eps)
    z = z * ln.weight.reshape(1, c) + ln.bias.reshape(1, c)
    a_ch = torch.sigmoid(z)

    def spatial(inp: torch.Tensor) -> torch.Tensor:
        f = inp.reshape(n, c, h * w)
        q = torch.einsum("oc,ncp->nop", _w(m.conv_q_left), f).mean(2)  # GAP: [N, C/2]
        v = torch.einsum("oc,ncp->nop", _w(m.conv_v_left), f)  # [N, C/2, HW]
        return torch.sigmoid(torch.einsum("no,nop->np", torch.softmax(q, dim=1), v))  # [N, HW]

    z_ch = torch.einsum("nc,ncp->ncp", a_ch, xf)
    if m.layout == "parallel":
        out = z_ch + torch.einsum("np,ncp->ncp", spatial(x), xf)
    else:
        out = torch.einsum("np,ncp->ncp", spatial(z_ch.reshape(n, c, h, w)), z_ch)
    return out.reshape(n, c, h, w)


def _randomise(module: torch.nn.Module, std: float = 0.5, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


@pytest.mark.parametrize("layout", ["parallel", "sequential"])
@pytest.mark.parametrize("channels", [8, 15, 64])
def test_paper_variant_equals_einsum_formulation(layout: str, channels: int) -> None:
    torch.manual_seed(channels)
    m = PolarizedSelfAttention(channels, layout=layout, variant="paper").double()
    _randomise(m, seed=channels)
    x = torch.randn(3, channels, 7, 5, dtype=torch.float64)
    expected = paper_psa_einsum(m, x)
    torch.testing.assert_close(m(x), expected, rtol=1e-12, atol=1e-12)
    # Non-trivial: the attention actually changes the input.
    assert (m(x) - x).abs().max() > 1e-3


@pytest.mark.parametrize("layout", ["parallel", "sequential"])
def test_official_variant_reproduces_official_module(layout: str) -> None:
    """Reference values were produced by DeLightCMU/PSA's PSA_p / PSA_s (C=16, weights N(0, 0.5))."""
    ref = torch.load(ASSETS / "official_psa_reference.pt", weights_only=True)[layout]
    m = PolarizedSelfAttention(16, layout=layout, variant="official")
    m.load_state_dict(ref["state_dict"], strict=True)  # the official parameter names load directly
    x = ref["input"].clone().requires_grad_(True)
    out = m(x)
    torch.testing.assert_close(out, ref["output"], rtol=1e-5, atol=1e-6)
    out.square().sum().backward()
    torch.testing.assert_close(x.grad, ref["input_grad"], rtol=1e-5, atol=1e-5)


def test_official_parameter_names() -> None:
    p = PolarizedSelfAttention(32, "parallel", "official")
    assert sorted(p.state_dict()) == [
        "conv_q_left.weight", "conv_q_right.weight", "conv_up.weight", "conv_v_left.weight", "conv_v_right.weight",
    ]  # fmt: skip
    s = PolarizedSelfAttention(32, "sequential", "official")
    assert sorted(s.state_dict()) == [
        "conv_q_left.weight", "conv_q_right.weight",
        "conv_up.0.bias", "conv_up.0.weight", "conv_up.1.bias", "conv_up.1.weight", "conv_up.3.bias", "conv_up.3.weight",
        "conv_v_left.weight", "conv_v_right.weight",
    ]  # fmt: skip


@pytest.mark.parametrize("channels", [32, 64, 256])
def test_parameter_counts_follow_closed_forms(channels: int) -> None:
    c, half, eighth = channels, channels // 2, channels // 8
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # PSA_p: W_q (C) + three C x C/2 convolutions + W_z (C/2 x C) = 2C^2 + C.
    assert count(PolarizedSelfAttention(c, "parallel", "official")) == 2 * c * c + c
    # PSA_s: the C/2 -> C/8 -> C bottleneck with biases and LayerNorm replaces W_z.
    seq = c + 3 * c * half + (half * eighth + eighth) + 2 * eighth + (eighth * c + c)
    assert count(PolarizedSelfAttention(c, "sequential", "official")) == seq
    # Paper: PSA_p plus the LayerNorm over C (2C), whatever the layout.
    for layout in ("parallel", "sequential"):
        assert count(PolarizedSelfAttention(c, layout, "paper")) == 2 * c * c + 3 * c


@pytest.mark.parametrize("variant", ["paper", "official"])
@pytest.mark.parametrize("layout", ["parallel", "sequential"])
def test_attention_maps_are_polarized(variant: str, layout: str) -> None:
    m = PolarizedSelfAttention(16, layout, variant)
    _randomise(m)
    x = torch.randn(2, 16, 6, 4)
    a_ch, a_sp = m.channel_attention(x), m.spatial_attention(x)
    assert a_ch.shape == (2, 16, 1, 1) and a_sp.shape == (2, 1, 6, 4)
    for a in (a_ch, a_sp):
        assert ((a > 0) & (a < 1)).all()
    if layout == "parallel":
        torch.testing.assert_close(m(x), x * a_ch + x * a_sp)
    else:
        y = x * a_ch
        torch.testing.assert_close(m(x), y * m.spatial_attention(y))


def test_paper_spatial_softmax_is_over_channels() -> None:
    """Paper: the pooled query is a softmax over C/2, so its weights sum to one. With
    identical value channels r.x the spatial logits are exactly r.x whatever the query."""
    m = PolarizedSelfAttention(8, "parallel", "paper")
    _randomise(m)
    r = torch.randn(8)
    with torch.no_grad():
        m.conv_v_left.weight.copy_(r.expand(4, 8)[:, :, None, None])
    x = torch.randn(2, 8, 5, 3)
    expected = torch.sigmoid(torch.einsum("c,nchw->nhw", r, x))[:, None]
    torch.testing.assert_close(m.spatial_attention(x), expected)
    # The official PSA_p has no such normalisation: its logits depend on the query.
    official = PolarizedSelfAttention(8, "parallel", "official")
    official.load_state_dict(
        {k: v for k, v in m.state_dict().items() if not k.startswith("conv_up")}, strict=False
    )
    assert not torch.allclose(official.spatial_attention(x), expected, atol=1e-3)


def test_squeeze_excitation_formula() -> None:
    m = SqueezeExcitation(32, reduction=4)
    _randomise(m, std=0.2)
    x = torch.randn(2, 32, 5, 3)
    s = x.mean((2, 3))
    h = torch.relu(s @ _w(m.fc1).T + m.fc1.bias)
    expected = x * torch.sigmoid(h @ _w(m.fc2).T + m.fc2.bias)[:, :, None, None]
    torch.testing.assert_close(m(x), expected)


def test_global_context_formula_and_identity_start() -> None:
    m = GlobalContext(32, reduction=4)
    x = torch.randn(2, 32, 5, 3)
    torch.testing.assert_close(m(x), x)  # last convolution starts at zero
    _randomise(m, std=0.2)
    w = torch.softmax(
        (x.flatten(2) * _w(m.conv_mask)[0][None, :, None]).sum(1) + m.conv_mask.bias, dim=1
    )
    context = torch.einsum("ncp,np->nc", x.flatten(2), w)[:, :, None, None]
    torch.testing.assert_close(m(x), x + m.channel_add_conv(context))


def test_spec_builds_each_kind() -> None:
    assert AttentionSpec(kind="none").build(32) is None
    assert isinstance(AttentionSpec("psa", "sequential", "paper").build(32), PolarizedSelfAttention)
    assert isinstance(AttentionSpec(kind="se").build(32), SqueezeExcitation)
    assert isinstance(AttentionSpec(kind="gc").build(32), GlobalContext)
    assert as_attention_spec("psa_sequential") == AttentionSpec("psa", "sequential")
    assert as_attention_spec(None).kind == "none"
    assert as_attention_spec({"_target_": "x", "kind": "se", "reduction": 8}) == AttentionSpec(
        kind="se", reduction=8
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "nonlocal"}, "attention.kind must be one of"),
        ({"layout": "diagonal"}, "attention.layout must be one of"),
        ({"variant": "v2"}, "attention.variant must be one of"),
        ({"kind": "se", "reduction": 0}, "attention.reduction must be a positive integer"),
    ],
)
def test_spec_rejects_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AttentionSpec(**kwargs)


def test_spec_rejects_unknown_keys_and_names() -> None:
    with pytest.raises(ValueError, match=r"unknown attention key\(s\) \['layuot'\]"):
        as_attention_spec({"kind": "psa", "layuot": "parallel"})
    with pytest.raises(ValueError, match="unknown attention 'psa'"):
        as_attention_spec("psa")
    with pytest.raises(ValueError, match="at least 8 channels"):
        PolarizedSelfAttention(4, "sequential", "official")
