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


def _coco_layout_set(root: Path) -> None:
    """Three images per split laid out like COCO itself (person_keypoints_*2017.json)."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    (root / "annotations").mkdir(parents=True)
    for split in ("train2017", "val2017"):
        (root / "images" / split).mkdir(parents=True)
        images, anns = [], []
        for i in range(3):
            cv2.imwrite(
                str(root / f"images/{split}/{i}.jpg"), rng.integers(0, 255, (60, 80, 3), np.uint8)
            )
            images.append({"id": i, "file_name": f"{i}.jpg", "width": 80, "height": 60})
            kps = np.c_[rng.uniform(10, 70, 5), rng.uniform(10, 50, 5), np.full(5, 2)]
            anns.append({"id": i + 1, "image_id": i, "category_id": 1, "iscrowd": 0, "area": 900.0,
                         "bbox": [5, 5, 60, 45], "keypoints": kps.ravel().tolist(),
                         "num_keypoints": 5})  # fmt: skip
        cats = [{"id": 1, "name": "mouse", "keypoints": list("abcde"), "skeleton": []}]
        (root / f"annotations/person_keypoints_{split}.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats})
        )
    (root / "keypoints.yaml").write_text("name: mouse\nkeypoints: [a, b, c, d, e]\n")


def test_custom_data_finds_a_coco_layout_and_keeps_paths_the_user_set(tmp_path, caplog):
    from psapose.data.builder import build_dataset, split_path
    from psapose.data.coco import AnnotationFileNotFound

    _coco_layout_set(tmp_path)
    cfg = compose_config(["data=custom", f"data.root={tmp_path}"])
    with caplog.at_level("INFO"):
        train = build_dataset(cfg.data, "train", (64, 48))
        val = build_dataset(cfg.data, "val", (64, 48))
    assert len(train) == 3 and len(val) == 3
    assert (
        split_path(cfg.data, "val", "ann_file")
        == tmp_path / "annotations/person_keypoints_val2017.json"
    )
    assert split_path(cfg.data, "val", "image_dir") == tmp_path / "images/val2017"
    assert "using the coco layout" in caplog.text
    # The converter's layout wins where both are present (it is the first one).
    (tmp_path / "annotations/train.json").write_text(
        (tmp_path / "annotations/person_keypoints_val2017.json").read_text()
    )
    assert split_path(cfg.data, "train", "ann_file") == tmp_path / "annotations/train.json"
    assert split_path(cfg.data, "train", "image_dir") == tmp_path / "images"
    # A path the user set is not swapped for a guess: it is reported missing, with what was tried.
    mine = compose_config(
        ["data=custom", f"data.root={tmp_path}", "data.val.ann_file=labels/val.json"]
    )
    with pytest.raises(AnnotationFileNotFound, match=r"labels/val\.json: file not found"):
        build_dataset(mine.data, "val", (64, 48))
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = compose_config(
        ["data=custom", f"data.root={empty}", f"data.keypoints={tmp_path / 'keypoints.yaml'}"]
    )
    with pytest.raises(
        AnnotationFileNotFound,
        match=r"person_keypoints_train2017\.json.*train\.json|train\.json.*person_keypoints_train2017\.json",
    ):
        build_dataset(nothing.data, "train", (64, 48))
