"""The command-line tools end to end on the shared real fixtures."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch

from psapose.config import build_model, compose_config
from tests.helpers import SHARED_DATA

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = SHARED_DATA / "coco_fixture"
TESTDEV = SHARED_DATA / "coco_testdev_fixture"


def _checkpoint(tmp_path: Path) -> Path:
    model = build_model(compose_config(["experiment=quickstart"]))
    path = tmp_path / "weights.pth"
    torch.save(model.state_dict(), path)
    return path


def _run(*args: str) -> subprocess.CompletedProcess:
    # Hydra's own run folder (its log, .hydra/) goes to a temporary folder, not runs/ in the repo.
    hydra_dir = f"hydra.run.dir={tempfile.mkdtemp(prefix='psapose-hydra-')}"
    proc = subprocess.run(
        [sys.executable, *args, hydra_dir], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.skipif(not FIXTURE.is_dir(), reason=f"shared COCO fixture not found at {FIXTURE}")
def test_test_py_on_real_images_with_detector_boxes(tmp_path):
    from pycocotools.coco import COCO

    out = tmp_path / "out"
    proc = _run(
        "tools/test.py", "experiment=quickstart", "data=coco", f"data.root={FIXTURE}",
        "data.val.ann_file=test_coco.json", "data.val.image_dir=.",
        "data.val.det_file=test_coco_det_AP_H_56.json", f"checkpoint={_checkpoint(tmp_path)}",
        f"output_dir={out}", "workers=0", "device=cpu",
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    assert "118 person instances in 4 images" in log and "AP table" in log
    stats = json.loads((out / "stats.json").read_text())
    assert set(stats) == {"AP", "AP50", "AP75", "APM", "APL", "AR", "AR50", "AR75", "ARM", "ARL"}
    results = json.loads((out / "person_keypoints_val_quickstart_results.json").read_text())
    assert 0 < len(results) <= 118 and all(len(r["keypoints"]) == 51 for r in results)
    gt = COCO(str(FIXTURE / "test_coco.json"))
    assert len(gt.loadRes(str(out / "person_keypoints_val_quickstart_results.json")).anns) == len(
        results
    )


@pytest.mark.skipif(not TESTDEV.is_dir(), reason=f"shared test-dev fixture not found at {TESTDEV}")
def test_test_py_writes_a_test_dev_results_file_and_zip(tmp_path):
    info_file = TESTDEV / "image_info_test-dev2017.TRUNCATED_10imgs.json"
    info = json.loads(info_file.read_text())
    present = [i for i in info["images"] if (TESTDEV / "test2017" / i["file_name"]).is_file()]
    dets = [
        {
            "image_id": i["id"],
            "category_id": 1,
            "score": 0.9,
            "bbox": [0, 0, i["width"], i["height"]],
        }
        for i in present
    ]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    out = tmp_path / "out"
    _run(
        "tools/test.py", "experiment=quickstart", "data=coco", f"data.root={TESTDEV}",
        f"data.test_dev.ann_file={info_file.name}", "data.test_dev.image_dir=test2017",
        f"data.test_dev.det_file={tmp_path / 'dets.json'}", "eval.split=test-dev",
        f"checkpoint={_checkpoint(tmp_path)}", f"output_dir={out}", "workers=0", "device=cpu",
    )  # fmt: skip
    name = "person_keypoints_test-dev2017_quickstart_results"
    results = json.loads((out / f"{name}.json").read_text())
    ids = {i["id"] for i in info["images"]}
    assert len(results) == len(present)
    for r in results:
        assert r["image_id"] in ids and r["category_id"] == 1 and len(r["keypoints"]) == 51
        assert isinstance(r["score"], float)
    with zipfile.ZipFile(out / f"{name}.zip") as z:
        assert z.namelist() == [f"{name}.json"]
    assert not (out / "stats.json").exists()  # test-dev has no ground truth to score


def test_train_py_stops_on_a_bad_config_key_with_its_name(tmp_path):
    proc = subprocess.run(
        [sys.executable, "tools/train.py", "+schedule.lrr=1", f"output_dir={tmp_path}",
         f"hydra.run.dir={tmp_path / 'hydra'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "unknown key schedule.lrr; allowed here: epochs, batch_size" in proc.stdout + proc.stderr
