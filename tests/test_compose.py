"""Every switch composes with every preset (issue 16): each experiment with each value of each
config group validates, the preset's own group settings living in its group members; and
``dry_run=true`` checks a whole start-up in seconds on every preset."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from psapose.config import CONFIG_DIR, ConfigError, compose_config, validate_config
from psapose.engine.dry_run import dry_run
from tests.helpers import SHARED_DATA

ROOT = Path(__file__).resolve().parents[1]
GROUPS = ("model", "attention", "codec", "data", "schedule")
OPTIONS = {g: sorted(p.stem for p in (CONFIG_DIR / g).glob("*.yaml")) for g in GROUPS}
EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
COCO_MINI = SHARED_DATA / "coco_mini"


def _with_data_root(overrides: list[str], value: str) -> list[str]:
    # data=custom names no root of its own (it is required): give one.
    return [*overrides, "data.root=/any/where"] if value == "custom" else overrides


@pytest.mark.parametrize("experiment", [None, *EXPERIMENTS])
def test_every_group_value_composes_and_validates_with_every_preset(experiment):
    failures = []
    preset = [f"experiment={experiment}"] if experiment else []
    for group in GROUPS:
        for value in OPTIONS[group]:
            overrides = [*preset, f"{group}={value}"]
            if group == "data":
                overrides = _with_data_root(overrides, value)
            try:
                cfg = compose_config(overrides)
                validate_config(cfg)
                assert cfg[group] is not None
            except ConfigError as err:
                failures.append(f"{' '.join(overrides)}: {err}")
    assert not failures, "\n".join(failures)


def test_a_switch_replaces_the_presets_group_member_whole():
    switched = compose_config(["experiment=quickstart", "model=resnet50", "codec=udp_combined"])
    assert "num_blocks" not in switched.model and "sigma" not in switched.codec
    quick = compose_config(["experiment=quickstart"])
    assert quick.model.num_blocks == 1 and quick.codec.sigma == 1.5  # the preset, unchanged


@pytest.mark.skipif(not COCO_MINI.is_dir(), reason=f"shared COCO subset not found at {COCO_MINI}")
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_dry_run_checks_every_preset_without_training(experiment, tmp_path):
    overrides = [f"experiment={experiment}", "device=cpu"]
    if experiment != "quickstart":
        overrides += [f"data.root={COCO_MINI}"]
    facts = dry_run(compose_config(overrides), "train")
    assert facts["parameters"] > 0 and facts["gflops"] > 0
    assert "nothing was run" in facts["summary"]
    if experiment != "quickstart":
        assert facts["train_instances"] == 86  # the shared subset's labelled people
        assert facts["steps_per_epoch"] == 86 // 32
    assert not list(tmp_path.iterdir()), "a dry run writes nothing"


@pytest.mark.skipif(not COCO_MINI.is_dir(), reason=f"shared COCO subset not found at {COCO_MINI}")
def test_dry_run_through_the_tools_exits_0_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "tools/train.py", "experiment=hrnet_w48_psa_s_256x192",
         f"data.root={COCO_MINI}", "dry_run=true", "device=cpu", f"output_dir={out}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    assert "69,0" in text or "parameters" in text
    assert not (out / "checkpoints").exists() and not (out / "tb").exists()
