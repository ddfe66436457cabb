"""Attention maps: hooks on every PSA block, their numbers, rendering, the tool and TensorBoard."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from psapose.attention_maps import (
    CAPTION_HEIGHT,
    CHANNEL_WIDTH,
    COLORBAR_HEIGHT,
    LABEL_WIDTH,
    PAD,
    SECTION_HEIGHT,
    STRIP_HEIGHT,
    AttentionRecorder,
    BlockAttention,
    log_attention_maps,
    render_channel,
    render_spatial,
    save_attention_pngs,
    spatial_rows,
)
from psapose.config import build_model, compose_config
from psapose.data.synthetic import generate_synthetic_coco
from psapose.export import random_weights
from psapose.models import PolarizedSelfAttention, attention_blocks

ROOT = Path(__file__).resolve().parents[1]
# The quick-start HRNet at 128x96: layer1 at 1/4, then branches at 1/4 .. 1/32.
FEATURE_SIZES = {(32, 24), (16, 12), (8, 6), (4, 3)}
BLOCKS = 10  # layer1 (1) + stage2 (2) + stage3 (3) + stage4 (4), one block per branch


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(attention: str = "psa_parallel", variant: str = "official") -> tuple:
    """The quick-start model with weights that give varied maps (the pose init gives ~0.5
    everywhere), and a batch of two inputs."""
    overrides = ["experiment=quickstart", f"attention={attention}"]
    if attention.startswith("psa"):
        overrides.append(f"attention.variant={variant}")
    model = build_model(compose_config(overrides)).eval()
    images = torch.randn(2, 3, 128, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        random_weights(model, images)
    return model, images


def _block_inputs(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], list]:
    """Each PSA block's input, captured by the test's own pre-hooks (not the recorder's)."""
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, PolarizedSelfAttention):

            def pre(mod, inputs, name=name):
                seen[name] = inputs[0].detach().clone()

            handles.append(module.register_forward_pre_hook(pre))
    return seen, handles


@pytest.mark.parametrize("layout", ["parallel", "sequential"])
@pytest.mark.parametrize("variant", ["official", "paper"])
def test_hooks_give_one_map_per_block_equal_to_the_reference(layout, variant):
    model, images = _model(f"psa_{layout}", variant)
    inputs, handles = _block_inputs(model)
    with AttentionRecorder(model) as recorder:
        model(images)
    for h in handles:
        h.remove()
    maps = recorder.maps()
    modules = dict(model.named_modules())
    assert len(maps) == BLOCKS == len(attention_blocks(model)) == len(inputs)
    assert [m.name for m in maps] == list(inputs)  # every block, in model order
    assert all(len(r) == 1 for r in recorder.records.values())  # one map per block per forward
    assert {m.size for m in maps} == FEATURE_SIZES
    assert [m.stage for m in maps] == ["layer1"] + ["stage2"] * 2 + ["stage3"] * 3 + ["stage4"] * 4
    spread = []
    with torch.no_grad():
        for m in maps:
            block, x = modules[m.name], inputs[m.name]
            n, c, h, w = x.shape
            assert m.spatial.shape == (n, h, w) and m.channel.shape == (n, c) == (2, block.channels)
            assert m.layout == layout
            a_ch = block.channel_attention(x)
            y = x if layout == "parallel" else x * a_ch
            assert torch.equal(m.channel, a_ch.flatten(1))
            assert torch.equal(m.spatial, block.spatial_attention(y)[:, 0])
            # The maps are the ones the block applies: its reference output rebuilt from them.
            a_ch, a_sp = m.channel[:, :, None, None], m.spatial[:, None]
            rebuilt = x * a_sp + x * a_ch if layout == "parallel" else (x * a_ch) * a_sp
            torch.testing.assert_close(block.forward_reference(x), rebuilt, rtol=1e-5, atol=1e-6)
            assert 0 < m.spatial.min() and m.spatial.max() < 1
            spread.append(float(m.spatial.std()))
    assert max(spread) > 1e-3  # the check above is not on flat maps


def test_outputs_and_gradients_are_the_same_with_hooks_and_hooks_go_away():
    model, images = _model("psa_sequential")
    with torch.no_grad():
        plain = model(images)
        with AttentionRecorder(model):
            hooked = model(images)
        after = model(images)
    assert torch.equal(plain, hooked) and torch.equal(plain, after)

    model.train()  # batch statistics, gradients through the blocks

    def grads(record: bool) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        x = images.clone().requires_grad_(True)
        if record:
            with AttentionRecorder(model):
                out = model(x)
        else:
            out = model(x)
        out.square().sum().backward()
        return out.detach(), x.grad, [p.grad.clone() for p in model.parameters()]

    out_a, gx_a, gp_a = grads(False)
    out_b, gx_b, gp_b = grads(True)
    assert torch.equal(out_a, out_b) and torch.equal(gx_a, gx_b)
    assert all(torch.equal(a, b) for a, b in zip(gp_a, gp_b, strict=True))
    blocks = [m for m in model.modules() if isinstance(m, PolarizedSelfAttention)]
    assert blocks and all(not m._forward_hooks for m in blocks)


def test_recorder_keeps_each_forward_and_says_when_none_ran():
    model, images = _model()
    with AttentionRecorder(model) as recorder:
        with pytest.raises(RuntimeError, match="saw no forward pass"):
            recorder.maps()
        with torch.no_grad():
            model(images)
            model(images[:1])
    assert all(len(r) == 2 for r in recorder.records.values())
    assert all(m.spatial.shape[0] == 1 for m in recorder.maps())  # the last forward's
    recorder.clear()
    assert all(not r for r in recorder.records.values())


def _record(model, images) -> list[BlockAttention]:
    with torch.no_grad(), AttentionRecorder(model) as recorder:
        model(images)
    return recorder.maps()


def test_pngs_have_the_expected_sizes_and_colours(tmp_path):
    model, images = _model()
    maps = _record(model, images)
    crop = np.random.default_rng(0).integers(0, 256, (128, 96, 3), dtype=np.uint8)
    paths = save_attention_pngs(tmp_path, "crop", crop, maps, index=1, scale=2)
    assert [p.name for p in paths] == ["crop_spatial.png", "crop_channel.png"]
    spatial, channel = (cv2.imread(str(p)) for p in paths)
    # Spatial: the input row, then one row per stage (1, 2, 3 and 4 tiles of 256x192).
    rows, columns, tile_h, tile_w = 1 + 4, 4, 256, 192
    assert spatial.shape == (
        rows * (CAPTION_HEIGHT + tile_h + PAD) + PAD,
        LABEL_WIDTH + columns * (tile_w + PAD) + PAD,
        3,
    )
    # Channel: 4 stage sections, 10 strips; the widest block has 128 channels.
    cell = CHANNEL_WIDTH // 128
    assert channel.shape == (
        PAD + 4 * SECTION_HEIGHT + BLOCKS * (STRIP_HEIGHT + 2) + COLORBAR_HEIGHT,
        LABEL_WIDTH + 128 * cell + PAD,
        3,
    )
    # Every cell of the first strip (layer1, sample 1) has A_ch's JET colour.
    a_ch = maps[0].channel[1].numpy()
    expected = cv2.applyColorMap(
        (np.clip(a_ch, 0, 1) * 255).astype(np.uint8)[None], cv2.COLORMAP_JET
    )
    y = PAD + SECTION_HEIGHT + STRIP_HEIGHT // 2
    got = channel[y, LABEL_WIDTH : LABEL_WIDTH + a_ch.size * cell : cell]
    np.testing.assert_array_equal(got, expected[0])
    # The first tile of the spatial image is the crop itself, scaled.
    top = PAD + CAPTION_HEIGHT
    scaled = cv2.resize(crop, (tile_w, tile_h), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(
        spatial[top : top + tile_h, LABEL_WIDTH : LABEL_WIDTH + tile_w], scaled[..., ::-1]
    )


def test_big_stages_get_a_row_per_branch():
    def blocks(stage: str, size: int, count: int) -> list[BlockAttention]:
        return [
            BlockAttention(
                f"{stage}.{size}.{i}",
                stage,
                "parallel",
                torch.zeros(1, size, size),
                torch.zeros(1, 8),
            )  # fmt: skip
            for i in range(count)
        ]

    # HRNet-W32's layout: layer1 4 blocks, stage2 4+4, stage3 16 x 3 branches.
    maps = blocks("layer1", 64, 4) + blocks("stage2", 64, 4) + blocks("stage2", 32, 4)
    maps += [b for size in (64, 32, 16) for b in blocks("stage3", size, 16)]
    rows = spatial_rows(maps)
    assert [(stage, len(b)) for stage, b in rows] == [
        ("layer1", 4), ("stage2", 8), ("stage3", 16), ("stage3", 16), ("stage3", 16),
    ]  # fmt: skip
    assert [b.size for b in rows[1][1]] == [(64, 64)] * 4 + [(32, 32)] * 4
    image = render_spatial(np.zeros((32, 24, 3), np.uint8), maps)
    assert image.shape == (
        6 * (CAPTION_HEIGHT + 32 + PAD) + PAD,
        LABEL_WIDTH + 16 * (24 + PAD) + PAD,
        3,
    )
    assert render_channel(maps).shape[0] == (
        PAD + 3 * SECTION_HEIGHT + len(maps) * (STRIP_HEIGHT + 2) + COLORBAR_HEIGHT
    )


def _tool(name: str):
    return importlib.import_module(f"psapose.commands.{name}")


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic_coco(root, images=2, val_images=3, seed=5, difficulty="easy")
    return root


def _run_dir(tmp_path: Path, root: Path, attention: str = "psa_parallel") -> Path:
    """A run folder as the trainer leaves it: config.yaml and checkpoints/latest.pth."""
    cfg = compose_config(
        ["experiment=quickstart", f"attention={attention}", f"data.root={root}",
         "data.val.use_gt_boxes=true", "device=cpu"]
    )  # fmt: skip
    model = build_model(cfg)
    with torch.no_grad():
        random_weights(model.eval(), torch.randn(2, 3, 128, 96))
    run = tmp_path / attention
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    torch.save({"model": model.state_dict()}, run / "checkpoints" / "latest.pth")
    return run


def test_tool_writes_pngs_for_val_crops_and_images_and_refuses_bad_input(
    tmp_path, synthetic_root, capsys
):
    tool = _tool("attention_maps")
    run = _run_dir(tmp_path, synthetic_root)
    scale = math.ceil(192 / 128)
    spatial_shape = (5 * (CAPTION_HEIGHT + 128 * scale + PAD) + PAD,
                     LABEL_WIDTH + 4 * (96 * scale + PAD) + PAD, 3)  # fmt: skip
    channel_shape = (PAD + 4 * SECTION_HEIGHT + BLOCKS * (STRIP_HEIGHT + 2) + COLORBAR_HEIGHT,
                     LABEL_WIDTH + 128 * (CHANNEL_WIDTH // 128) + PAD, 3)  # fmt: skip

    assert tool.main(["--run", str(run), "--count", "2", "--out", str(tmp_path / "val")]) == 0
    written = sorted(p.name for p in (tmp_path / "val").iterdir())
    # The two top-scoring val boxes: ground-truth boxes all score 1, so rows 0 and 1,
    # the two people of the first val image.
    assert written == [
        f"val_1000001_{row}_{kind}.png" for row in (0, 1) for kind in ("channel", "spatial")
    ]
    for name in written:
        image = cv2.imread(str(tmp_path / "val" / name))
        assert image.shape == (spatial_shape if name.endswith("_spatial.png") else channel_shape)

    image_file = synthetic_root / "images" / "val2017" / "000001000002.jpg"
    args = ["--run", str(run), str(image_file), "--box", "10", "20", "120", "200",
            "--out", str(tmp_path / "one")]  # fmt: skip
    assert tool.main(args) == 0
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == [
        "000001000002_channel.png",
        "000001000002_spatial.png",
    ]
    assert cv2.imread(str(tmp_path / "one" / "000001000002_spatial.png")).shape == spatial_shape
    capsys.readouterr()

    plain = _run_dir(tmp_path, synthetic_root, "none")
    for argv, message in [
        (["--run", str(plain)], "has no PSA blocks"),
        (["--run", str(tmp_path / "missing")], "not a folder"),
        (["--run", str(run), str(tmp_path / "nope.jpg")], "no such image"),
        (["--run", str(run), str(image_file), "--box", "0", "0", "-5", "10"], "width and height"),
    ]:
        assert tool.main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


class _Writer:
    def __init__(self) -> None:
        self.images: list[tuple[str, np.ndarray, int, str]] = []

    def add_image(self, tag, image, step, dataformats="CHW") -> None:
        self.images.append((tag, image, step, dataformats))


def test_log_attention_maps_for_tensorboard(tmp_path, synthetic_root):
    from psapose.data.builder import build_dataset
    from psapose.runtime import prepare_config

    cfg, _, codec = prepare_config(
        compose_config(
            ["experiment=quickstart", f"data.root={synthetic_root}", "data.val.use_gt_boxes=true"]
        )  # fmt: skip
    )
    dataset = build_dataset(cfg.data, "val", (128, 96), augment=False, udp=codec.use_udp)
    model, _ = _model()
    model.train()
    writer = _Writer()
    assert log_attention_maps(writer, model, dataset, step=7) == BLOCKS
    assert model.training  # put back as it was
    assert [(t, s, f) for t, _, s, f in writer.images] == [
        ("attention/spatial/0", 7, "HWC"), ("attention/channel/0", 7, "HWC"),
        ("attention/spatial/1", 7, "HWC"), ("attention/channel/1", 7, "HWC"),
    ]  # fmt: skip
    # Crops are scaled to at least 192 px high: 128 -> x2.
    spatial = writer.images[0][1]
    assert spatial.dtype == np.uint8 and spatial.shape == (
        5 * (CAPTION_HEIGHT + 256 + PAD) + PAD, LABEL_WIDTH + 4 * (192 + PAD) + PAD, 3
    )  # fmt: skip
    # The same crops and maps as an explicit batch of the dataset's two top crops.
    crops = np.stack([dataset[i]["image"].numpy() for i in range(2)])  # GT boxes: all score 1
    again = _Writer()
    log_attention_maps(again, model, torch.from_numpy(crops), step=7)
    for (_, a, _, _), (_, b, _, _) in zip(writer.images, again.images, strict=True):
        np.testing.assert_array_equal(a, b)

    plain, _ = _model("none")
    nothing = _Writer()
    assert log_attention_maps(nothing, plain, crops, step=1) == 0 and not nothing.images

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    real = SummaryWriter(str(tmp_path / "tb"))
    log_attention_maps(real, model, crops, step=3, max_images=1)
    real.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert sorted(events.Tags()["images"]) == ["attention/channel/0", "attention/spatial/0"]
    stored = events.Images("attention/spatial/0")[0]
    assert (stored.step, stored.height, stored.width) == (3, *spatial.shape[:2])
