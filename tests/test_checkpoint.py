"""Checkpoint loading: official formats, ImageNet backbones, URLs, and refusals."""

from __future__ import annotations

import collections
import hashlib
import logging

import pytest
import torch
from helpers import build, deterministic_weights, official_manifest

from psapose.checkpoint import (
    CheckpointError,
    group_keys,
    load_pose_checkpoint,
    load_pretrained_backbone,
    load_state_dict_file,
    resolve_checkpoint,
)


def random_state(manifest_name: str) -> dict[str, torch.Tensor]:
    shapes = {k: torch.empty(s) for k, s in official_manifest()[manifest_name]}
    return deterministic_weights(shapes)


@pytest.fixture(scope="module")
def w32_state() -> dict[str, torch.Tensor]:
    return random_state("pose_hrnet_w32")


def test_official_training_checkpoint_format_loads(tmp_path, w32_state) -> None:
    """The official train.py saves {'epoch', 'model': name, 'state_dict' (DataParallel, 'module.'), 'optimizer', ...}."""
    path = tmp_path / "checkpoint.pth"
    torch.save(
        {
            "epoch": 140,
            "model": "pose_hrnet",
            "state_dict": collections.OrderedDict((f"module.{k}", v) for k, v in w32_state.items()),
            "perf": 0.744,
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0, 1]}]},
        },
        path,
    )
    model = build("hrnet_w32")
    report = load_pose_checkpoint(model, path, strict=True)
    assert len(report.loaded) == len(w32_state) and not report.missing and not report.unexpected
    assert torch.equal(
        model.state_dict()["stage3.1.branches.2.3.conv2.weight"],
        w32_state["stage3.1.branches.2.3.conv2.weight"],
    )


def test_strict_load_names_what_differs(tmp_path, w32_state) -> None:
    path = tmp_path / "pose_hrnet_w32.pth"
    torch.save(w32_state, path)
    with pytest.raises(CheckpointError) as err:
        load_pose_checkpoint(build("hrnet_w32", "psa_parallel"), path, strict=True)
    text = str(err.value)
    assert str(path) in text and "does not match PoseHRNet" in text
    assert "1754 tensors match\n  540 attention-block tensors (deattn) are not in the file" in text
    # Non-strict: everything that exists loads, the attention keeps its initialisation.
    report = load_pose_checkpoint(build("hrnet_w32", "psa_parallel"), path, strict=False)
    assert len(report.loaded) == len(w32_state)
    assert report.missing and all(".deattn." in k for k in report.missing)


def test_shape_mismatch_is_an_error_even_when_not_strict(tmp_path) -> None:
    path = tmp_path / "w48.pth"
    torch.save(random_state("pose_hrnet_w48"), path)
    with pytest.raises(
        CheckpointError,
        match=r"with a different shape:\n.*file \[48, 256, 3, 3\] vs model \[32, 256, 3, 3\]",
    ):
        load_pose_checkpoint(build("hrnet_w32"), path, strict=False)


class NotATensor:
    def __init__(self) -> None:
        self.payload = "arbitrary code could run here"


def test_pickled_objects_are_refused(tmp_path) -> None:
    path = tmp_path / "pickled.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "extra": NotATensor()}, path)
    with pytest.raises(
        CheckpointError, match=r"refused to load: the file holds pickled Python objects"
    ):
        load_state_dict_file(path)


def test_corrupt_truncated_and_missing_files(tmp_path, w32_state) -> None:
    good = tmp_path / "good.pth"
    torch.save({k: w32_state[k] for k in list(w32_state)[:20]}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.pth: not a readable PyTorch checkpoint"):
        load_state_dict_file(truncated)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00\x01 not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pth"):
        load_state_dict_file(garbage)
    with pytest.raises(CheckpointError, match=r"missing\.pth does not exist"):
        load_state_dict_file(tmp_path / "missing.pth")
    not_tensors = tmp_path / "config.pth"
    torch.save({"lr": 0.1, "epochs": 3}, not_tensors)
    with pytest.raises(CheckpointError, match=r"entries \['lr', 'epochs'\] are not tensors"):
        load_state_dict_file(not_tensors)


def test_imagenet_hrnet_initialises_the_backbone(tmp_path, caplog) -> None:
    """An HRNet-Image-Classification checkpoint (hrnet_w32-36af842e.pth naming)."""
    state = random_state("imagenet_hrnet_w32")
    path = tmp_path / "hrnet_w32-36af842e.pth"
    torch.save(state, path)
    model = build("hrnet_w32", "psa_parallel")
    head_before = model.final_layer.weight.clone()
    with caplog.at_level(logging.INFO, logger="psapose.checkpoint"):
        report = load_pretrained_backbone(model, path)
    backbone_keys = [k for k in model.state_dict() if k.split(".")[0] in model.backbone_prefixes]
    assert sorted(report.loaded) == sorted(k for k in backbone_keys if ".deattn." not in k)
    assert report.missing and all(".deattn." in k for k in report.missing)
    # The classification model's stage 4 keeps four outputs; the pose model fuses only the first.
    assert report.unexpected and all(
        k.startswith("stage4.2.fuse_layers.") for k in report.unexpected
    )
    assert {k.split(".")[0] for k in report.ignored} == {
        "incre_modules",
        "downsamp_modules",
        "final_layer",
        "classifier",
    }
    assert torch.equal(
        model.final_layer.weight, head_before
    )  # the classifier's final_layer is not the pose head
    assert torch.equal(
        model.state_dict()["stage2.0.branches.1.2.conv1.weight"],
        state["stage2.0.branches.1.2.conv1.weight"],
    )
    assert (
        "attention-block tensors (deattn) are not in the file, which keep their initialisation"
        in caplog.text
    )
    assert (
        "78 in the file but not in the model:\n    stage4.2.fuse_layers.1.0 (6 tensors)"
        in caplog.text
    )
    assert "skipped (not part of the backbone)" in caplog.text


def test_torchvision_resnet_initialises_the_backbone(tmp_path) -> None:
    """torchvision's resnet50 keys: the pose backbone's, plus fc."""
    pose = random_state("pose_resnet_50")
    state = {k: v for k, v in pose.items() if not k.startswith(("deconv_layers", "final_layer"))}
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, 2048), torch.randn(1000)
    path = tmp_path / "resnet50-0676ba61.pth"
    torch.save(state, path)
    model = build("resnet50")
    report = load_pretrained_backbone(model, path)
    assert len(report.loaded) == len(state) - 2 and not report.missing and not report.unexpected
    assert report.ignored == ["fc.weight", "fc.bias"]


def test_backbone_of_another_architecture_is_rejected(tmp_path) -> None:
    path = tmp_path / "resnet.pth"
    torch.save({"fc.weight": torch.zeros(10, 10)}, path)
    with pytest.raises(CheckpointError, match="no backbone tensor matches PoseHRNet"):
        load_pretrained_backbone(build("quickstart"), path)
    path48 = tmp_path / "hrnet_w48.pth"
    torch.save(random_state("imagenet_hrnet_w48"), path48)
    with pytest.raises(CheckpointError, match="backbone tensors do not fit PoseHRNet"):
        load_pretrained_backbone(build("hrnet_w32"), path48)


def test_file_url_downloads_into_cache_with_hash_check(tmp_path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    state = {"w": torch.arange(6.0)}
    plain = source / "weights.pth"
    torch.save(state, plain)
    digest = hashlib.sha256(plain.read_bytes()).hexdigest()
    named = source / f"weights-{digest[:8]}.pth"
    named.write_bytes(plain.read_bytes())
    cache = tmp_path / "cache"
    local = resolve_checkpoint(named.as_uri(), cache_dir=cache)
    assert local == cache / named.name and local.read_bytes() == plain.read_bytes()
    assert torch.equal(torch.load(local, weights_only=True)["w"], state["w"])
    # A name whose hash does not match the content is refused and not cached.
    wrong = source / "weights-deadbeef.pth"
    wrong.write_bytes(plain.read_bytes())
    with pytest.raises(CheckpointError, match="could not download"):
        resolve_checkpoint(wrong.as_uri(), cache_dir=cache)
    assert not (cache / wrong.name).exists()


def test_url_through_the_loader_uses_the_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PSAPOSE_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "w.pth"
    torch.save({"module.a": torch.ones(2)}, path)
    assert list(load_state_dict_file(path.as_uri())) == ["a"]
    assert (tmp_path / "cache" / "w.pth").is_file()


def test_group_keys_uses_the_deepest_level_that_fits() -> None:
    blocks = [f"stage2.0.branches.{b}.{i}" for b in range(2) for i in range(4)]
    keys = [f"{blk}.deattn.conv_up.weight" for blk in blocks] + ["final_layer.bias"]
    assert group_keys(keys, max_groups=12) == ["final_layer (1 tensor)"] + [
        f"{blk}.deattn.conv_up (1 tensor)" for blk in blocks
    ]
    assert group_keys(keys, max_groups=3) == [
        "final_layer (1 tensor)",
        "stage2.0.branches.0 (4 tensors)",
        "stage2.0.branches.1 (4 tensors)",
    ]
    assert group_keys(keys, max_groups=1) == ["final_layer (1 tensor)", "... and 1 more modules"]
