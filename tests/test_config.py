"""Hydra configs: composition, validation messages, and the quick-start script."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

from psapose.config import (
    CONFIG_DIR,
    ConfigError,
    build_model,
    compose_config,
    input_size,
    validate_config,
)
from psapose.models import AttentionSpec, PoseHRNet, PoseResNet

ROOT = Path(__file__).resolve().parents[1]


def test_default_config_builds_the_quickstart_psa_model() -> None:
    cfg = compose_config()
    model = build_model(cfg)
    assert isinstance(model, PoseHRNet) and model.width == 16
    assert model.attention == AttentionSpec("psa", "parallel", "official")
    assert input_size(cfg) == (256, 192)


def test_groups_and_keys_switch_from_the_command_line() -> None:
    cfg = compose_config(["model=resnet101", "attention=psa_sequential", "attention.variant=paper",
                          "model.attention_blocks=basic", "input_size=[384,288]", "num_keypoints=14"])  # fmt: skip
    model = build_model(cfg)
    assert isinstance(model, PoseResNet) and model.depth == 101 and model.num_keypoints == 14
    assert (
        model.attention == AttentionSpec("psa", "sequential", "paper")
        and model.attention_blocks == "basic"
    )
    assert input_size(cfg) == (384, 288)
    assert OmegaConf.to_container(cfg.model.attention, resolve=True)["layout"] == "sequential"


def test_unknown_model_key_names_the_key_and_the_allowed_ones() -> None:
    with pytest.raises(
        ConfigError,
        match=r"unknown key\(s\) model\.widht for psapose\.models\.PoseHRNet; allowed: width, ",
    ):
        build_model(compose_config(["+model.widht=3"]))


def test_bad_attention_value_names_the_key() -> None:
    with pytest.raises(
        ConfigError,
        match=r"attention\.kind must be one of \['none', 'psa', 'se', 'gc'\], got 'nonlocal'",
    ):
        build_model(compose_config(["attention.kind=nonlocal"]))
    with pytest.raises(ConfigError, match=r"attention_blocks must be one of \['all', 'basic'\]"):
        build_model(compose_config(["model.attention_blocks=bottleneck"]))


def test_unknown_group_option_lists_the_available_ones() -> None:
    with pytest.raises(MissingConfigException, match="Could not find 'attention/nonlocal'"):
        compose_config(["attention=nonlocal"])


@pytest.mark.parametrize("size", ["[250,192]", "[256]", "[256,-192]"])
def test_input_size_must_be_multiples_of_32(size: str) -> None:
    with pytest.raises(ConfigError, match="input_size"):
        input_size(compose_config([f"input_size={size}"]))


def _quickstart(tmp_path, *overrides: str) -> str:
    out = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "quickstart.py"), f"hydra.run.dir={tmp_path / 'run'}",
         f"data.root={tmp_path / 'data'}", *overrides],
        check=True, capture_output=True, text=True, cwd=ROOT, timeout=900,
    )  # fmt: skip
    return out.stdout + out.stderr


def test_quickstart_generates_data_trains_evaluates_and_draws(tmp_path) -> None:
    """The main command, shortened: 12 synthetic images, one epoch."""
    log = _quickstart(
        tmp_path, "data.generate=true", "data.synthetic.images=12", "data.synthetic.val_images=4",
        "schedule.epochs=1", "schedule.batch_size=4",
    )  # fmt: skip
    assert "synthetic dataset written to" in log
    assert (tmp_path / "data/annotations/person_keypoints_train2017.json").is_file()
    assert "943,473 parameters" in log  # the quick-start HRNet + PSA (one block per branch)
    table = log[log.index("synthetic val AP") :].splitlines()
    assert table[1].split() == [
        "AP",
        "AP50",
        "AP75",
        "APM",
        "APL",
        "AR",
        "AR50",
        "AR75",
        "ARM",
        "ARL",
    ]
    assert all(0.0 <= float(v) <= 1.0 or float(v) == -1.0 for v in table[2].split())
    run = tmp_path / "run"
    for path in (
        "predictions.png",
        "config.yaml",
        "checkpoints/latest.pth",
        "checkpoints/best.pth",
    ):
        assert (run / path).is_file(), path
    assert any((run / "tb").iterdir())


@pytest.mark.slow
def test_quickstart_reaches_half_ap_on_the_synthetic_val_split(tmp_path) -> None:
    """The full main command (4 minutes on 2 cores): AP >= 0.5 with detector boxes (0.539 here)."""
    log = _quickstart(tmp_path)
    table = log[log.index("synthetic val AP") :].splitlines()
    assert float(table[2].split()[0]) >= 0.5, table


EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_preset_composes_validates_and_builds(name):
    from psapose.runtime import prepare_config

    cfg, spec, codec = prepare_config(compose_config([f"experiment={name}"]))
    assert cfg.name == (name if name == "quickstart" else cfg.name) and spec.num_keypoints == 17
    assert codec.input_size == tuple(cfg.input_size)
    with torch.device("meta"):
        model = build_model(cfg)
    out = model(torch.empty(1, 3, *cfg.input_size, device="meta"))
    assert out.shape[1] == 17 * codec.channels_per_keypoint


def test_paper_rows_pick_their_switches():
    cfg = validate_config(compose_config(["experiment=udp_psa_w48_384x288"]))
    full = compose_config(["experiment=udp_psa_w48_384x288"])
    assert list(cfg.input_size) == [384, 288] and full.model.width == 48
    assert full.codec._target_.endswith("UDPHeatmap") and full.attention.layout == "parallel"
    assert cfg.data.augment.rotation_factor == 40.0 and cfg.schedule.milestones == [170, 200]
    full = compose_config(["experiment=simplebaseline_r152_psa_s_256x192"])
    assert full.model.depth == 152 and full.attention.layout == "sequential"
    assert full.codec._target_.endswith("MSRAHeatmap")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+schedule.lrr=1", "unknown key schedule.lrr; allowed here: epochs"),
        ("schedule.epochs=many", "schedule.epochs: Value 'many'"),
        ("precision=fp8", "precision='fp8'; allowed: fp32, bf16, fp16"),
        ("eval.nms=greedy", "eval.nms='greedy'; allowed: oks, soft, none"),
        ("schedule.milestones=[200,170]", "schedule.milestones must increase"),
        ("input_size=[250,192]", "multiples of 32"),
        ("+data.augment.flipp=0.5", "unknown key data.augment.flipp"),
    ],
)
def test_bad_values_stop_with_the_key_named(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config(compose_config([override]))
