"""Polarized Self-Attention (PSA, Liu et al. 2021): the block, its reference path, and
switches between the reference and the fast path (:mod:`.psa_fast`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from . import psa_fast

__all__ = ["PSA_LAYOUTS", "PSA_VARIANTS", "PolarizedSelfAttention", "reference_psa", "set_fast_psa"]

PSA_LAYOUTS = ("parallel", "sequential")
PSA_VARIANTS = ("official", "paper")


class PolarizedSelfAttention(nn.Module):
    r"""Polarized Self-Attention block.

    Two branches each keep full resolution along one axis and collapse the other:

    * channel-only attention ``A_ch(X)`` in ``R^{C x 1 x 1}``;
    * spatial-only attention ``A_sp(X)`` in ``R^{1 x H x W}``.

    Layouts: ``parallel`` gives ``Z = A_ch(X) * X + A_sp(X) * X``; ``sequential``
    gives ``Y = A_ch(X) * X`` then ``Z = A_sp(Y) * Y``.

    **Variant ``paper``** follows the paper's equations (3) and (4) exactly
    (all 1x1 convolutions without bias, internal width ``C/2``)::

        A_ch(X) = sigmoid(LayerNorm_C(W_z(W_v(X) @ softmax_HW(W_q(X)))))
        A_sp(X) = sigmoid(softmax_{C/2}(GlobalAvgPool(W_q'(X))) @ W_v'(X))

    **Variant ``official``** is numerically identical to ``PSA_p`` (parallel) and
    ``PSA_s`` (sequential) in DeLightCMU/PSA ``semantic-segmentation/network/PSA.py``
    and uses its parameter names, so its tensors load directly. That code differs
    from the paper in these ways:

    1. *Branch names are swapped.* Its ``spatial_pool`` computes the
       channel-only attention and its ``channel_pool`` the spatial-only one.
       Parameters keep the official names in both variants:
       ``conv_q_right`` = W_q (C->1) and ``conv_v_right`` = W_v (C->C/2) of the
       channel branch, ``conv_up`` = W_z (C/2->C), ``conv_q_left`` = W_q' and
       ``conv_v_left`` = W_v' (both C->C/2) of the spatial branch.
    2. *No LayerNorm in PSA_p.* The channel branch of ``PSA_p`` is
       ``sigmoid(W_z(...))`` with no normalisation.
    3. *A bottleneck in PSA_s.* ``PSA_s`` replaces W_z by
       ``Conv(C/2->C/8, bias) -> LayerNorm(C/8) -> ReLU -> Conv(C/8->C, bias)``,
       a Global-Context-style transform, so it has fewer parameters than ``PSA_p``.
    4. *Softmax placement in the spatial branch.* The paper applies softmax over
       the ``C/2`` channels of the pooled query. ``PSA_p`` applies no softmax to
       the query and instead a softmax over ``H*W`` to the product, before the
       sigmoid; ``PSA_s`` applies a softmax over ``H*W`` to every channel of the
       value ``W_v'(X)`` before the product, and none after it.
    5. *Initialisation.* ``reset_parameters`` draws the four query/value
       convolutions from Kaiming-normal (fan-in) as the official code does, and
       leaves ``conv_up`` at PyTorch's default. (The pose backbones then re-draw
       every convolution from N(0, 0.001) as the official HRNet recipe does,
       which makes a parallel block start close to the identity.)

    The internal width is ``channels // 2`` as in the official code.

    **Two implementations of the same function.** ``forward`` runs the fast path
    (``fast=True``, the default) or the reference path (``fast=False``,
    :meth:`forward_reference`: the official code's operations one for one).
    The fast path uses the same parameters, reassociated so that no ``C -> C/2``
    convolution runs over every pixel where linearity allows it, and runs as one
    autograd function with a hand-written backward (see :meth:`forward_fast`); it
    equals the reference up to float rounding (``tests/test_fast_psa.py``: outputs
    to 1e-5 in float32, outputs and every gradient to 1e-10 in float64).
    """

    def __init__(
        self,
        channels: int,
        layout: str = "parallel",
        variant: str = "official",
        fast: bool = True,
    ) -> None:
        super().__init__()
        _check_choice("layout", layout, PSA_LAYOUTS)
        _check_choice("variant", variant, PSA_VARIANTS)
        if channels < 2:
            raise ValueError(f"PolarizedSelfAttention needs at least 2 channels, got {channels}")
        self.channels = channels
        self.layout = layout
        self.variant = variant
        self.fast = fast
        inter = channels // 2
        self.inter_channels = inter

        # Channel-only branch (the official code's "right"/"spatial_pool" branch).
        self.conv_q_right = nn.Conv2d(channels, 1, kernel_size=1, bias=False)
        self.conv_v_right = nn.Conv2d(channels, inter, kernel_size=1, bias=False)
        if variant == "paper":
            self.conv_up = nn.Sequential(
                nn.Conv2d(inter, channels, kernel_size=1, bias=False),
                nn.LayerNorm([channels, 1, 1]),
            )
        elif layout == "parallel":
            self.conv_up = nn.Conv2d(inter, channels, kernel_size=1, bias=False)
        else:
            hidden = inter // 4
            if hidden < 1:
                raise ValueError(
                    f"official sequential PSA needs at least 8 channels for its C/8 bottleneck, got {channels}"
                )
            self.conv_up = nn.Sequential(
                nn.Conv2d(inter, hidden, kernel_size=1),
                nn.LayerNorm([hidden, 1, 1]),
                nn.ReLU(inplace=True),
                nn.Conv2d(hidden, channels, kernel_size=1),
            )
        # Spatial-only branch (the official code's "left"/"channel_pool" branch).
        self.conv_q_left = nn.Conv2d(channels, inter, kernel_size=1, bias=False)
        self.conv_v_left = nn.Conv2d(channels, inter, kernel_size=1, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for conv in (self.conv_q_right, self.conv_v_right, self.conv_q_left, self.conv_v_left):
            nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")

    def channel_attention(self, x: torch.Tensor) -> torch.Tensor:
        """``A_ch(x)``: weights of shape ``[N, C, 1, 1]`` in (0, 1)."""
        value = self.conv_v_right(x).flatten(2)  # [N, C/2, HW]
        query = self.conv_q_right(x).flatten(2).softmax(dim=2)  # [N, 1, HW]
        context = torch.matmul(value, query.transpose(1, 2)).unsqueeze(-1)  # [N, C/2, 1, 1]
        return torch.sigmoid(self.conv_up(context))

    def spatial_attention(self, x: torch.Tensor) -> torch.Tensor:
        """``A_sp(x)``: weights of shape ``[N, 1, H, W]`` in (0, 1)."""
        n, _, h, w = x.shape
        # [N, 1, C/2]: the globally pooled query.
        query = F.adaptive_avg_pool2d(self.conv_q_left(x), 1).flatten(1).unsqueeze(1)
        value = self.conv_v_left(x).flatten(2)  # [N, C/2, HW]
        if self.variant == "paper":
            logits = torch.matmul(query.softmax(dim=2), value)
        elif self.layout == "parallel":
            logits = torch.matmul(query, value).softmax(dim=2)
        else:
            logits = torch.matmul(query, value.softmax(dim=2))
        return torch.sigmoid(logits).view(n, 1, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_fast(x) if self.fast else self.forward_reference(x)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """The official code's operations, one for one (the reference for ``forward_fast``)."""
        if self.layout == "parallel":
            # Channel branch first, summed as spatial + channel: the reference
            # code's order, which keeps outputs and gradients bit-identical.
            z_channel = x * self.channel_attention(x)
            z_spatial = x * self.spatial_attention(x)
            return z_spatial + z_channel
        y = x * self.channel_attention(x)
        return y * self.spatial_attention(y)

    def forward_fast(self, x: torch.Tensor) -> torch.Tensor:
        r"""The same function as :meth:`forward_reference`, with cheaper arithmetic.

        Exact algebra, with ``x`` as a ``[N, C, HW]`` matrix per sample and the
        1x1 convolutions as matrices:

        * channel branch: ``W_v x softmax(W_q x)^T = W_v (x softmax(W_q x)^T)``
          (``W_v`` is linear and bias-free, the softmax weights sum to one): one
          weighted sum of ``x`` over the pixels, then a ``C/2 x C`` matrix-vector
          product per sample, instead of a ``C -> C/2`` convolution over every pixel;
          ``W_z`` (``conv_up``, with its LayerNorm and ReLU where the variant has
          them) acts on a ``[N, C/2]`` vector, as ``F.linear``/``F.layer_norm`` on
          the same parameters instead of 1x1 convolutions on ``1 x 1`` maps;
        * spatial query: ``GAP(W_q' x) = W_q' GAP(x)``; in the sequential layout
          ``GAP(y) = A_ch * GAP(x)``, as ``A_ch`` is constant over the pixels;
        * spatial logits (``paper``, official parallel):
          ``q^T (W_v' x) = (W_v'^T q)^T x``: a per-sample ``C``-vector dotted with
          ``x`` at every pixel instead of a ``C -> C/2`` convolution. The official
          sequential block applies a softmax over the pixels to each channel of
          ``W_v' y`` before the product, so it keeps that projection, as
          ``(W_v' diag(A_ch)) x``: ``y = A_ch * x`` is never made;
        * output: ``x a_sp + x a_ch`` or ``(x a_ch) a_sp``, in the reference's order
          of products; no full-size tensor but ``x`` is saved for the backward.

        The whole block is one autograd function (:mod:`psapose.models.attention.psa_fast`)
        whose backward is written out: it reads ``x`` as few times as the algebra
        allows, makes ``x``'s gradient in one new tensor and adds every term but
        the output's to it in place as one low-rank matrix product, and runs as
        one autograd node (the same algebra left to autograd ran 40 to 50). The
        parameters (and so the state dict) are the module's own.
        """
        up = self.conv_up
        if isinstance(up, nn.Conv2d):  # official parallel
            up_params, eps = (up.weight,), 0.0
        elif self.variant == "paper":  # Conv, LayerNorm
            up_params, eps = (up[0].weight, up[1].weight, up[1].bias), up[1].eps
        else:  # the official sequential bottleneck: Conv, LayerNorm, ReLU, Conv
            conv_in, norm, _, conv_out = up
            up_params = (conv_in.weight, conv_in.bias, norm.weight, norm.bias)
            up_params, eps = (*up_params, conv_out.weight, conv_out.bias), norm.eps
        return psa_fast.psa(
            x,
            self.layout,
            self.variant == "paper",
            self.conv_q_right.weight,
            self.conv_v_right.weight,
            self.conv_q_left.weight,
            self.conv_v_left.weight,
            up_params,
            eps,
        )

    def extra_repr(self) -> str:
        return f"channels={self.channels}, layout={self.layout}, variant={self.variant}, fast={self.fast}"


def set_fast_psa(model: nn.Module, fast: bool) -> int:
    """Switch every PSA block in ``model`` to the fast (``True``) or reference path.

    Returns how many blocks were switched. Parameters are untouched, so a model
    can be compared with itself.
    """
    blocks = [m for m in model.modules() if isinstance(m, PolarizedSelfAttention)]
    for m in blocks:
        m.fast = fast
    return len(blocks)


@contextlib.contextmanager
def reference_psa(model: nn.Module) -> Iterator[None]:
    """Every PSA block of ``model`` on its reference path inside the block, each put back
    to its own path after: for what must see the official operations (FLOP counting,
    ONNX tracing) rather than the fast path's single autograd function."""
    blocks = [m for m in model.modules() if isinstance(m, PolarizedSelfAttention)]
    was_fast = [m.fast for m in blocks]
    for m in blocks:
        m.fast = False
    try:
        yield
    finally:
        for m, fast in zip(blocks, was_fast, strict=True):
            m.fast = fast


def _check_choice(key: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{key} must be one of {list(allowed)}, got {value!r}")
