"""Your own animals, end to end (issue 15): a DeepLabCut project and a lightning-pose project,
written by the test, are converted, trained for a few steps with nothing but
``data=custom data.root=OUT``, and evaluated with ``tools/test.py run=RUN_DIR``, which prints
EPE and PCK beside AP. Also: missing custom keys, a batch larger than the set, the log in the
run folder, and ``run=`` keeping the trained input size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from psapose.config import ConfigError, compose_config, validate_config
from psapose.data.convert import main as convert
from tests.test_convert import make_dlc_project, make_lp_project

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TINY = ["input_size=[64,64]", "model=quickstart", "model.num_blocks=1", "schedule.epochs=2",
        "schedule.batch_size=16", "schedule.warmup_iters=2", "schedule.milestones=[1]",
        "workers=0", "device=cpu", "eval.images=1", "log_interval=1"]  # fmt: skip


def _tool(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc


@pytest.mark.parametrize("kind", ["dlc", "lightning-pose"])
def test_a_project_converts_trains_and_evaluates_from_its_run_folder(tmp_path, kind, capsys):
    project = (make_dlc_project if kind == "dlc" else make_lp_project)(tmp_path / "src")
    data = tmp_path / "data"
    assert convert([kind, str(project), str(data), "--val-fraction", "0.5", "--seed", "1"]) == 0
    run = tmp_path / "run"
    train = _tool("tools/train.py", "data=custom", f"data.root={data}", *TINY, f"output_dir={run}")
    log = train.stdout + train.stderr
    # A batch larger than the set is clamped (with a warning), and the start-up line says so.
    assert "is larger than the training set allows" in log
    assert "steps per epoch at batch" in log and "best.pth by EPE" in log
    assert (run / "train.log").is_file() and (run / "checkpoints/best.pth").is_file()
    assert not (ROOT / "runs" / run.name).exists()

    test = _tool("tools/test.py", f"run={run}", f"output_dir={tmp_path / 'eval'}")
    out = test.stdout + test.stderr
    assert "pixel errors" in out and "EPE" in out and "PCK@0.05" in out and "AP table" in out
    pixel = json.loads((tmp_path / "eval/pixel_metrics.json").read_text())
    assert pixel["stats"]["EPE"] >= 0 and 0 <= pixel["stats"]["PCK@0.2"] <= 1
    assert sum(pixel["counts"].values()) > 0
    # The run's own settings were used: the trained input size, not the default 256x192.
    assert "input 64x64" in out and "input_size differs" not in out
    assert (tmp_path / "eval/test.log").is_file(), "the log beside the results"
    # best.pth is the epoch with the lowest EPE (data=custom picks by pixel error).
    latest = torch.load(run / "checkpoints/latest.pth", map_location="cpu", weights_only=True)
    best = torch.load(run / "checkpoints/best.pth", map_location="cpu", weights_only=True)
    epes = [h["EPE"] for h in latest["history"]]
    assert latest["best_metric"] == "EPE" and best["best_score"] == min(epes)
    assert best["epoch"] == 1 + epes.index(min(epes))


def test_run_overrides_on_top_and_a_warning_when_the_model_changes(tmp_path):
    project = make_dlc_project(tmp_path / "src")
    data = tmp_path / "data"
    assert convert(["dlc", str(project), str(data), "--val-fraction", "0.5"]) == 0
    run = tmp_path / "run"
    _tool("tools/train.py", "data=custom", f"data.root={data}", *TINY,
          "schedule.epochs=1", f"output_dir={run}")  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "tools/test.py", f"run={run}", "input_size=[96,64]",
         f"output_dir={tmp_path / 'eval'}"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert "input_size differs from the run it was trained with ([64, 64] -> [96, 64])" in out
    # The model (fully convolutional) still loads; the codec followed the new input size.
    assert proc.returncode == 0, out[-3000:]
    assert "EPE" in out


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data=custom"], "data.root is required with this data config"),
        (["data=custom", "data.root=/x", "data.keypoints=null"], "data.keypoints is required"),
        (["experiment=quickstart", "eval.metric=EPE"], "needs ground-truth boxes"),
    ],
)
def test_custom_data_names_its_missing_keys(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(compose_config(overrides))
