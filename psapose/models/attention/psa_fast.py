"""The fast PSA block as one autograd function (:meth:`PolarizedSelfAttention.forward_fast`).

Where a PSA block's time goes on the CPU inside a training step (HRNet-W32,
256x192, batch 8, measured block by block in the step): the passes over
full-size ``[N, C, H, W]`` tensors, each bound by memory bandwidth with the
caches cold from the backbone's convolutions, and, nearly as much, the number
of operations: 40 of the 108 blocks work on ``16 x 12`` or ``8 x 6`` maps,
where each operation's dispatch and each autograd node's bookkeeping cost more
than its arithmetic. Left to autograd, the fast path's algebra made each of
``x``'s gradient terms a full-size tensor of its own (an outer product, a
matrix product, the mean's expanded gradient) and added them one by one, saved
a full-size broadcast sum (or ``y = a_ch * x``) for the output's backward, and
ran about 40 autograd nodes (parallel; 50 sequential) per block and step. This
module computes the whole block (its full-size passes and its small per-sample
chain, ``conv_up`` included) in one :class:`torch.autograd.Function` with a
hand-written backward: one node, and about a quarter fewer tensor operations.

Full-size passes, with ``x`` read as a per-sample ``[N, HW, C]`` pixel matrix
(a view in either memory format):

* forward: the reductions of ``x`` that the attention weights need (two or
  three reads), the official sequential block's ``C -> C/2`` projection, and the
  output (one new tensor; nothing full-size but ``x`` is saved for the backward);
* backward: ``g * x`` (a temporary, reduced over the pixels and over the
  channels), then ``x``'s gradient in one new tensor, ``g * a_sp + g * a_ch`` (or
  ``(g a_sp) a_ch``), to which every other term is added in place as one
  low-rank product (``baddbmm_``: the sum of K outer products of per-pixel and
  per-channel vectors, e.g. ``[s, dl_ch, dl_sp, 1/HW]^T @ [dpooled, w_q, v, dmean]``).

Products run under the forward's autocast state in both passes (as
``torch.amp.custom_fwd``/``custom_bwd`` do, for whichever device the tensors are
on); the output and its gradient are plain products in the promoted dtype, as
the reference's are. No operation writes through ``out=`` (``torch.compile``
traces the function as one graph).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

__all__ = ["psa"]


def psa(
    x: torch.Tensor,
    layout: str,
    paper: bool,
    w_q: torch.Tensor,
    w_v_right: torch.Tensor,
    w_q_left: torch.Tensor,
    w_v_left: torch.Tensor,
    up: tuple[torch.Tensor, ...],
    eps: float,
) -> torch.Tensor:
    """The PSA block's output for ``x`` ``[N, C, H, W]``, in ``x``'s memory format.

    ``w_*`` are the four query/value convolutions' weights (``[out, in, 1, 1]``);
    ``up`` is ``conv_up``'s parameters: ``(W_z,)`` (official parallel),
    ``(W_z, ln.weight, ln.bias)`` (paper) or ``(W_1, b_1, ln.weight, ln.bias, W_2, b_2)``
    (the official sequential bottleneck), ``eps`` its LayerNorm's. The output is
    a new map (not a view), so later in-place operations may modify it.
    """
    return _PSA.apply(x, layout, paper, eps, w_q, w_v_right, w_q_left, w_v_left, *up)


class _PSA(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, layout, paper, eps, w_q, w_v_right, w_q_left, w_v_left, *up):
        ctx.autocast = _autocast_state(x.device.type)
        ctx.layout, ctx.paper, ctx.eps, ctx.num_up = layout, paper, eps, len(up)
        params = (w_q, w_v_right, w_q_left, w_v_left, *up)
        if layout == "parallel":
            out, saved = _parallel_forward(x, params, paper, eps)
        else:
            out, saved = _sequential_forward(ctx, x, params, paper, eps)
        ctx.names = tuple(saved)
        ctx.save_for_backward(x, *params, *saved.values())
        return out

    @staticmethod
    def backward(ctx, grad):
        x, *rest = ctx.saved_tensors
        num_params = 4 + ctx.num_up
        params, saved = rest[:num_params], dict(zip(ctx.names, rest[num_params:], strict=True))
        if ctx.layout == "parallel":
            grads = _parallel_backward(ctx, grad, x, params, saved)
        else:
            grads = _sequential_backward(ctx, grad, x, params, saved)
        grad_x, *grad_params = grads
        grad_params = [g.view_as(p) for g, p in zip(grad_params, params, strict=True)]
        return grad_x, None, None, None, *grad_params


def _parallel_forward(x, params, paper, eps):
    """``x a_sp + x a_ch``; see :meth:`PolarizedSelfAttention.forward_fast` for the algebra."""
    w_q, w_v_right, w_q_left, w_v_left, *up = params
    xm = pixels(x)
    n, _, c = xm.shape
    mean = xm.mean(dim=1)  # [N, C]
    query = torch.mm(mean, _matrix(w_q_left).t())  # [N, C/2]
    if paper:
        query = query.softmax(dim=1)
    vector = torch.mm(query, _matrix(w_v_left))  # [N, C]: spatial logits = vector . x
    projections = torch.cat((_matrix(w_q).expand(n, c), vector), dim=0).view(2, n, c)
    logits = torch.bmm(projections.transpose(0, 1), xm.transpose(1, 2))  # [N, 2, HW]
    weights = logits[:, 0].softmax(dim=1)  # [N, HW]
    pooled = torch.bmm(weights.unsqueeze(1), xm).squeeze(1)  # [N, C]
    context = torch.mm(pooled, _matrix(w_v_right).t())  # [N, C/2]
    a_ch, up_saved = _up_forward(context, up, eps)
    spatial = logits[:, 1] if paper else logits[:, 1].softmax(dim=1)
    a_sp = torch.sigmoid(spatial)
    channel_map, spatial_map = _as_maps(x, a_ch, a_sp)
    # The reference's order, x a_sp + x a_ch, and so its rounding; x's memory format.
    out = torch.mul(x, spatial_map).addcmul_(x, channel_map)
    saved = dict(
        mean=mean, query=query, vector=vector, weights=weights, pooled=pooled,
        context=context, a_ch=a_ch, a_sp=a_sp, **up_saved,
    )  # fmt: skip
    if not paper:
        saved["spatial"] = spatial
    return out, saved


def _parallel_backward(ctx, grad, x, params, saved):
    w_q, w_v_right, w_q_left, w_v_left, *up = params
    xm = pixels(x)
    n, hw, c = xm.shape
    a_ch, a_sp = saved["a_ch"], saved["a_sp"]
    grad_x, grad_a_ch, grad_a_sp = _scale_backward(grad, x, a_ch, a_sp, product=False)
    with _autocast_as_in_forward(ctx.autocast):
        grad_context, grad_up = _up_backward(grad_a_ch, saved, up, ctx.eps)
        grad_pooled = torch.mm(grad_context, _matrix(w_v_right))  # [N, C]
        grad_w_v_right = torch.mm(grad_context.t(), saved["pooled"])
        grad_spatial = _sigmoid_backward(grad_a_sp, a_sp)
        if not ctx.paper:
            grad_spatial = _softmax_backward(grad_spatial, saved["spatial"])
        weights = saved["weights"]
        grad_weights = torch.bmm(grad_pooled.unsqueeze(1), xm.transpose(1, 2)).squeeze(1)
        grad_channel = _softmax_backward(grad_weights, weights)  # [N, HW]
        grad_logits = torch.cat((grad_channel, _cast(grad_spatial, grad_channel.dtype)), dim=0)
        grad_projections = torch.bmm(grad_logits.view(2, n, hw).transpose(0, 1), xm)  # [N, 2, C]
        grad_vector = grad_projections[:, 1]
        query, mean = saved["query"], saved["mean"]
        grad_query = torch.mm(grad_vector, _matrix(w_v_left).t())  # [N, C/2]
        grad_w_v_left = torch.mm(query.t(), grad_vector)
        if ctx.paper:
            grad_query = _softmax_backward(grad_query, query)
        grad_mean = torch.mm(grad_query, _matrix(w_q_left))  # [N, C]
        grad_w_q_left = torch.mm(grad_query.t(), mean)
        grad_w_q = grad_projections[:, 0].sum(dim=0)
        uniform = torch.full_like(weights, 1 / hw)
        left = _rows((weights, grad_channel, grad_spatial, uniform), grad_x.dtype)
        right = _rows(
            (grad_pooled, _matrix(w_q).expand(n, c), saved["vector"], grad_mean), grad_x.dtype
        )
    _add_low_rank_(grad_x, left, right)
    return grad_x, grad_w_q, grad_w_v_right, grad_w_q_left, grad_w_v_left, *grad_up


def _sequential_forward(ctx, x, params, paper, eps):
    """``(x a_ch) a_sp``, ``a_sp`` from ``y = a_ch x`` without making ``y``."""
    w_q, w_v_right, w_q_left, w_v_left, *up = params
    xm = pixels(x)
    n, hw, c = xm.shape
    logits = torch.bmm(_matrix(w_q).expand(n, 1, c), xm.transpose(1, 2)).squeeze(1)  # [N, HW]
    weights = logits.softmax(dim=1)
    # The channel branch's weighted sum and GAP(x) in one product; then
    # GAP(y) = A_ch * GAP(x), as A_ch is constant over the pixels.
    uniform = torch.full_like(weights, 1 / hw)
    sums = torch.bmm(torch.cat((weights, uniform), dim=0).view(2, n, hw).transpose(0, 1), xm)
    pooled, mean = sums[:, 0], sums[:, 1]
    context = torch.mm(pooled, _matrix(w_v_right).t())  # [N, C/2]
    a_ch, up_saved = _up_forward(context, up, eps)
    pooled_y = a_ch * mean  # GAP(y)
    query = torch.mm(pooled_y, _matrix(w_q_left).t())  # [N, C/2]
    saved = dict(weights=weights, pooled=pooled, mean=mean, context=context, a_ch=a_ch)
    saved.update(up_saved, pooled_y=pooled_y)
    if paper:
        # (W_v'^T softmax(q)) . y = ((W_v'^T softmax(q)) * A_ch) . x
        query = query.softmax(dim=1)
        spatial_vector = torch.mm(query, _matrix(w_v_left))  # [N, C]
        vector = spatial_vector * a_ch
        spatial = torch.bmm(vector.unsqueeze(1), xm.transpose(1, 2)).squeeze(1)
        saved.update(spatial_vector=spatial_vector, vector=vector)
    else:
        # The softmax over the pixels acts on each channel of W_v' y, so the
        # projection stays. Where the map has at least C/2 pixels it is
        # (W_v' diag(A_ch)) x, a per-sample [C/2, C] weight; on smaller maps y
        # is the smaller tensor and is made (and made again in backward).
        w_v = _matrix(w_v_left)
        ctx.fold = hw >= w_v.shape[0]
        if ctx.fold:
            values = torch.bmm(w_v * a_ch.unsqueeze(1), xm.transpose(1, 2))  # [N, C/2, HW]
        else:
            values = torch.matmul(w_v, (xm * a_ch.unsqueeze(1)).transpose(1, 2))
        # Saved, half of x's size: recomputing would repeat the projection and
        # the exponentials.
        value_weights = values.softmax(dim=2)
        spatial = torch.bmm(query.unsqueeze(1), value_weights).squeeze(1)  # [N, HW]
        saved["value_weights"] = value_weights
    a_sp = torch.sigmoid(spatial)
    channel_map, spatial_map = _as_maps(x, a_ch, a_sp)
    # The reference's order, (x a_ch) a_sp, and so its rounding; x's memory format.
    out = torch.mul(x, channel_map).mul_(spatial_map)
    saved.update(query=query, a_sp=a_sp)
    return out, saved


def _sequential_backward(ctx, grad, x, params, saved):
    w_q, w_v_right, w_q_left, w_v_left, *up = params
    xm = pixels(x)
    n, hw, c = xm.shape
    a_ch, a_sp, query = saved["a_ch"], saved["a_sp"], saved["query"]
    grad_x, grad_a_ch, grad_a_sp = _scale_backward(grad, x, a_ch, a_sp, product=True)
    left_rows, right_rows = [], []  # the low-rank terms of dx but the pooling's
    values_left = values_right = None  # the official fold's [N, C/2, HW], [N, C/2, C] terms
    with _autocast_as_in_forward(ctx.autocast):
        grad_spatial = _sigmoid_backward(grad_a_sp, a_sp)  # [N, HW]
        w_v = _matrix(w_v_left)
        if ctx.paper:
            spatial_vector, vector = saved["spatial_vector"], saved["vector"]
            grad_vector = torch.bmm(grad_spatial.unsqueeze(1), xm).squeeze(1)  # [N, C]
            left_rows.append(grad_spatial)
            right_rows.append(vector)
            grad_a_ch = grad_a_ch + grad_vector * spatial_vector
            grad_spatial_vector = grad_vector * a_ch
            grad_w_v_left = torch.mm(query.t(), grad_spatial_vector)
            grad_query = _softmax_backward(torch.mm(grad_spatial_vector, w_v.t()), query)
        else:
            value_weights = saved["value_weights"]
            k = value_weights.shape[1]
            # g^T s^T, the fast orientation of this product on the CPU.
            grad_query = torch.bmm(grad_spatial.unsqueeze(1), value_weights.transpose(1, 2))
            grad_query = grad_query.squeeze(1)  # [N, C/2]
            # dvalues = s * q * (g - dq), in place in one new half-size tensor: with the
            # fold, the first C/2 rows of the low-rank product's left factor (no copy).
            if ctx.fold:
                values_left = value_weights.new_empty((n, k + 3, hw), dtype=grad_x.dtype)
                grad_values = values_left[:, :k]
                grad_values.copy_(grad_spatial.unsqueeze(1).expand(n, k, hw))
                grad_values.sub_(grad_query.unsqueeze(2))
            else:
                grad_values = grad_spatial.unsqueeze(1) - grad_query.unsqueeze(2)
                grad_values = _cast(grad_values, _promoted(grad_values, value_weights))
            grad_values.mul_(value_weights).mul_(query.unsqueeze(2))  # [N, C/2, HW]
            if ctx.fold:
                grad_weight = torch.bmm(grad_values, xm)  # [N, C/2, C]
                grad_a_ch = grad_a_ch + (grad_weight * w_v).sum(dim=1)
                grad_w_v_left = (grad_weight * a_ch.unsqueeze(1)).sum(dim=0)
                values_right = w_v * a_ch.unsqueeze(1)  # dx += dvalues^T (W_v' diag(a_ch))
            else:
                y = xm * a_ch.unsqueeze(1)
                grad_w_v_left = torch.bmm(grad_values, y).sum(dim=0)
                grad_y = torch.matmul(grad_values.transpose(1, 2), w_v)  # [N, HW, C]
                grad_a_ch = grad_a_ch + (grad_y * xm).sum(dim=1)
                pixels(grad_x).addcmul_(grad_y, a_ch.unsqueeze(1))
        # query = W_q' (a_ch * mean)
        grad_pooled_y = torch.mm(grad_query, _matrix(w_q_left))  # [N, C]
        grad_w_q_left = torch.mm(grad_query.t(), saved["pooled_y"])
        mean = saved["mean"]
        grad_a_ch = grad_a_ch + grad_pooled_y * mean
        grad_mean = grad_pooled_y * a_ch
        grad_context, grad_up = _up_backward(grad_a_ch, saved, up, ctx.eps)
        grad_pooled = torch.mm(grad_context, _matrix(w_v_right))  # [N, C]
        grad_w_v_right = torch.mm(grad_context.t(), saved["pooled"])
        weights = saved["weights"]
        grad_weights = torch.bmm(grad_pooled.unsqueeze(1), xm.transpose(1, 2)).squeeze(1)
        grad_logits = _softmax_backward(grad_weights, weights)  # [N, HW]
        grad_w_q = torch.bmm(grad_logits.unsqueeze(1), xm).sum(dim=0)
        left_rows += [weights, torch.full_like(weights, 1 / hw), grad_logits]
        right_rows += [grad_pooled, grad_mean, _matrix(w_q).expand(n, c)]
    right = _rows(right_rows, grad_x.dtype)
    if values_left is None:
        left = _rows(left_rows, grad_x.dtype)
    else:
        values_left[:, -3:] = _rows(left_rows, grad_x.dtype)
        left, right = values_left, torch.cat((_cast(values_right, right.dtype), right), dim=1)
    _add_low_rank_(grad_x, left, right)
    return grad_x, grad_w_q, grad_w_v_right, grad_w_q_left, grad_w_v_left, *grad_up


def _up_forward(context, up, eps):
    """``A_ch = sigmoid(W_z(context))`` for ``conv_up``'s three forms, on ``[N, C/2]`` vectors
    (as ``F.linear``/``F.layer_norm``: the same parameters as the ``1 x 1`` convolutions)."""
    if len(up) == 1:  # official parallel: a bias-free C/2 -> C convolution
        return torch.sigmoid(torch.mm(context, _matrix(up[0]).t())), {}
    if len(up) == 3:  # paper: convolution, LayerNorm([C, 1, 1])
        weight, gamma, beta = up
        hidden = torch.mm(context, _matrix(weight).t())
        normed = F.layer_norm(hidden, hidden.shape[1:], gamma.view(-1), beta.view(-1), eps)
        a_ch = torch.sigmoid(normed)
        return a_ch, {"hidden": hidden, "normed": normed}
    # official sequential: Conv -> LayerNorm -> ReLU -> Conv, with biases
    weight_in, bias_in, gamma, beta, weight_out, bias_out = up
    hidden = F.linear(context, _matrix(weight_in), bias_in)
    normed = F.layer_norm(hidden, hidden.shape[1:], gamma.view(-1), beta.view(-1), eps)
    activated = torch.relu(normed)
    a_ch = torch.sigmoid(F.linear(activated, _matrix(weight_out), bias_out))
    return a_ch, {"hidden": hidden, "normed": normed, "activated": activated}


def _up_backward(grad_a_ch, saved, up, eps):
    """The gradients of ``context`` and of ``up``'s parameters, from ``A_ch``'s."""
    a_ch, context = saved["a_ch"], saved["context"]
    grad = _sigmoid_backward(grad_a_ch, a_ch)
    if len(up) == 1:
        weight = _matrix(up[0])
        return torch.mm(grad, weight), (torch.mm(grad.t(), context),)
    if len(up) == 3:
        weight, gamma, beta = up
        grad, grad_gamma, grad_beta = _layer_norm_backward(grad, saved, gamma, beta, eps)
        grad_weight = torch.mm(grad.t(), context)
        return torch.mm(grad, _matrix(weight)), (grad_weight, grad_gamma, grad_beta)
    weight_in, bias_in, gamma, beta, weight_out, bias_out = up
    activated = saved["activated"]
    grad_weight_out, grad_bias_out = torch.mm(grad.t(), activated), grad.sum(dim=0)
    grad = torch.mm(grad, _matrix(weight_out))
    grad = torch.ops.aten.threshold_backward(_cast(grad, activated.dtype), activated, 0)
    grad, grad_gamma, grad_beta = _layer_norm_backward(grad, saved, gamma, beta, eps)
    grad_weight_in, grad_bias_in = torch.mm(grad.t(), context), grad.sum(dim=0)
    grad_context = torch.mm(grad, _matrix(weight_in))
    grads = (grad_weight_in, grad_bias_in, grad_gamma, grad_beta, grad_weight_out, grad_bias_out)
    return grad_context, grads


def _layer_norm_backward(grad, saved, gamma, beta, eps):
    """LayerNorm's backward over the last dimension, in the dtype its forward ran in."""
    hidden = _cast(saved["hidden"], saved["normed"].dtype)  # autocast may run it in float32
    shape = hidden.shape[1:]
    gamma, beta = gamma.view(-1), beta.view(-1)
    _, mean, rstd = torch.native_layer_norm(hidden, shape, gamma, beta, eps)
    return torch.ops.aten.native_layer_norm_backward(
        _cast(grad, hidden.dtype), hidden, shape, mean, rstd, gamma, beta, (True, True, True)
    )


def _scale_backward(grad, x, a_ch, a_sp, product):
    """Gradients of ``x a_sp + x a_ch`` (``product``: ``(x a_ch) a_sp``) for the output's
    gradient ``grad``: ``x``'s, in a new map that the caller adds to in place, and
    ``a_ch``'s and ``a_sp``'s."""
    n, c, h, w = x.shape
    grad_x_map = torch.mul(x, grad)  # g * x, in x's memory format
    if product:
        # sum_p g x a_sp and sum_c g x a_ch as products with a pixel and a channel
        # vector: fewer passes than multiplying first. Not autocast: the reference
        # reduces in the gradient's dtype.
        gm, dtype = pixels(grad_x_map), grad_x_map.dtype
        with _autocast_as_in_forward((x.device.type, False, None)):
            grad_a_ch = torch.bmm(_cast(a_sp, dtype).unsqueeze(1), gm).squeeze(1)
            grad_a_sp = torch.bmm(_cast(a_ch, dtype).unsqueeze(1), gm.transpose(1, 2)).squeeze(1)
    else:
        grad_a_ch = grad_x_map.sum(dim=(2, 3))
        grad_a_sp = grad_x_map.sum(dim=1).reshape(n, h * w)
    del grad_x_map  # its memory is the next tensor's
    channel, spatial = _as_maps(x, a_ch, a_sp, grad)
    if product:
        grad_x = torch.mul(grad, spatial).mul_(channel)
    else:
        grad_x = torch.mul(grad, spatial).addcmul_(grad, channel)
    if not (grad_x.is_contiguous() or grad_x.is_contiguous(memory_format=torch.channels_last)):
        # A gradient in another order: its pixel matrix must be a view to add to.
        grad_x = grad_x.contiguous(memory_format=_memory_format(x))
    return grad_x, grad_a_ch, grad_a_sp


def _as_maps(x, a_ch, a_sp, *others):
    """``a_ch`` ``[N, C]`` and ``a_sp`` ``[N, HW]`` as ``[N, C, 1, 1]`` and ``[N, 1, H, W]``, in
    the dtype the products with ``x`` (and ``others``) promote to, as the reference's do."""
    n, c, h, w = x.shape
    dtype = _promoted(x, a_ch, a_sp, *others)
    return _cast(a_ch, dtype).view(n, c, 1, 1), _cast(a_sp, dtype).view(n, 1, h, w)


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


def _add_low_rank_(grad_x, left, right):
    """``grad_x += left^T @ right``, in place: ``[N, K, HW]``, ``[N, K, C]`` factors, the sum
    of K outer products of per-pixel and per-channel vectors as one product.

    ``grad_x`` is a contiguous or channels-last map, whose pixel matrix is a view (made by
    :func:`_scale_backward`); the factors are in its dtype (an in-place product is not
    autocast).
    """
    gm = pixels(grad_x)
    if _channels_inner(gm):
        gm.baddbmm_(left.transpose(1, 2), right)
    else:
        gm.transpose(1, 2).baddbmm_(right.transpose(1, 2), left)


def _rows(vectors, dtype):
    """``[N, L]`` vectors as the rows of one ``[N, K, L]`` tensor of ``dtype``."""
    return torch.stack([_cast(v, dtype) for v in vectors], dim=1)


def pixels(x: torch.Tensor) -> torch.Tensor:
    """A map ``[N, C, H, W]`` as ``[N, HW, C]``: a view for channels-last and contiguous maps."""
    n, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(n, h * w, c)


def _channels_inner(matrix: torch.Tensor) -> bool:
    """Whether an ``[N, HW, C]`` pixel matrix has its channels contiguous (channels-last)."""
    return matrix.stride(2) == 1


def _matrix(weight: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution's weight ``[out, in, 1, 1]`` as an ``[out, in]`` matrix (a view)."""
    return weight.view(weight.shape[0], -1)


def _sigmoid_backward(grad: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.sigmoid_backward(_cast(grad, out.dtype), out)


def _softmax_backward(grad: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The gradient of the logits of ``out = softmax(logits, dim=-1)``."""
    return torch._softmax_backward_data(_cast(grad, out.dtype), out, -1, out.dtype)


def _cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` in ``dtype``, without an operation where it already is (most calls)."""
    return t if t.dtype == dtype else t.to(dtype)


def _promoted(*tensors: torch.Tensor) -> torch.dtype:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _autocast_state(device_type: str) -> tuple[str, bool, torch.dtype | None]:
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except RuntimeError:  # a device without autocast (meta, used for FLOP counting)
        return device_type, False, None
    return device_type, enabled, torch.get_autocast_dtype(device_type) if enabled else None


def _autocast_as_in_forward(
    state: tuple[str, bool, torch.dtype | None],
) -> contextlib.AbstractContextManager:
    """The forward's autocast state for the backward (as ``torch.amp.custom_bwd``
    does, for whichever device the tensors are on): its products then see the
    same dtypes as the forward's under bf16 autocast."""
    device_type, enabled, dtype = state
    if not enabled:
        if device_type in ("cpu", "cuda"):  # a backward may run inside an outer autocast
            return torch.autocast(device_type, enabled=False)
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype, enabled=True)
