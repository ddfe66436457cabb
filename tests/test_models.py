"""Backbones with attention: build, run, placement, naming, parity with the official HRNet code."""

from __future__ import annotations

import pytest
import torch
from helpers import ASSETS, build, deterministic_input, deterministic_weights, official_manifest

from psapose.checkpoint import load_pose_checkpoint
from psapose.models import BasicBlock, Bottleneck, PolarizedSelfAttention, PoseHRNet, PoseResNet

MODELS = ["quickstart", "hrnet_w32", "hrnet_w48", "resnet50", "resnet101", "resnet152"]
ATTENTION = [
    ("none", None),
    ("psa_parallel", "official"),
    ("psa_parallel", "paper"),
    ("psa_sequential", "official"),
    ("psa_sequential", "paper"),
    ("se", None),
    ("gc", None),
]
PSA_KEYS = {
    ("parallel", "official"): ["conv_q_right.weight", "conv_v_right.weight", "conv_up.weight",
                               "conv_q_left.weight", "conv_v_left.weight"],
    ("sequential", "official"): ["conv_q_right.weight", "conv_v_right.weight", "conv_up.0.weight", "conv_up.0.bias",
                                 "conv_up.1.weight", "conv_up.1.bias", "conv_up.3.weight", "conv_up.3.bias",
                                 "conv_q_left.weight", "conv_v_left.weight"],
}  # fmt: skip


@pytest.mark.parametrize(("attention", "variant"), ATTENTION, ids=lambda v: str(v))
@pytest.mark.parametrize("model_name", MODELS)
def test_forward_backward_finite(model_name: str, attention: str, variant: str | None) -> None:
    torch.manual_seed(0)
    model = build(model_name, attention, variant)
    model.train()
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert out.shape == (2, 17, 16, 16)
    assert torch.isfinite(out).all()
    (out.square().mean() * 1e3).backward()
    named_grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in named_grads.values())
    attention_grads = [g for n, g in named_grads.items() if ".deattn." in n]
    assert (len(attention_grads) > 0) == (attention != "none")
    assert any(g.abs().sum() > 0 for g in attention_grads) or attention == "none"
    assert named_grads["final_layer.weight"].abs().sum() > 0


@pytest.mark.parametrize("channels_per_keypoint", [1, 3])
def test_head_width_per_codec(channels_per_keypoint: int) -> None:
    for model in (PoseHRNet(16, num_keypoints=5, channels_per_keypoint=channels_per_keypoint, num_modules=(1, 1, 1),
                            num_blocks=1, stem_blocks=1),
                  PoseResNet(18, num_keypoints=5, channels_per_keypoint=channels_per_keypoint)):  # fmt: skip
        assert model(torch.zeros(1, 3, 64, 32)).shape == (1, 5 * channels_per_keypoint, 16, 8)


def attention_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Each residual block that carries an attention block, by its name."""
    return {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, (BasicBlock, Bottleneck)) and m.deattn is not None
    }


@pytest.mark.parametrize(
    ("model_name", "placement", "basic", "bottleneck"),
    [
        ("hrnet_w32", "all", 104, 4),
        ("hrnet_w32", "basic", 104, 0),
        ("hrnet_w48", "all", 104, 4),
        ("resnet50", "all", 0, 16),
        ("resnet50", "basic", 0, 0),
        ("resnet101", "all", 0, 33),
        ("resnet152", "all", 0, 50),
    ],
)
def test_number_and_placement_of_attention_blocks(
    model_name: str, placement: str, basic: int, bottleneck: int
) -> None:
    model = build(model_name, "psa_parallel", placement=placement)
    blocks = attention_modules(model)
    assert sum(isinstance(b, BasicBlock) for b in blocks.values()) == basic
    assert sum(isinstance(b, Bottleneck) for b in blocks.values()) == bottleneck
    assert all(isinstance(b.deattn, PolarizedSelfAttention) for b in blocks.values())
    # Each block's attention width is the width of its first 3x3 convolution.
    for block in blocks.values():
        conv = block.conv1 if isinstance(block, BasicBlock) else block.conv2
        assert block.deattn.channels == conv.out_channels
    if model_name == "hrnet_w32" and placement == "all":
        assert (
            "layer1.0" in blocks
            and "stage2.0.branches.0.0" in blocks
            and "stage4.2.branches.3.3" in blocks
        )


@pytest.mark.parametrize("block_type", [BasicBlock, Bottleneck])
def test_attention_sees_the_first_3x3_conv_after_bn_relu(block_type: type) -> None:
    """deattn's input is relu(bn(first 3x3 conv)); its output feeds the next convolution."""
    from psapose.models import AttentionSpec

    torch.manual_seed(0)
    block = block_type(
        64, 16 if block_type is Bottleneck else 64, attention=AttentionSpec("psa", "parallel")
    )
    block.eval()
    for bn in (block.bn1, block.bn2):
        bn.running_mean.normal_()
    seen = {}
    block.deattn.register_forward_hook(lambda m, i, o: seen.update(inp=i[0].clone(), out=o.clone()))
    nxt = block.conv2 if block_type is BasicBlock else block.conv3
    nxt.register_forward_hook(lambda m, i, o: seen.update(next_in=i[0].clone()))
    x = torch.randn(2, 64, 8, 8)
    block(x)
    if block_type is BasicBlock:
        expected = torch.relu(block.bn1(block.conv1(x)))
    else:
        expected = torch.relu(block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x))))))
    torch.testing.assert_close(seen["inp"], expected)
    torch.testing.assert_close(seen["next_in"], seen["out"])


@pytest.mark.parametrize(
    ("model_name", "official_name"),
    [
        ("hrnet_w32", "pose_hrnet_w32"),
        ("hrnet_w48", "pose_hrnet_w48"),
        ("resnet50", "pose_resnet_50"),
        ("resnet101", "pose_resnet_101"),
        ("resnet152", "pose_resnet_152"),
    ],
)
def test_state_dict_names_and_shapes_equal_official(model_name: str, official_name: str) -> None:
    """Keys and shapes recorded from the official HRNet pose code's models."""
    ours = {k: list(v.shape) for k, v in build(model_name).state_dict().items()}
    assert ours == dict(official_manifest()[official_name])
    with_psa = build(model_name, "psa_sequential").state_dict()
    extra = sorted(set(with_psa) - set(ours))
    assert set(ours) <= set(with_psa)
    blocks = sorted({k.split(".deattn.")[0] for k in extra})
    assert extra == sorted(
        f"{b}.deattn.{k}" for b in blocks for k in PSA_KEYS[("sequential", "official")]
    )


def test_hrnet_keys_follow_official_naming() -> None:
    keys = build("hrnet_w32", "psa_parallel").state_dict()
    for key in ("conv1.weight", "layer1.0.deattn.conv_up.weight", "transition1.0.0.weight", "transition1.1.0.0.weight",
                "stage2.0.branches.0.0.conv1.weight", "stage2.0.branches.0.0.deattn.conv_q_right.weight",
                "stage2.0.fuse_layers.0.1.0.weight", "stage4.2.fuse_layers.0.3.0.weight",
                "stage4.0.fuse_layers.3.0.2.0.weight", "final_layer.weight"):  # fmt: skip
        assert key in keys, key
    assert not any(
        k.startswith("stage4.2.fuse_layers.1") for k in keys
    )  # last module fuses one output


@pytest.mark.parametrize(
    ("model_name", "official_name"),
    [("hrnet_w32", "pose_hrnet_w32"), ("resnet50", "pose_resnet_50")],
)
def test_loaded_checkpoint_reproduces_official_outputs(
    tmp_path, model_name: str, official_name: str
) -> None:
    """Outputs of the official HRNet pose code for the same (deterministic) weights and input."""
    reference = torch.load(ASSETS / "official_pose_outputs.pt", weights_only=True)[official_name]
    model = build(model_name)
    path = tmp_path / f"{official_name}.pth"
    torch.save(deterministic_weights(model.state_dict()), path)
    fresh = build(model_name)
    load_pose_checkpoint(fresh, path, strict=True)
    fresh.eval()
    with torch.no_grad():
        out = fresh(deterministic_input((1, 3, 128, 96)))
    scale = reference.abs().max()
    assert (out - reference).abs().max() <= 1e-5 * scale
    assert scale > 0


@pytest.mark.parametrize(
    ("model_name", "attention"), [("quickstart", "psa_parallel"), ("resnet50", "psa_sequential")]
)
def test_save_and_reload_gives_identical_outputs(tmp_path, model_name: str, attention: str) -> None:
    torch.manual_seed(1)
    model = build(model_name, attention)
    model.load_state_dict(deterministic_weights(model.state_dict()))
    model.eval()
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    other = build(model_name, attention)
    load_pose_checkpoint(other, path)
    other.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), other(x))


def test_global_context_blocks_start_as_the_identity() -> None:
    model = build("quickstart", "gc")
    blocks = [m.deattn for m in attention_modules(model).values()]
    assert len(blocks) == 19
    assert all(b.channel_add_conv[-1].weight.abs().sum() == 0 for b in blocks)
    x = torch.randn(2, blocks[0].conv_mask.in_channels, 8, 6)
    torch.testing.assert_close(blocks[0](x), x)


def test_parallel_psa_starts_near_identity() -> None:
    """Under the official N(0, 0.001) initialisation both PSA masks start near 0.5."""
    torch.manual_seed(0)
    block = build("quickstart", "psa_parallel").stage2[0].branches[0][0].deattn
    x = torch.rand(2, block.channels, 16, 12)
    torch.testing.assert_close(block(x), x, rtol=0, atol=1e-2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"attention_blocks": "bottleneck"}, "attention_blocks must be one of"),
        ({"num_modules": (1, 4)}, "num_modules needs one count per stage"),
        ({"final_conv_kernel": 5}, "final_conv_kernel must be 1 or 3"),
        ({"init": "xavier"}, "init must be"),
    ],
)
def test_hrnet_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PoseHRNet(
            16,
            num_modules=kwargs.pop("num_modules", (1, 1, 1)),
            num_blocks=1,
            stem_blocks=1,
            **kwargs,
        )


def test_resnet_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="depth must be one of"):
        PoseResNet(depth=42)
    with pytest.raises(ValueError, match="deconv_kernels must be 2, 3 or 4"):
        PoseResNet(depth=18, deconv_channels=(64,), deconv_kernels=(5,))


@pytest.mark.parametrize("attention", ["psa_parallel", "psa_sequential", "gc"])
def test_channels_last_gives_the_same_outputs(attention: str) -> None:
    model = build("quickstart", attention)
    model.load_state_dict(deterministic_weights(model.state_dict()))
    model.eval()
    x = deterministic_input((2, 3, 64, 96))
    with torch.no_grad():
        reference = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
    assert (out - reference).abs().max() <= 1e-5 * reference.abs().max()
