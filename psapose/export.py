"""ONNX export of the heatmap networks, and a parity check with onnxruntime.

The graph is the network alone: a normalised ``float32 [N, 3, H, W]`` batch in,
``[N, C*K, H/4, W/4]`` heatmaps out, with a dynamic batch axis. Cropping,
normalisation, the flip test and decoding stay outside (as in
:class:`psapose.api.PoseEstimator`), so one exported file serves any codec's
decoding and flip test.

``onnx``, ``onnxscript`` and ``onnxruntime`` are optional (``pip install
'psapose[onnx]'``) and imported only here.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from psapose.models.attention import reference_psa

__all__ = [
    "OnnxUnavailable",
    "calibrate_batchnorm",
    "check_onnx",
    "compare_heatmaps",
    "decisive_peaks",
    "export_onnx",
    "onnx_session",
    "parity_ok",
    "random_weights",
]

log = logging.getLogger(__name__)

INPUT_NAME, OUTPUT_NAME = "images", "heatmaps"


class OnnxUnavailable(ImportError):
    """onnx / onnxruntime (or onnxscript for the dynamo exporter) is not installed."""


def _require(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError as err:
        raise OnnxUnavailable(
            f"{module} is not installed: pip install 'psapose[onnx]' "
            "(onnx, onnxscript and onnxruntime)"
        ) from err


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    input_size: tuple[int, int],
    opset: int = 18,
    exporter: str = "dynamo",
    example_batch: int = 2,
    verbose: bool = False,
) -> Path:
    """Write ``model`` (eval mode, on the CPU) as ONNX with a dynamic batch axis.

    ``exporter`` is ``dynamo`` (``torch.export``-based, the default of recent torch) or
    ``torchscript`` (the legacy tracer). The exporters' own output is shown with ``verbose``.
    """
    if exporter not in ("dynamo", "torchscript"):
        raise ValueError(f"exporter must be 'dynamo' or 'torchscript', got {exporter!r}")
    _require("onnx")
    if exporter == "dynamo":
        _require("onnxscript")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().to("cpu", memory_format=torch.contiguous_format)
    h, w = input_size
    example = torch.zeros(example_batch, 3, h, w)
    kwargs: dict[str, Any] = {
        "input_names": [INPUT_NAME],
        "output_names": [OUTPUT_NAME],
        "opset_version": opset,
        "dynamo": exporter == "dynamo",
    }
    if exporter == "dynamo":
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch")},)
        # One self-contained file (the weights inside) below protobuf's 2 GB limit.
        params = sum(p.numel() * p.element_size() for p in model.parameters())
        kwargs["external_data"] = params > 1.8e9
    else:
        kwargs["dynamic_axes"] = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    # The exporters print progress, deprecation notes and, in onnxscript's optimiser, a line
    # per replaced initializer (hundreds); keep them out of our output unless asked.
    quiet = contextlib.ExitStack()
    if not verbose:
        quiet.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")
        quiet.enter_context(redirect_stdout(io.StringIO()))
        quiet.enter_context(redirect_stderr(io.StringIO()))
        quiet.enter_context(_quiet_loggers("onnxscript", "onnx_ir", "torch.onnx", "torch.export"))
    # The exporters trace plain operators: PSA's fast path is one custom autograd function
    # (a hand-written backward), so the export takes the reference path, the same function
    # of the same weights (tests/test_fast_psa.py), which ONNX runtimes fuse anyway.
    with quiet, reference_psa(model), torch.no_grad():
        torch.onnx.export(model, (example,), str(path), **kwargs)
    onnx = _require("onnx")
    onnx.checker.check_model(str(path))
    return path


@contextlib.contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def onnx_session(path: str | os.PathLike, threads: int = 0) -> Any:
    """An onnxruntime CPU session (``threads=0``: onnxruntime's default)."""
    ort = _require("onnxruntime")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, batches: list[torch.Tensor]) -> nn.Module:
    """Set every BatchNorm's running statistics to the data's (cumulative average over
    ``batches``), so that an untrained network has unit-scale activations like a trained one.

    Parity checks on an untrained network would otherwise compare near-zero heatmaps.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.training) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
        m.train()
    for batch in batches:
        model(batch)
    for m, (momentum, training) in zip(norms, saved, strict=True):
        m.momentum = momentum
        m.train(training)
    return model


@torch.no_grad()
def random_weights(model: nn.Module, images: torch.Tensor, seed: int = 0) -> nn.Module:
    """Untrained weights in a trained network's numeric range, for export checks.

    The pose init (N(0, 0.001) convolutions) gives heatmaps of ~1e-10, against which any
    difference looks small. Here every convolution is Kaiming-normal, BatchNorm statistics
    are calibrated on ``images``, and the last convolution is scaled so the heatmaps'
    largest magnitude on ``images`` is 1, as a trained model's peaks are.
    """
    g = torch.Generator().manual_seed(seed)
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    for conv in convs:
        fan_in = conv.weight[0].numel()
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
    calibrate_batchnorm(model.eval(), [images])
    peak = float(model(images).abs().max())
    last = convs[-1] if convs else None
    if last is not None and peak > 0:
        last.weight.div_(peak)
        if last.bias is not None:
            last.bias.div_(peak)
    return model


def decisive_peaks(heatmaps: torch.Tensor, margin: torch.Tensor | float) -> torch.Tensor:
    """(N, K) True where a heatmap's maximum beats every value outside its 3x3 neighbourhood
    by more than ``margin`` (per map, or one number): there, no difference of that size can
    move the argmax, so decoded keypoints can be compared. Nearly flat maps (an early
    checkpoint's) have no decisive peak: their argmax is decided by rounding alone.
    """
    n, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(n, k, -1)
    peak, where = flat.max(dim=-1)
    rows, cols = where // w, where % w
    yy = torch.arange(h).view(1, 1, h, 1)
    xx = torch.arange(w).view(1, 1, 1, w)
    near = ((yy - rows[..., None, None]).abs() <= 1) & ((xx - cols[..., None, None]).abs() <= 1)
    runner_up = heatmaps.masked_fill(near, float("-inf")).reshape(n, k, -1).max(dim=-1).values
    margin = torch.as_tensor(margin, dtype=heatmaps.dtype)
    return (peak - runner_up) > margin


def check_onnx(
    path: str | os.PathLike,
    model: nn.Module,
    images: torch.Tensor,
    codec: Any = None,
    flip_indices: np.ndarray | None = None,
) -> dict[str, Any]:
    """Run the ONNX file and the PyTorch model on the same normalised ``images``.

    Returns the largest heatmap difference, absolute and relative to the heatmaps' peak,
    and with a ``codec`` the largest difference of the decoded keypoints (crop pixels)
    and scores, with the flip test when ``flip_indices`` is given. Keypoints are compared
    only where the peak is decisive (:func:`decisive_peaks`, with the margin set by
    the heatmap difference itself): elsewhere a correct export of an untrained or early
    checkpoint, whose maps are nearly flat, would decode elsewhere from rounding alone.
    """
    session = onnx_session(path)
    model = model.eval().cpu()
    x = images.detach().float().cpu().contiguous()

    def both(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            reference = model(inputs).float()
        ours = session.run([OUTPUT_NAME], {INPUT_NAME: inputs.numpy()})[0]
        return reference, torch.from_numpy(ours)

    reference, ours = both(x)
    flipped = None
    if codec is not None and flip_indices is not None:
        flipped = both(x.flip(-1).contiguous())
    report = {
        "batch": int(x.shape[0]),
        **compare_heatmaps(reference, ours, codec, flipped, flip_indices),
    }
    return report


def compare_heatmaps(
    reference: torch.Tensor,
    ours: torch.Tensor,
    codec: Any = None,
    flipped: tuple[torch.Tensor, torch.Tensor] | None = None,
    flip_indices: np.ndarray | None = None,
) -> dict[str, Any]:
    """Heatmap and decoded-keypoint differences between a reference and a candidate
    (the flipped inputs' pair for the flip test): the numbers :func:`parity_ok` judges."""
    from psapose.codecs import average_flip

    diff = (reference - ours).abs()
    peak = reference.abs().max().clamp_min(1e-12)
    report: dict[str, Any] = {
        "heatmap_shape": list(reference.shape[1:]),
        "heatmap_max_abs": float(reference.abs().max()),
        "max_abs_diff": float(diff.max()),
        "max_rel_diff": float(diff.max() / peak),
    }
    if codec is None:
        return report
    if flipped is not None:
        reference = average_flip(reference, flipped[0], flip_indices, codec)
        ours = average_flip(ours, flipped[1], flip_indices, codec)
        report["flip_max_abs_diff"] = float((reference - ours).abs().max())
    ref_kps, ref_scores = codec.decode(reference)
    our_kps, our_scores = codec.decode(ours)
    c = codec.channels_per_keypoint
    per_map = (reference - ours).abs().flatten(2).amax(-1)[:, ::c]
    # 4x the difference, and a millionth of the peak for float rounding in the decoder.
    decisive = decisive_peaks(reference[:, ::c], 4 * per_map + 1e-6 * float(peak))
    kps_diff = (ref_kps - our_kps).abs().amax(-1)
    report["keypoints_compared"] = int(decisive.sum())
    report["keypoints_total"] = int(decisive.numel())
    report["keypoint_max_diff_px"] = float(kps_diff[decisive].max()) if decisive.any() else 0.0
    report["keypoint_max_diff_px_all"] = float(kps_diff.max())
    report["score_max_diff"] = float((ref_scores - our_scores).abs().max())
    return report


def parity_ok(report: dict[str, Any], atol: float, rtol: float, keypoint_atol: float) -> bool:
    """Heatmaps within ``atol`` absolute or ``rtol`` of their peak, and decisive keypoints
    within ``keypoint_atol`` pixels."""
    heatmaps = report["max_abs_diff"] <= atol or report["max_rel_diff"] <= rtol
    keypoints = report.get("keypoint_max_diff_px", 0.0) <= keypoint_atol
    return bool(heatmaps and keypoints)
