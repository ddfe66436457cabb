"""What PSA attends to: each block's spatial and channel attention, captured with hooks.

:class:`AttentionRecorder` puts a forward hook on every
:class:`~psapose.models.attention.PolarizedSelfAttention` module of a model (found by
type, whatever its name or backbone) and, from the block's input, computes its two
maps with the block's own weights and its reference methods:

* ``A_ch = block.channel_attention(x)``, ``C`` weights per sample;
* ``A_sp = block.spatial_attention(x)`` (parallel layout) or
  ``block.spatial_attention(A_ch * x)`` (sequential layout, where the spatial branch
  sees the channel-weighted map), ``H x W`` weights per sample.

The model's forward code is untouched, the hook returns nothing (the output is the
block's own), and the maps are computed without gradient, so outputs and gradients
are the same with or without the recorder.

Rendering (OpenCV, uint8 RGB): :func:`render_spatial` overlays every block's ``A_sp``
on the crop, one row per stage and branch resolution; :func:`render_channel` draws
every block's ``A_ch`` as a strip of channel cells, one section per stage.
:func:`log_attention_maps` sends both to TensorBoard; ``tools/attention_maps.py``
writes them as PNGs for a trained run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from psapose.data.normalize import normalize_images
from psapose.models.attention import PolarizedSelfAttention

__all__ = [
    "CAPTION_HEIGHT",
    "LABEL_WIDTH",
    "MAX_COLUMNS",
    "PAD",
    "STRIP_HEIGHT",
    "AttentionRecorder",
    "BlockAttention",
    "crops_from_dataset",
    "group_blocks",
    "log_attention_maps",
    "psa_blocks",
    "reference_attention",
    "render_channel",
    "render_spatial",
    "save_attention_pngs",
    "spatial_rows",
]

# Layout of the rendered images, in pixels (public so that sizes can be checked).
LABEL_WIDTH = 120  # left column with each row's stage and resolution
CAPTION_HEIGHT = 16  # text band above each tile
PAD = 4  # gap between tiles and around the image
STRIP_HEIGHT = 12  # one block's A_ch strip
SECTION_HEIGHT = 18  # a stage's header in the channel image
COLORBAR_HEIGHT = 34  # the 0..1 colour scale under the channel image
CHANNEL_WIDTH = 512  # the widest strip's width (cells are this / the largest C, at least 1 px)
MAX_COLUMNS = (
    8  # tiles per row in the spatial image before a stage's branches get rows of their own
)

_FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass
class BlockAttention:
    """The two attention maps of one PSA block for a batch."""

    name: str  # the module's name in the model, e.g. "stage3.0.branches.1.0.deattn"
    stage: str  # the first part of the name: "layer1", "stage3", ...
    layout: str  # parallel | sequential
    spatial: torch.Tensor  # A_sp, [N, H, W], float32 on the CPU
    channel: torch.Tensor  # A_ch, [N, C], float32 on the CPU

    @property
    def size(self) -> tuple[int, int]:
        return int(self.spatial.shape[1]), int(self.spatial.shape[2])

    @property
    def channels(self) -> int:
        return int(self.channel.shape[1])


def psa_blocks(model: nn.Module) -> list[tuple[str, PolarizedSelfAttention]]:
    """Every PSA module of ``model`` with its name, in forward (registration) order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, PolarizedSelfAttention)]


@torch.no_grad()
def reference_attention(
    block: PolarizedSelfAttention, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A_ch [N, C, 1, 1], A_sp [N, 1, H, W])`` of ``block`` for its input ``x``, computed as
    its reference path does (:meth:`PolarizedSelfAttention.forward_reference`)."""
    a_ch = block.channel_attention(x)
    a_sp = block.spatial_attention(x if block.layout == "parallel" else x * a_ch)
    return a_ch, a_sp


class AttentionRecorder:
    """Forward hooks on every PSA block of ``model`` that record its maps (a context manager).

    ``with AttentionRecorder(model) as rec: model(x)`` then ``rec.maps()`` gives one
    :class:`BlockAttention` per block, in model order, from the last forward pass.
    """

    def __init__(self, model: nn.Module) -> None:
        self.blocks = psa_blocks(model)
        self.records: dict[str, list[BlockAttention]] = {name: [] for name, _ in self.blocks}
        self._handles: list[Any] = []

    def __enter__(self) -> AttentionRecorder:
        for name, block in self.blocks:
            self._handles.append(block.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def clear(self) -> None:
        for records in self.records.values():
            records.clear()

    def _hook(self, name: str):
        stage = name.split(".", 1)[0]

        def hook(block: PolarizedSelfAttention, inputs: tuple, output: torch.Tensor) -> None:
            a_ch, a_sp = reference_attention(block, inputs[0].detach())
            self.records[name].append(
                BlockAttention(
                    name=name,
                    stage=stage,
                    layout=block.layout,
                    spatial=a_sp[:, 0].float().cpu(),
                    channel=a_ch.flatten(1).float().cpu(),
                )
            )

        return hook

    def maps(self) -> list[BlockAttention]:
        """Each block's maps from the last forward pass, in model order."""
        missing = [name for name, records in self.records.items() if not records]
        if missing:
            raise RuntimeError(
                f"{len(missing)} PSA blocks saw no forward pass (e.g. {missing[0]}); "
                "run the model inside the recorder"
            )
        return [records[-1] for records in self.records.values()]


def group_blocks(
    maps: Sequence[BlockAttention],
) -> list[tuple[str, tuple[int, int], list[BlockAttention]]]:
    """``(stage, (H, W), blocks)``: blocks grouped by stage and feature size (an HRNet
    branch), stages in model order and, within a stage, the highest resolution first;
    blocks keep their forward order."""
    groups: dict[tuple[str, tuple[int, int]], list[BlockAttention]] = {}
    stage_order: dict[str, int] = {}
    for m in maps:
        stage_order.setdefault(m.stage, len(stage_order))
        groups.setdefault((m.stage, m.size), []).append(m)
    keys = sorted(groups, key=lambda k: (stage_order[k[0]], -k[1][0] * k[1][1]))
    return [(stage, size, groups[(stage, size)]) for stage, size in keys]


# ----------------------------------------------------------------------------- rendering


def _text(img: np.ndarray, text: str, x: int, y: int, scale: float = 0.38, color=(230, 230, 230)):
    cv2.putText(img, text, (x, y), _FONT, scale, color, 1, cv2.LINE_AA)


def _colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] as JET colours, RGB uint8."""
    levels = (np.clip(values, 0.0, 1.0) * 255).astype(np.uint8)
    return cv2.applyColorMap(levels, cv2.COLORMAP_JET)[..., ::-1]


def spatial_rows(
    maps: Sequence[BlockAttention], max_columns: int = MAX_COLUMNS
) -> list[tuple[str, list[BlockAttention]]]:
    """The rows of :func:`render_spatial`: ``(stage, blocks)``. Each stage's branch groups
    (:func:`group_blocks`) share a row while it holds at most ``max_columns`` tiles; a
    larger branch gets rows of its own (never split), so that HRNet-W32's 16-block
    branches keep one row each and the quick-start model's stages one row each."""
    rows: list[tuple[str, list[BlockAttention]]] = []
    for stage, _, blocks in group_blocks(maps):
        if rows and rows[-1][0] == stage and len(rows[-1][1]) + len(blocks) <= max_columns:
            rows[-1][1].extend(blocks)
        else:
            rows.append((stage, list(blocks)))
    return rows


def render_spatial(
    crop: np.ndarray, maps: Sequence[BlockAttention], index: int = 0, scale: int = 1,
    alpha: float = 0.55, title: str = "", header: np.ndarray | None = None,
    max_columns: int = MAX_COLUMNS,
) -> np.ndarray:  # fmt: skip
    """Every block's ``A_sp`` over the crop (RGB uint8, the network input): one row per
    stage (or per branch of a stage with many blocks, see :func:`spatial_rows`), highest
    resolution first, blocks in forward order; each tile's caption gives its feature
    size and the map's range.

    Each map is stretched to its own range: PSA's spatial weights often vary over a few
    hundredths around 0.5, which a fixed 0..1 scale would hide. The first row shows
    ``header`` (default: the crop; say, the crop with its predicted pose), resized to a
    tile. Size: ``(1 + rows) * (CAPTION_HEIGHT + h + PAD) + PAD`` by ``LABEL_WIDTH +
    columns * (w + PAD) + PAD``, tiles ``h x w`` = the crop times ``scale``.
    """
    rows = spatial_rows(maps, max_columns)
    h, w = crop.shape[0] * scale, crop.shape[1] * scale
    columns = max([len(blocks) for _, blocks in rows] + [1])
    cell_h = CAPTION_HEIGHT + h + PAD
    canvas = np.full(
        ((1 + len(rows)) * cell_h + PAD, LABEL_WIDTH + columns * (w + PAD) + PAD, 3),
        24, np.uint8,
    )  # fmt: skip
    base = cv2.resize(crop, (w, h), interpolation=cv2.INTER_LINEAR)

    def place(tile: np.ndarray, row: int, col: int, caption: str) -> None:
        y = row * cell_h + PAD
        x = LABEL_WIDTH + col * (w + PAD)
        _text(canvas, caption, x, y + CAPTION_HEIGHT - 4)
        canvas[y + CAPTION_HEIGHT : y + CAPTION_HEIGHT + h, x : x + w] = tile

    _text(canvas, title or "input crop", 4, PAD + CAPTION_HEIGHT - 4)
    first = base if header is None else cv2.resize(header, (w, h), interpolation=cv2.INTER_LINEAR)
    place(first, 0, 0, f"{crop.shape[0]}x{crop.shape[1]}")
    for row, (stage, blocks) in enumerate(rows, start=1):
        y = row * cell_h + PAD + CAPTION_HEIGHT + 14
        _text(canvas, stage, 4, y, 0.45)
        _text(canvas, f"{len(blocks)} block{'s' if len(blocks) > 1 else ''}", 4, y + 18)
        counts: dict[tuple[int, int], int] = {}
        for col, block in enumerate(blocks):
            a_sp = block.spatial[index].numpy()
            lo, hi = float(a_sp.min()), float(a_sp.max())
            stretched = (a_sp - lo) / (hi - lo) if hi > lo else np.zeros_like(a_sp)
            heat = cv2.resize(stretched, (w, h), interpolation=cv2.INTER_LINEAR)
            tile = cv2.addWeighted(base, 1.0 - alpha, _colormap(heat), alpha, 0.0)
            k = counts[block.size] = counts.get(block.size, -1) + 1
            fh, fw = block.size
            place(tile, row, col, f"{fh}x{fw}#{k} {lo:.3f}-{hi:.3f}")
    return canvas


def render_channel(maps: Sequence[BlockAttention], index: int = 0, title: str = "") -> np.ndarray:
    """Every block's ``A_ch`` as a strip of channel cells on a fixed 0..1 colour scale, one
    section per stage (a header, then one strip per block in forward order), with the
    colour scale below (RGB uint8).

    Cells are ``CHANNEL_WIDTH // max C`` pixels wide (at least 1). Size: ``PAD + sections
    * SECTION_HEIGHT + blocks * (STRIP_HEIGHT + 2) + COLORBAR_HEIGHT`` by ``LABEL_WIDTH +
    max C * cell + PAD``.
    """
    stages: dict[str, list[BlockAttention]] = {}
    for m in maps:
        stages.setdefault(m.stage, []).append(m)
    widest = max([m.channels for m in maps] + [1])
    cell = max(1, CHANNEL_WIDTH // widest)
    height = PAD + len(stages) * SECTION_HEIGHT + len(maps) * (STRIP_HEIGHT + 2) + COLORBAR_HEIGHT
    canvas = np.full((height, LABEL_WIDTH + widest * cell + PAD, 3), 24, np.uint8)
    y = PAD
    for k, (stage, blocks) in enumerate(stages.items()):
        # The title (the crop's name) rides on the first stage's header.
        _text(canvas, stage + (f"   {title}" if title and k == 0 else ""), 4, y + 13, 0.45)
        y += SECTION_HEIGHT
        for block in blocks:
            a_ch = block.channel[index].numpy()
            strip = np.repeat(_colormap(a_ch[None, :]), cell, axis=1)
            canvas[y : y + STRIP_HEIGHT, LABEL_WIDTH : LABEL_WIDTH + strip.shape[1]] = strip
            h, w = block.size
            _text(canvas, f"{h}x{w} C={block.channels}", 4, y + STRIP_HEIGHT - 2, 0.34)
            y += STRIP_HEIGHT + 2
    # The colour scale: 0 .. 1 across the widest strip.
    bar = _colormap(np.linspace(0.0, 1.0, widest * cell)[None, :])
    canvas[y + 4 : y + 14, LABEL_WIDTH : LABEL_WIDTH + bar.shape[1]] = bar
    _text(canvas, "A_ch", 4, y + 13, 0.38)
    for value in (0.0, 0.5, 1.0):
        x = LABEL_WIDTH + int(round(value * (widest * cell - 1)))
        _text(canvas, f"{value:g}", max(LABEL_WIDTH, x - 8), y + 28, 0.34)
    return canvas


def save_attention_pngs(
    out_dir: str | Path, stem: str, crop: np.ndarray, maps: Sequence[BlockAttention],
    index: int = 0, scale: int = 1, header: np.ndarray | None = None,
) -> list[Path]:  # fmt: skip
    """``<stem>_spatial.png`` and ``<stem>_channel.png`` for sample ``index`` (crop in RGB)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}_spatial.png", out / f"{stem}_channel.png"]
    images = [
        render_spatial(crop, maps, index, scale, title=stem, header=header),
        render_channel(maps, index, stem),
    ]
    for path, image in zip(paths, images, strict=True):
        if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
            raise OSError(f"cannot write {path}")
    return paths


# ----------------------------------------------------------------------------- TensorBoard


def crops_from_dataset(dataset: Any, count: int) -> np.ndarray:
    """The ``count`` highest-scoring crops of an evaluation dataset (uint8 ``(N, H, W, 3)``,
    in the dataset's colour order), the same ones every time, exactly as evaluation cuts them."""
    scores = np.asarray(dataset.instances.scores, dtype=np.float64)
    rows = np.argsort(-scores, kind="stable")[:count]
    return np.stack([dataset[int(r)]["image"].numpy() for r in rows])


@torch.no_grad()
def log_attention_maps(
    writer: Any, model: nn.Module, images: Any, step: int, max_images: int = 2,
    color: str | None = None,
) -> int:  # fmt: skip
    """Send each PSA block's ``A_sp`` (over the crop) and ``A_ch`` (per-stage strips) to
    TensorBoard as ``attention/spatial/<i>`` and ``attention/channel/<i>``.

    ``images`` is an evaluation dataset (its ``max_images`` highest-scoring crops are
    used, the same at every call, so the maps can be followed through training) or
    uint8 crops ``(N, H, W, 3)`` (array or tensor) in the model's colour order. The model
    runs in eval mode on its own device and is put back in the mode it was in. Returns
    the number of PSA blocks (0, and nothing logged, for a model without PSA).
    """
    if not psa_blocks(model):
        return 0
    if hasattr(images, "instances"):
        color = color or getattr(images, "color", "rgb")
        crops = crops_from_dataset(images, max_images)
    else:
        crops = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        crops = crops[:max_images]
    color = color or "rgb"
    param = next(model.parameters())
    batch = normalize_images(torch.from_numpy(np.ascontiguousarray(crops)), device=param.device)
    was_training = model.training
    model.eval()
    try:
        with AttentionRecorder(model) as recorder:
            model(batch)
        maps = recorder.maps()
    finally:
        model.train(was_training)
    # Crops at least 192 pixels high, so that the small maps stay readable.
    scale = max(1, math.ceil(192 / crops.shape[1]))
    for i, crop in enumerate(crops):
        rgb = np.ascontiguousarray(crop[..., ::-1] if color == "bgr" else crop)
        writer.add_image(f"attention/spatial/{i}", render_spatial(rgb, maps, i, scale), step,
                         dataformats="HWC")  # fmt: skip
        writer.add_image(f"attention/channel/{i}", render_channel(maps, i), step, dataformats="HWC")
    return len(maps)
