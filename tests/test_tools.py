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


# ----------------------------------------------------------------------------- the psapose command
def _psapose(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """``psapose ARGS`` as ``python -m psapose`` (the same ``main`` as the installed script)."""
    return subprocess.run(
        [sys.executable, "-m", "psapose", *args], cwd=cwd, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def _tool(script: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, f"tools/{script}", *args], cwd=cwd, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def test_psapose_help_lists_every_sub_command_and_imports_no_tool():
    from psapose.commands import COMMANDS

    proc = _psapose("--help")
    assert proc.returncode == 0, proc.stderr
    listed = [line.split()[0] for line in proc.stdout.splitlines() if line.startswith("  ")]
    assert listed == list(COMMANDS)
    for name in ("train", "test", "demo", "export", "convert", "benchmark", "ablate"):
        assert name in listed
    # Every tools/*.py is one sub-command's wrapper.
    scripts = {c.script for c in COMMANDS.values() if c.script}
    assert scripts == {p.name for p in (ROOT / "tools").glob("*.py")}
    # The installed script (`make venv`, pip install -e .) prints the same.
    installed = Path(sys.executable).with_name("psapose")
    if installed.is_file():
        same = subprocess.run([str(installed), "--help"], capture_output=True, text=True)
        assert same.returncode == 0 and same.stdout == proc.stdout
    # The dispatcher imports a sub-command's module only to run it: `psapose --help` stays
    # instant and a module's environment settings come before torch starts.
    probe = "import sys, psapose.commands; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"  # fmt: skip
    bad = _psapose("trian")
    assert bad.returncode == 2 and bad.stderr.startswith("psapose: error: unknown command 'trian'")
    assert _psapose().returncode == 2


@pytest.mark.parametrize(
    ("command", "script", "args"),
    [
        ("flops", "flops.py", ["--help"]),
        ("benchmark", "benchmark.py", ["eval", "--help"]),
        ("train", "train.py", ["--help"]),
        ("eval-results", "eval_results.py", ["missing_gt.json", "missing_results.json"]),
        ("train", "train.py", ["+schedule.lrr=1"]),
    ],
)
def test_a_sub_command_equals_its_tools_wrapper(command, script, args):
    """Help, output, the one-line error and the exit code are the tool's own."""
    via_psapose, via_tool = _psapose(command, *args), _tool(script, *args)
    assert via_psapose.returncode == via_tool.returncode
    assert via_psapose.stdout == via_tool.stdout and via_psapose.stderr == via_tool.stderr
    assert via_tool.stdout or via_tool.stderr


def test_a_dry_run_through_psapose_equals_the_tools_wrapper(tmp_path):
    """The Hydra sub-commands find configs/ from the package; the run folder follows the cwd."""
    runs = {}
    for name, run in (("psapose", _psapose), ("tool", _tool)):
        out = tmp_path / name
        args = ("experiment=quickstart", "dry_run=true", "device=cpu", f"output_dir={out}")
        proc = run("train", *args) if name == "psapose" else run("train.py", *args)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        # Hydra's log lines begin with their time: compare what follows.
        text = (proc.stdout + proc.stderr).replace(str(out), "OUT")
        runs[name] = [line.split("]", 2)[-1] for line in text.splitlines()]
        assert (out / "train.log").is_file() and (out / ".hydra" / "config.yaml").is_file()
        assert not (out / "checkpoints").exists()
    assert runs["psapose"] == runs["tool"] and any(
        "nothing was run" in line for line in runs["tool"]
    )


def test_no_tool_touches_sys_path_and_every_tool_is_a_thin_wrapper():
    for path in [*(ROOT / "tools").iterdir(), *(ROOT / "psapose").rglob("*.py")]:
        if path.is_file():
            assert "sys.path" not in path.read_text(), path
    for path in (ROOT / "tools").glob("*.py"):
        assert len(path.read_text().splitlines()) <= 12, f"{path}: a wrapper of psapose/commands"
