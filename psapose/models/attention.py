"""Attention blocks that sit inside residual blocks, behind one interface.

Every block maps ``[N, C, H, W] -> [N, C, H, W]``. Which block is used, and how,
is described by an :class:`AttentionSpec` (built from the ``attention`` config
group); the backbones call ``spec.build(channels)`` once per residual block and
store the result as the submodule ``deattn`` (the official PSA naming).

Blocks:

* :class:`PolarizedSelfAttention` (PSA, Liu et al. 2021), layouts ``parallel``
  and ``sequential``, variants ``paper`` and ``official``;
* :class:`SqueezeExcitation` (Hu et al. 2018) and :class:`GlobalContext`
  (Cao et al. 2019), the channel-attention peers of the paper's Table 1.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ATTENTION_KINDS",
    "PSA_LAYOUTS",
    "PSA_VARIANTS",
    "AttentionSpec",
    "GlobalContext",
    "PolarizedSelfAttention",
    "SqueezeExcitation",
    "as_attention_spec",
    "set_fast_psa",
]

ATTENTION_KINDS = ("none", "psa", "se", "gc")
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
    convolution runs over every pixel where linearity allows it (see
    :meth:`forward_fast`); it equals the reference up to float rounding
    (``tests/test_fast_psa.py`` checks outputs and gradients to 1e-5).
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
        * spatial query: ``GAP(W_q' x) = W_q' GAP(x)``;
        * spatial logits (``paper``, official parallel):
          ``q^T (W_v' x) = (W_v'^T q)^T x``: a per-sample ``C``-vector dotted with
          ``x`` at every pixel instead of a ``C -> C/2`` convolution. In the
          parallel layout it is stacked with ``W_q`` into one ``[2, C] x [C, HW]``
          product. The official sequential block applies a softmax over the
          pixels to each channel of ``W_v' y`` before the product, so it keeps
          that projection (as one matrix product);
        * parallel output: ``x a_ch + x a_sp = x (a_ch + a_sp)``.

        Every product reads ``x`` as a ``[N, HW, C]`` view and gives its gradient
        back in ``x``'s memory format (see :class:`_PixelMatrix`); the products
        whose autograd backward is slow on the CPU have their own
        (:class:`_PixelProjection`, :class:`_PixelWeightedSum`,
        :class:`_SoftmaxPixelsMix`).
        """
        n, c, h, w = x.shape
        pixels = _PixelMatrix(x)
        if self.layout == "parallel":
            query_left = F.linear(pixels.mean(), _matrix(self.conv_q_left))  # [N, C/2]
            if self.variant == "paper":
                query_left = query_left.softmax(dim=1)
            # [N, C]: the spatial branch's query pulled through W_v'.
            spatial_vector = torch.matmul(query_left, _matrix(self.conv_v_left))
            # Both per-pixel projections of x in one product: [N, 2, C] x [N, C, HW].
            projections = torch.cat(
                (_matrix(self.conv_q_right).expand(n, 1, c), spatial_vector.unsqueeze(1)), dim=1
            )
            logits = pixels.project(projections)  # [N, 2, HW]
            a_ch = self._fast_channel_weights(pixels, logits[:, 0])
            spatial_logits = logits[:, 1]
            if self.variant == "official":
                spatial_logits = spatial_logits.softmax(dim=1)
            return _scale_by_sum(x, a_ch.view(n, c), torch.sigmoid(spatial_logits).view(n, h, w))
        channel_logits = pixels.project(_matrix(self.conv_q_right).expand(n, 1, c))[:, 0]
        # The channel branch's weighted sum and GAP(x) in one product; then
        # GAP(y) = A_ch * GAP(x), as A_ch is constant over the pixels.
        uniform = torch.full_like(channel_logits, 1.0 / (h * w))
        sums = pixels.weighted_sums(torch.stack((channel_logits.softmax(dim=1), uniform), dim=1))
        a_ch = self._channel_weights_from_pooled(sums[:, 0])
        y = x * a_ch
        y_pixels = _PixelMatrix(y)
        query_left = F.linear(a_ch.view(n, c) * sums[:, 1], _matrix(self.conv_q_left))  # [N, C/2]
        if self.variant == "paper":
            spatial_vector = torch.matmul(query_left.softmax(dim=1), _matrix(self.conv_v_left))
            spatial_logits = y_pixels.project(spatial_vector.unsqueeze(1))[:, 0]  # [N, HW]
        else:
            # The softmax over pixels acts on each channel of W_v' y, so the value
            # projection stays; the query side still comes from GAP(y).
            values = y_pixels.project_all(_matrix(self.conv_v_left)).transpose(1, 2)
            spatial_logits = _SoftmaxPixelsMix.apply(values, query_left)  # [N, HW]
        return y * torch.sigmoid(spatial_logits).view(n, 1, h, w)

    def _fast_channel_weights(self, pixels: _PixelMatrix, logits: torch.Tensor) -> torch.Tensor:
        """``A_ch`` ([N, C, 1, 1]) from ``x`` and its logits ``W_q x`` ([N, HW])."""
        pooled = pixels.weighted_sums(logits.softmax(dim=1).unsqueeze(1))[:, 0]  # [N, C]
        return self._channel_weights_from_pooled(pooled)

    def _channel_weights_from_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """``A_ch`` ([N, C, 1, 1]) from ``x softmax(W_q x)^T`` ([N, C])."""
        context = F.linear(pooled, _matrix(self.conv_v_right))  # [N, C/2]
        return torch.sigmoid(self.conv_up(context[:, :, None, None]))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, layout={self.layout}, variant={self.variant}, fast={self.fast}"


def _scale_by_sum(x: torch.Tensor, channel: torch.Tensor, spatial: torch.Tensor) -> torch.Tensor:
    """``x * (channel[:, :, None, None] + spatial[:, None])`` in ``x``'s memory format.

    The broadcast sum of a ``[N, C, 1, 1]`` and a ``[N, 1, H, W]`` tensor comes
    out contiguous whatever ``x`` is, and multiplying a channels-last ``x`` by a
    contiguous tensor is about 10x slower than either alone on the CPU. For a
    channels-last ``x`` the sum is therefore made in the ``[N, H, W, C]`` view,
    where both layouts agree, without a copy.
    """
    n, c, h, w = x.shape
    if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
        return x * (channel.view(n, c, 1, 1) + spatial.view(n, 1, h, w))
    x_nhwc = x.permute(0, 2, 3, 1)  # contiguous [N, H, W, C]
    out = x_nhwc * (channel.view(n, 1, 1, c) + spatial.view(n, h, w, 1))
    return out.permute(0, 3, 1, 2)


class _PixelMatrix:
    """A feature map ``[N, C, H, W]`` as a per-sample ``[N, HW, C]`` matrix of pixels.

    It is a view in either memory format (contiguous ``[N, HW, C]`` for a
    channels-last map, transposed for a contiguous one). The products below
    return their gradients with respect to the map in that same layout, because
    autograd adds every gradient that reaches ``x`` together and a sum of a
    channels-last and a contiguous tensor is several times slower than either.
    """

    def __init__(self, x: torch.Tensor) -> None:
        self.matrix = x.permute(0, 2, 3, 1).flatten(1, 2)

    def mean(self) -> torch.Tensor:
        """The mean over pixels, ``[N, C]``."""
        return self.matrix.mean(dim=1)

    def project(self, vectors: torch.Tensor) -> torch.Tensor:
        """``vectors @ x`` for per-sample ``vectors`` ``[N, K, C]``: ``[N, K, HW]``."""
        return _PixelProjection.apply(self.matrix, vectors)

    def project_all(self, weight: torch.Tensor) -> torch.Tensor:
        """``weight @ x`` for one ``[K, C]`` matrix shared by all samples: ``[N, K, HW]``."""
        if _pixels_contiguous(self.matrix):
            return F.linear(self.matrix, weight).transpose(1, 2)
        return torch.matmul(weight, self.matrix.transpose(1, 2))

    def weighted_sums(self, weights: torch.Tensor) -> torch.Tensor:
        """``weights @ x`` for per-sample pixel weights ``[N, K, HW]``: ``[N, K, C]``."""
        return _PixelWeightedSum.apply(self.matrix, weights)


def _pixels_contiguous(matrix: torch.Tensor) -> bool:
    """Whether an ``[N, HW, C]`` pixel matrix has its channels contiguous (channels-last)."""
    return matrix.stride(2) == 1


class _PixelProjection(torch.autograd.Function):
    """``vectors @ matrix^T``: ``[N, K, C]`` x ``[N, HW, C]`` -> ``[N, K, HW]``, for small K.

    Autograd's own backward of this product reduces over the pixels as
    ``matrix^T @ grad`` (``[C, HW] x [HW, K]``), a thin product that CPU BLAS
    runs about 10x slower than the same numbers as ``grad @ matrix``
    (``[K, HW] x [HW, C]``); and it returns the matrix's gradient contiguous
    whatever the map's layout.
    """

    @staticmethod
    def forward(ctx, matrix: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        ctx.autocast = _autocast_state(matrix.device.type)
        ctx.save_for_backward(matrix, vectors)
        return torch.matmul(vectors, matrix.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        with _autocast_as_in_forward(ctx.autocast):
            matrix, vectors = ctx.saved_tensors
            grad_matrix = grad_vectors = None
            if ctx.needs_input_grad[0]:
                if _pixels_contiguous(matrix):
                    grad_matrix = torch.matmul(grad.transpose(1, 2), vectors)  # [N, HW, C]
                else:
                    grad_matrix = torch.matmul(vectors.transpose(1, 2), grad).transpose(1, 2)
            if ctx.needs_input_grad[1]:
                grad_vectors = torch.matmul(grad, matrix)  # [N, K, HW] x [N, HW, C]
            return grad_matrix, grad_vectors


class _PixelWeightedSum(torch.autograd.Function):
    """``weights @ matrix``: ``[N, K, HW]`` x ``[N, HW, C]`` -> ``[N, K, C]``, for small K.

    The backward makes the matrix's gradient in the matrix's layout (for K = 1,
    an outer product, by broadcasting instead of a rank-1 matrix product), and
    the weights' gradient as ``grad @ matrix^T``, the fast orientation on the CPU.
    """

    @staticmethod
    def forward(ctx, matrix: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        ctx.autocast = _autocast_state(matrix.device.type)
        ctx.save_for_backward(matrix, weights)
        return torch.matmul(weights, matrix)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        with _autocast_as_in_forward(ctx.autocast):
            matrix, weights = ctx.saved_tensors
            grad_matrix = grad_weights = None
            if ctx.needs_input_grad[0]:
                channels_last = _pixels_contiguous(matrix)
                if weights.shape[1] == 1 and channels_last:
                    grad_matrix = weights.transpose(1, 2) * grad  # [N, HW, 1] * [N, 1, C]
                elif weights.shape[1] == 1:
                    grad_matrix = (grad.transpose(1, 2) * weights).transpose(1, 2)
                elif channels_last:
                    grad_matrix = torch.matmul(weights.transpose(1, 2), grad)  # [N, HW, C]
                else:
                    grad_matrix = torch.matmul(grad.transpose(1, 2), weights).transpose(1, 2)
            if ctx.needs_input_grad[1]:
                grad_weights = torch.matmul(grad, matrix.transpose(1, 2))  # [N, K, HW]
            return grad_matrix, grad_weights


class _SoftmaxPixelsMix(torch.autograd.Function):
    """``sum_k query_k softmax_HW(values_k)``: ``[N, HW, K]``, ``[N, K]`` -> ``[N, HW]``.

    The official sequential block's spatial logits. The backward is written out
    (with ``s`` the softmax and ``g`` the incoming gradient:
    ``dquery = s^T g``, ``dvalues = s * query * (g - dquery)``), which replaces a
    rank-1 matrix product, a thin reduction and a softmax backward by one
    broadcast, two in-place products and one fast-orientation product.
    """

    @staticmethod
    def forward(ctx, values: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        ctx.autocast = _autocast_state(values.device.type)
        weights = values.softmax(dim=1)  # over the pixels, per channel
        ctx.save_for_backward(weights, query)
        return torch.matmul(query.unsqueeze(1), weights.transpose(1, 2)).squeeze(1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        with _autocast_as_in_forward(ctx.autocast):
            weights, query = ctx.saved_tensors
            grad_query = torch.matmul(grad.unsqueeze(1), weights).squeeze(1)  # [N, K]
            grad_values = None
            if ctx.needs_input_grad[0]:
                dtype = torch.promote_types(
                    torch.promote_types(grad.dtype, grad_query.dtype),
                    torch.promote_types(weights.dtype, query.dtype),
                )
                # In place on a fresh tensor: the out-of-place chain of three
                # broadcasts runs about 20x slower on the CPU.
                grad_values = (grad.unsqueeze(2) - grad_query.unsqueeze(1)).to(dtype)
                grad_values.mul_(weights).mul_(query.unsqueeze(1))  # [N, HW, K]
            return grad_values, grad_query if ctx.needs_input_grad[1] else None


def _autocast_state(device_type: str) -> tuple[str, bool, torch.dtype | None]:
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except RuntimeError:  # a device without autocast (meta, used for FLOP counting)
        return device_type, False, None
    return device_type, enabled, torch.get_autocast_dtype(device_type) if enabled else None


def _autocast_as_in_forward(
    state: tuple[str, bool, torch.dtype | None],
) -> contextlib.AbstractContextManager:
    """The forward's autocast state for a custom backward (as ``torch.amp.custom_bwd``
    does, for whichever device the tensors are on): its products then see the
    same dtypes as the forward's under bf16 autocast."""
    device_type, enabled, dtype = state
    if not enabled:
        if device_type in ("cpu", "cuda"):  # a backward may run inside an outer autocast
            return torch.autocast(device_type, enabled=False)
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype, enabled=True)


def _matrix(conv: nn.Conv2d) -> torch.Tensor:
    """A bias-free 1x1 convolution's weight as an ``[out, in]`` matrix (a view)."""
    return conv.weight.view(conv.out_channels, conv.in_channels)


def set_fast_psa(model: nn.Module, fast: bool) -> int:
    """Switch every PSA block in ``model`` to the fast (``True``) or reference path.

    Returns how many blocks were switched. Parameters are untouched, so a model
    can be compared with itself.
    """
    blocks = [m for m in model.modules() if isinstance(m, PolarizedSelfAttention)]
    for m in blocks:
        m.fast = fast
    return len(blocks)


class SqueezeExcitation(nn.Module):
    """Squeeze-and-Excitation channel attention: ``x * sigmoid(W2 relu(W1 avgpool(x)))``."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1))))
        return x * torch.sigmoid(scale)


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


@dataclass(frozen=True)
class AttentionSpec:
    """What attention block to put in each residual block.

    Args:
        kind: ``none``, ``psa``, ``se`` or ``gc``.
        layout: PSA layout, ``parallel`` or ``sequential``.
        variant: PSA variant, ``official`` (DeLightCMU/PSA code, checkpoint
            compatible) or ``paper`` (the paper's equations).
        reduction: channel reduction ratio of the SE and GC bottlenecks.
    """

    kind: str = "psa"
    layout: str = "parallel"
    variant: str = "official"
    reduction: int = 16

    def __post_init__(self) -> None:
        _check_choice("attention.kind", self.kind, ATTENTION_KINDS)
        _check_choice("attention.layout", self.layout, PSA_LAYOUTS)
        _check_choice("attention.variant", self.variant, PSA_VARIANTS)
        if not isinstance(self.reduction, int) or self.reduction < 1:
            raise ValueError(
                f"attention.reduction must be a positive integer, got {self.reduction!r}"
            )

    @classmethod
    def from_name(cls, name: str, **overrides: object) -> AttentionSpec:
        """``none``, ``psa_parallel``, ``psa_sequential``, ``se`` or ``gc``."""
        names = {
            "none": {"kind": "none"},
            "psa_parallel": {"kind": "psa", "layout": "parallel"},
            "psa_sequential": {"kind": "psa", "layout": "sequential"},
            "se": {"kind": "se"},
            "gc": {"kind": "gc"},
        }
        if name not in names:
            raise ValueError(f"unknown attention {name!r}; choose one of {sorted(names)}")
        return cls(**{**names[name], **overrides})

    @property
    def name(self) -> str:
        return f"psa_{self.layout}" if self.kind == "psa" else self.kind

    def build(self, channels: int) -> nn.Module | None:
        """The block for a feature map with ``channels`` channels (``None`` for ``none``)."""
        if self.kind == "none":
            return None
        if self.kind == "psa":
            return PolarizedSelfAttention(channels, layout=self.layout, variant=self.variant)
        if self.kind == "se":
            return SqueezeExcitation(channels, reduction=self.reduction)
        return GlobalContext(channels, reduction=self.reduction)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def as_attention_spec(attention: AttentionSpec | Mapping | str | None) -> AttentionSpec:
    """Accept a spec, a mapping of its fields, a name such as ``psa_parallel``, or ``None``."""
    if attention is None:
        return AttentionSpec(kind="none")
    if isinstance(attention, AttentionSpec):
        return attention
    if isinstance(attention, str):
        return AttentionSpec.from_name(attention)
    if isinstance(attention, Mapping):
        fields = {k: v for k, v in attention.items() if k != "_target_"}
        unknown = set(fields) - set(AttentionSpec.__dataclass_fields__)
        if unknown:
            raise ValueError(
                f"unknown attention key(s) {sorted(unknown)}; allowed: {sorted(AttentionSpec.__dataclass_fields__)}"
            )
        return AttentionSpec(**fields)
    raise TypeError(
        f"attention must be an AttentionSpec, a mapping, a name or None, got {type(attention).__name__}"
    )


def _check_choice(key: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{key} must be one of {list(allowed)}, got {value!r}")
