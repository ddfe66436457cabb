"""Faults from the field (issue 13), injected for real: untrusted stored configs, a scheduler's
SIGTERM to the whole process group, broken validation files, tampered and junk checkpoints,
decoder failures, a full disk, and the one error contract of every tool.

Each test is named after the fault; docs/reliability.md lists them with what happens and the
exit code. Training runs are the tiny ones of tests/test_reliability.py (quick-start HRNet at
64x64 on the shared COCO subset, one thread).
"""

from __future__ import annotations

import copy
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from psapose.api import PoseEstimator
from psapose.checkpoint import CheckpointError, load_state_dict_file
from psapose.config import ConfigError, build_model, compose_config, load_stored_config
from psapose.data.coco import AnnotationError
from psapose.data.transforms import ImageReadError, read_image
from psapose.engine.checkpoints import OutputWriteError, atomic_save, read_training_checkpoint
from psapose.evaluation.coco_eval import load_results
from tests.test_reliability import (  # noqa: F401 (fixtures used by name)
    BATCHES_PER_EPOCH,
    COCO_MINI,
    ROOT,
    TRAIN_ANN,
    TRAIN_IMAGES,
    _assert_same_weights,
    _one_thread,
    _overrides,
    _trainer,
    _weights,
    reference,
)

pytestmark = pytest.mark.skipif(
    not COCO_MINI.is_dir(), reason=f"shared COCO subset not found at {COCO_MINI}"
)
VAL_ANN = COCO_MINI / "annotations/person_keypoints_val2017.json"
VAL_IMAGES = COCO_MINI / "images/val2017"
VAL_DETS = COCO_MINI / "annotations/coco_mini_val2017_gtbox_as_dets.json"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _tool(*args: str, timeout: int = 300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
        timeout=timeout, **kwargs,
    )  # fmt: skip


def _assert_contract(proc: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    """Exit ``code``, no traceback, and an error line holding every needle."""
    output = proc.stdout + proc.stderr
    assert proc.returncode == code, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    line = next((ln for ln in output.splitlines() if "error:" in ln), "")
    for needle in needles:
        assert needle in line, f"{needle!r} not in the error line {line!r}"
    return output


def _quickstart_state_dict(path: Path) -> dict:
    model = build_model(compose_config(["experiment=quickstart"]))
    state = model.state_dict()
    torch.save(state, path)
    return state


# ----------------------------------------------------------------------------- 1. stored configs


def _malicious_configs(marker: Path) -> dict[str, dict]:
    """Stored configs that the old prefix test let through, each writing ``marker`` if built."""
    good = OmegaConf.to_container(compose_config(["experiment=quickstart"]), resolve=True)
    write = {  # Path(marker).write_text("pwned"), reached through an attribute of a module
        "_target_": "psapose.data.coco.Path.write_text",
        "_args_": [{"_target_": "psapose.data.coco.Path", "_args_": [str(marker)]}, "pwned"],
    }
    cases = {}
    walk_out = copy.deepcopy(good)
    walk_out["model"] = {**write}
    cases["attribute walk-out as the model"] = walk_out
    in_list = copy.deepcopy(good)
    in_list["model"]["attention"]["extra"] = [write]
    cases["nested inside a list"] = in_list
    in_mapping = copy.deepcopy(good)
    in_mapping["data"]["hook"] = {"inner": write}
    cases["nested inside a plain mapping"] = in_mapping
    attention_as_model = copy.deepcopy(good)
    attention_as_model["model"]["attention"]["_target_"] = "psapose.models.PoseHRNet"
    cases["an allowed class in the wrong place"] = attention_as_model
    interpolation = copy.deepcopy(good)
    interpolation["name"] = "${oc.env:HOME}"
    cases["an interpolation"] = interpolation
    return cases


def test_stored_configs_build_only_allowed_classes_checked_on_the_resolved_object(tmp_path):
    marker = tmp_path / "pwned"
    state = _quickstart_state_dict(tmp_path / "weights.pth")
    for name, config in _malicious_configs(marker).items():
        checkpoint = tmp_path / f"{name.replace(' ', '_')}.pth"
        torch.save(
            {"model": state, "config": config}, checkpoint
        )  # tensors only: weights_only loads it
        with pytest.raises(ConfigError, match="is not allowed|interpolation"):
            PoseEstimator.from_checkpoint(checkpoint)
        run = tmp_path / f"run_{name.replace(' ', '_')}"
        (run / "checkpoints").mkdir(parents=True)
        shutil.copy(checkpoint, run / "checkpoints/best.pth")
        (run / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
        with pytest.raises(ConfigError, match="is not allowed|interpolation"):
            PoseEstimator.from_run(run)
        assert not marker.exists(), name
    # The same file with its own config untouched loads and runs.
    good = OmegaConf.to_container(compose_config(["experiment=quickstart"]), resolve=True)
    torch.save({"model": state, "config": good}, tmp_path / "good.pth")
    estimator = PoseEstimator.from_checkpoint(tmp_path / "good.pth", device="cpu")
    poses = estimator(np.zeros((96, 64, 3), np.uint8))
    assert poses.keypoints.shape == (1, 17, 2)
    assert isinstance(load_stored_config(good), type(compose_config(["experiment=quickstart"])))


def test_demo_and_export_refuse_a_stored_config_that_runs_code(tmp_path):
    marker = tmp_path / "pwned"
    state = _quickstart_state_dict(tmp_path / "weights.pth")
    config = _malicious_configs(marker)["attribute walk-out as the model"]
    checkpoint = tmp_path / "evil.pth"
    torch.save({"model": state, "config": config}, checkpoint)
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), np.zeros((64, 48, 3), np.uint8))
    demo = _tool("tools/demo.py", str(image), "--checkpoint", str(checkpoint), "--out",
                 str(tmp_path / "out"), "--device", "cpu")  # fmt: skip
    _assert_contract(demo, 2, "demo: error:", "model._target_", "is not allowed")
    export = _tool("tools/export_onnx.py", "--checkpoint", str(checkpoint), "--no-check",
                   "--output", str(tmp_path / "x.onnx"))  # fmt: skip
    _assert_contract(export, 2, "export_onnx: error:", "is not allowed")
    assert not marker.exists()


# ----------------------------------------------------------------------------- 2. pre-emption


# Runs the real tools/train.py in this process group's leader, with one change: at global
# step 3 the step itself sends SIGTERM to the whole process group (as Slurm, `timeout` and
# Kubernetes do), then the launcher's forwarded copy to the main process, then keeps
# computing for a moment, so that dying workers would be reported in the middle of a step.
_PREEMPT_AT_STEP = (
    "import os, runpy, signal, sys, time\n"
    "from psapose.engine import trainer\n"
    "step = trainer.Trainer.train_step\n"
    "def preempted(self, batch):\n"
    "    if self.step == 3:\n"
    "        os.killpg(0, signal.SIGTERM)\n"
    "        os.kill(os.getpid(), signal.SIGTERM)\n"
    "        time.sleep(0.5)\n"
    "    return step(self, batch)\n"
    "trainer.Trainer.train_step = preempted\n"
    "sys.argv = ['tools/train.py'] + sys.argv[1:]\n"
    "runpy.run_path('tools/train.py', run_name='__main__')\n"
)


def test_process_group_sigterm_with_workers_writes_a_checkpoint_and_resumes_bit_identical(
    reference,  # noqa: F811 (the fixture)
    tmp_path,
):
    """Pre-emption as schedulers do it, with 2 DataLoader workers, then resume=auto."""
    ref_dir, ref_result = reference
    proc = _tool("-c", _PREEMPT_AT_STEP, *_overrides(tmp_path, workers="2"),
                 f"hydra.run.dir={tmp_path / 'hydra'}", start_new_session=True)  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert "Traceback" not in output and "killed by signal" not in output, output[-3000:]
    state = read_training_checkpoint(tmp_path / "checkpoints/latest.pth")
    assert (state["epoch"], state["batch_in_epoch"], state["step"]) == (0, 4, 4), output[-2000:]

    resumed = _tool("tools/train.py", *_overrides(tmp_path, workers="2"),
                    f"hydra.run.dir={tmp_path / 'hydra2'}", "resume=auto")  # fmt: skip
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    _assert_same_weights(
        _weights(tmp_path / "checkpoints/latest.pth"), _weights(ref_dir / "checkpoints/latest.pth")
    )
    final = torch.load(tmp_path / "checkpoints/latest.pth", weights_only=True)
    assert [r["loss"] for r in final["history"]] == [r["loss"] for r in ref_result["history"]]


# ----------------------------------------------------------------------------- 3. input at start


def _broken_val_ground_truth(tmp_path: Path) -> Path:
    data = json.loads(VAL_ANN.read_text())
    person = next(a for a in data["annotations"] if a.get("num_keypoints", 0) > 0)
    person["keypoints"] = person["keypoints"][:-3]  # 16 keypoints: COCOeval used to crash on it
    path = tmp_path / "val_broken.json"
    path.write_text(json.dumps(data))
    return path


def test_a_broken_val_ground_truth_stops_at_start_in_every_box_mode(tmp_path):
    broken = _broken_val_ground_truth(tmp_path)
    for gt_boxes in ("false", "true"):
        overrides = {
            "data.val.ann_file": str(broken),
            "data.val.image_dir": str(VAL_IMAGES),
            "data.val.det_file": str(VAL_DETS),
            "data.val.use_gt_boxes": gt_boxes,
        }
        with pytest.raises(AnnotationError, match=r"val_broken\.json: annotations\[\d+\].*'keypoints': expected 51 numbers, got 48"):  # fmt: skip
            _trainer(tmp_path / gt_boxes, **overrides)
    proc = _tool("tools/train.py", *_overrides(tmp_path / "cli", **{
        "data.val.ann_file": str(broken), "data.val.image_dir": str(VAL_IMAGES),
        "data.val.det_file": str(VAL_DETS)}), f"hydra.run.dir={tmp_path / 'hydra'}")  # fmt: skip
    _assert_contract(proc, 2, "val_broken.json", "'keypoints'")
    assert not (tmp_path / "cli/checkpoints").exists(), "nothing trained"


def test_keypoint_yaml_against_the_files_and_an_empty_set_are_named_at_start(tmp_path):
    spec = tmp_path / "four.yaml"
    spec.write_text("keypoints: [a, b, c, d]\nsigmas: [0.1, 0.1, 0.1, 0.1]\n")
    with pytest.raises(AnnotationError, match=r"category 1 \('person'\) lists 17 keypoints .* spec has 4"):  # fmt: skip
        _trainer(tmp_path / "spec", **{"data.keypoints": str(spec)})
    data = json.loads(TRAIN_ANN.read_text())
    data["annotations"] = [a for a in data["annotations"] if a.get("num_keypoints", 0) == 0]
    empty = tmp_path / "no_people.json"
    empty.write_text(json.dumps(data))
    proc = _tool("tools/train.py", *_overrides(tmp_path / "run", **{"data.train.ann_file": str(empty)}),
                 f"hydra.run.dir={tmp_path / 'hydra'}")  # fmt: skip
    _assert_contract(proc, 2, "no_people.json", "no usable instance of category 1", "no keypoints")


def test_the_epoch_is_checkpointed_before_evaluation_and_a_resume_evaluates_it(
    tmp_path, monkeypatch
):
    import psapose.engine.trainer as trainer_module

    val = {"data.val.ann_file": str(VAL_ANN), "data.val.image_dir": str(VAL_IMAGES),
           "data.val.use_gt_boxes": "true", "schedule.epochs": "1", "eval.batch_size": "32"}  # fmt: skip
    real = trainer_module.evaluate_predictions

    def failing(*args, **kwargs):
        raise RuntimeError("evaluation crashed (injected)")

    monkeypatch.setattr(trainer_module, "evaluate_predictions", failing)
    with pytest.raises(RuntimeError, match="injected"):
        _trainer(tmp_path, **val).fit()
    state = read_training_checkpoint(tmp_path / "checkpoints/latest.pth")
    assert state["epoch"] == 1 and state["pending_eval"] is True, "the training was kept"
    assert "AP" not in state["history"][0]

    monkeypatch.setattr(trainer_module, "evaluate_predictions", real)
    resumed = _trainer(tmp_path, "resume=auto", **val)
    result = resumed.fit()
    assert result["history"][0]["AP"] == result["stats"]["AP"] >= 0
    final = read_training_checkpoint(tmp_path / "checkpoints/latest.pth")
    assert final["pending_eval"] is False and final["history"][0]["AP"] == result["stats"]["AP"]
    _assert_same_weights(state["model"], final["model"])  # evaluated, not retrained


# ----------------------------------------------------------------------------- 4. integrity


def _flip_inside_a_tensor_record(path: Path, target: Path) -> None:
    """Change bytes in the middle of the largest tensor record, leaving the zip well formed
    (torch.load does not check the records' CRCs)."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = max(
            (i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size
        )
    name_len, extra_len = (int.from_bytes(data[info.header_offset + k : info.header_offset + k + 2], "little") for k in (26, 28))  # fmt: skip
    start = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    data[start : start + 4] = bytes(b ^ 0x5A for b in data[start : start + 4])
    target.write_bytes(bytes(data))


def test_a_tampered_tensor_record_fails_its_checksum_and_resume_falls_back(
    reference,  # noqa: F811 (the fixture)
    tmp_path,
):
    ref_dir, _ = reference
    run = tmp_path / "run"
    shutil.copytree(ref_dir / "checkpoints", run / "checkpoints")
    latest = run / "checkpoints/latest.pth"
    _flip_inside_a_tensor_record(ref_dir / "checkpoints/latest.pth", latest)
    raw = torch.load(latest, map_location="cpu", weights_only=True)  # loads without a word...
    assert "checksum" in raw
    with pytest.raises(CheckpointError, match=r"latest\.pth: checksum mismatch"):
        read_training_checkpoint(latest)  # ...but not through psapose
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_state_dict_file(latest)
    resumed = _trainer(run, "resume=auto")
    assert (resumed.epoch, resumed.batch_in_epoch) == (1, 0), "fell back to previous.pth"
    assert (run / "checkpoints/latest.pth.corrupt").is_file()


def _fuzz_files(seed: int, original: bytes) -> list[bytes]:
    """Junk, a foreign zip, truncations and random byte changes of ``original``."""
    rng = random.Random(seed)
    files = [b"", b"PK\x03\x04", bytes(rng.randrange(256) for _ in range(300))]
    files += [original[: rng.randrange(1, len(original))] for _ in range(40)]  # truncations
    for _ in range(80):  # random byte changes anywhere: headers, pickle, tensors, directory
        data = bytearray(original)
        for _ in range(rng.randrange(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        files.append(bytes(data))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:  # a zip that is not a checkpoint
        archive.writestr("archive/data.pkl", bytes(rng.randrange(256) for _ in range(64)))
        archive.writestr("archive/version", b"3\n")
    files.append(buffer.getvalue())
    return files


# Well-formed files that are not training checkpoints: each must be refused by name.
_NOT_TRAINING_CHECKPOINTS = [
    [1, 2],
    7,
    {"model": [1]},
    {"model": {"w": torch.ones(2)}, "optimizer": 3},
    {"model": {"w": torch.ones(2)}, "optimizer": {"state": {}, "param_groups": []},
     "scaler": {}, "epoch": -1, "step": 0, "rng": {}},
    {"model": {"w": torch.tensor([float("nan")])}, "optimizer": {"state": {}, "param_groups": []},
     "scaler": {}, "epoch": 0, "step": 0, "rng": {}},
]  # fmt: skip


def test_fuzzed_checkpoint_files_are_checkpoint_errors_never_crashes(tmp_path):
    model = build_model(compose_config(["experiment=quickstart", "model.num_blocks=1"]))
    optimizer = torch.optim.Adam(model.parameters())
    path = tmp_path / "good.pth"
    from psapose.engine.checkpoints import get_rng_state

    atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scaler": {}, "epoch": 1, "step": 4, "rng": get_rng_state()}, path)  # fmt: skip
    original = path.read_bytes()
    reference_state = read_training_checkpoint(path)
    outcomes = {"refused": 0, "identical": 0}
    for i, data in enumerate(_fuzz_files(13, original)):
        bad = tmp_path / f"fuzz{i}.pth"
        bad.write_bytes(data)
        for loader in (read_training_checkpoint, load_state_dict_file):
            try:
                state = loader(bad)
            except CheckpointError as err:
                assert str(bad) in str(err)
                outcomes["refused"] += 1
                continue
            # A change the file format ignores (zip comment, padding): contents unchanged.
            model_state = state["model"] if loader is read_training_checkpoint else state
            for key, value in reference_state["model"].items():
                assert torch.equal(model_state[key], value), (i, key)
            outcomes["identical"] += 1
    assert outcomes["refused"] > 200, outcomes
    for i, odd in enumerate(_NOT_TRAINING_CHECKPOINTS):
        path = tmp_path / f"odd{i}.pth"
        torch.save(odd, path)
        with pytest.raises(CheckpointError, match=re.escape(str(path))):
            read_training_checkpoint(path)


# ----------------------------------------------------------------------------- 5. decoders


def _png_declaring(tmp_path: Path, width: int, height: int) -> Path:
    ok, data = cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))
    raw = bytearray(data.tobytes())
    raw[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")  # IHDR's size
    raw[29:33] = zlib.crc32(bytes(raw[12:29])).to_bytes(4, "big")  # and a valid CRC
    path = tmp_path / f"huge_{width}x{height}.png"
    path.write_bytes(bytes(raw))
    return path


def test_any_decoder_failure_is_an_unreadable_image(tmp_path, monkeypatch):
    import psapose.data.transforms as transforms

    bomb = _png_declaring(tmp_path, 60_000, 60_000)
    with pytest.raises(ImageReadError, match=r"60000 x 60000 pixels, over the limit"):
        read_image(bomb)
    # Past psapose's own limit, OpenCV refuses the header with its own exception.
    monkeypatch.setattr(transforms, "MAX_IMAGE_PIXELS", 2**62)
    with pytest.raises(ImageReadError, match=r"huge_60000x60000\.png: the decoder failed"):
        read_image(bomb)

    def explode(*args):
        raise MemoryError("cannot allocate")

    monkeypatch.setattr(transforms.cv2, "imdecode", explode)
    good = sorted(TRAIN_IMAGES.iterdir())[0]
    with pytest.raises(ImageReadError, match="the decoder failed: cannot allocate"):
        read_image(good)


def test_training_skips_an_image_the_decoder_rejects(tmp_path):
    images = tmp_path / "images"
    shutil.copytree(TRAIN_IMAGES, images)
    data = json.loads(TRAIN_ANN.read_text())
    victim = data["annotations"][0]["image_id"]
    name = next(i["file_name"] for i in data["images"] if i["id"] == victim)
    (images / name).write_bytes(_png_declaring(tmp_path, 60_000, 60_000).read_bytes())
    trainer = _trainer(tmp_path / "run", **{"data.train.image_dir": str(images),
                       "data.max_bad_fraction": "0.2", "schedule.epochs": "1"})  # fmt: skip
    result = trainer.fit()
    assert result["skipped_samples"] >= 1 and np.isfinite(result["history"][0]["loss"])
    assert any(
        name in reason and "over the limit" in reason for reason in result["bad_samples"].values()
    )


def test_demo_skips_unreadable_images_and_writes_results_for_the_others(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in sorted(p.name for p in VAL_IMAGES.iterdir())[:3]:
        shutil.copy(VAL_IMAGES / name, folder / name)
    (folder / "000000000001.png").write_bytes(_png_declaring(tmp_path, 60_000, 60_000).read_bytes())
    (folder / "000000000002.jpg").write_bytes(b"\xff\xd8 not really a jpeg \xff\xd9")
    _quickstart_state_dict(tmp_path / "w.pth")
    proc = _tool("tools/demo.py", str(folder), "--checkpoint", str(tmp_path / "w.pth"),
                 "--overrides", "experiment=quickstart", "--out", str(tmp_path / "out"),
                 "--device", "cpu", "--no-flip")  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Traceback" not in output, output[-3000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert summary["images"] == 3 and len(summary["unreadable"]) == 2
    assert len(list((tmp_path / "out").glob("*_poses.png"))) == 3
    results = json.loads((tmp_path / "out/results.json").read_text())
    assert {r["image_id"] for r in results} <= {int(p.stem) for p in VAL_IMAGES.iterdir()}


# ----------------------------------------------------------------------------- 6. tool contract


def test_every_tool_turns_anticipated_errors_into_one_line_and_exit_2(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x80\x02}q\x00(X\x05\x00\x00\x00modelq")
    test_py = _tool("tools/test.py", "experiment=quickstart", "data=coco", f"data.root={COCO_MINI}",
                    "data.val.use_gt_boxes=true", f"checkpoint={junk}", "device=cpu",
                    f"hydra.run.dir={tmp_path / 'h1'}")  # fmt: skip
    _assert_contract(test_py, 2, "test: error:", "junk.pth", "not a readable PyTorch checkpoint")
    demo = _tool("tools/demo.py", str(tmp_path / "missing_folder"), "--checkpoint", str(junk))
    _assert_contract(demo, 2, "demo: error:", "missing_folder: not found")
    export = _tool("tools/export_onnx.py", "--checkpoint", str(junk), "--overrides",
                   "experiment=quickstart", "--no-check")  # fmt: skip
    _assert_contract(export, 2, "export_onnx: error:", "junk.pth")
    results = tmp_path / "nan.json"
    results.write_text(json.dumps([{"image_id": 1, "category_id": 1, "keypoints": [0.0] * 51,
                                    "score": float("nan")}]))  # fmt: skip
    evaluation = _tool("tools/eval_results.py", str(VAL_ANN), str(results))
    _assert_contract(
        evaluation, 2, "eval_results: error:", "nan.json[0]: field 'score' is not finite"
    )


def test_a_full_disk_keeps_the_previous_checkpoint_and_exits_4(tmp_path):
    """torch.save fails with ENOSPC from the second checkpoint on, inside the real tool."""
    script = (
        "import errno, runpy, sys, torch\n"
        "real, calls = torch.save, []\n"
        "def save(obj, f, *a, **k):\n"
        "    calls.append(1)\n"
        "    if len(calls) > 1:\n"
        "        f.write(b'PK partial')\n"
        "        raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "    return real(obj, f, *a, **k)\n"
        "torch.save = save\n"
        "sys.argv = ['tools/train.py'] + sys.argv[1:]\n"
        "runpy.run_path('tools/train.py', run_name='__main__')\n"
    )
    proc = _tool("-c", script, *_overrides(tmp_path), f"hydra.run.dir={tmp_path / 'hydra'}")
    output = _assert_contract(proc, 4, "train: error:", "latest.pth", "no space left on device")
    assert "is kept as it was" in output
    state = read_training_checkpoint(tmp_path / "checkpoints/latest.pth")
    assert state["epoch"] == 1, "epoch 1's checkpoint survives"
    assert not list((tmp_path / "checkpoints").glob(".*tmp*")), "no temporary file left"


def test_quickstart_sigterm_writes_a_checkpoint_and_exits_143(tmp_path):
    args = [sys.executable, "tools/quickstart.py", f"hydra.run.dir={tmp_path / 'run'}",
            f"data.root={tmp_path / 'data'}", "data.generate=true", "data.synthetic.images=24",
            "data.synthetic.val_images=4", "schedule.batch_size=4", "schedule.epochs=3",
            "log_interval=1", "workers=1"]  # fmt: skip
    proc = subprocess.Popen(args, cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if re.search(r"epoch 1/3 2/\d+", line):
            os.killpg(proc.pid, signal.SIGTERM)
            break
    rest, _ = proc.communicate(timeout=180)
    output = "".join(lines) + rest
    assert proc.returncode == 143 and "Traceback" not in output, output[-3000:]
    assert "resume=auto" in output
    state = read_training_checkpoint(tmp_path / "run/checkpoints/latest.pth")
    assert state["epoch"] == 0 and state["batch_in_epoch"] >= 2


# ----------------------------------------------------------------------------- 7. silent acceptance


def test_results_with_nan_or_non_numeric_values_are_named_by_index():
    base = {"image_id": 1, "category_id": 1, "keypoints": [1.0, 2.0, 0.5] * 17, "score": 0.9}
    for field, value, message in [
        ("score", float("nan"), r"results\[2\]: field 'score' is not finite"),
        ("score", float("inf"), r"results\[2\]: field 'score' is not finite"),
        ("score", "0.9", r"results\[2\]: field 'score' holds a value that is not a number"),
        ("keypoints", [1.0, "x", 0.5] * 17, r"results\[2\]: field 'keypoints' holds a value"),
        ("keypoints", [1.0, float("nan"), 0.5] * 17, r"results\[2\]: field 'keypoints' is not finite"),
    ]:  # fmt: skip
        data = [dict(base) for _ in range(3)]
        data[2] = {**base, field: value}
        with pytest.raises(ValueError, match=message):
            load_results(data)
    assert len(load_results([dict(base) for _ in range(3)])) == 3


def test_a_mistyped_synthetic_root_stops_naming_the_path_and_writes_nothing(tmp_path):
    wrong = tmp_path / "data/synthtic"
    proc = _tool("tools/train.py", "experiment=quickstart", f"data.root={wrong}",
                 f"hydra.run.dir={tmp_path / 'hydra'}", "device=cpu")  # fmt: skip
    _assert_contract(proc, 2, "train: error:", f"data.root={wrong}", "data.generate=true")
    assert not wrong.exists()
    with pytest.raises(OutputWriteError, match="cannot write"):
        # A directory where the checkpoint file should go: the write fails, named.
        target = tmp_path / "blocked.pth"
        target.mkdir()
        atomic_save({"x": torch.ones(1)}, target)


def test_a_loader_failure_ends_the_batches_only_after_a_stop_was_requested():
    from psapose.engine.faults import batches_until_stopped
    from psapose.engine.inference import EvaluationStopped, _stoppable

    def loader():
        yield 1
        yield 2
        raise RuntimeError("DataLoader worker (pid 7) is killed by signal: Terminated")

    with pytest.raises(RuntimeError, match="killed by signal"):  # no stop: a real failure
        list(batches_until_stopped(loader(), lambda: False, lambda err: None))
    seen: list[Exception] = []
    assert list(batches_until_stopped(loader(), lambda: True, seen.append)) == [1, 2]
    assert len(seen) == 1 and "killed by signal" in str(seen[0])
    # Evaluation turns it into a stop, not a crash; without a stop check it stays a crash.
    with pytest.raises(EvaluationStopped, match="killed by signal"):
        list(_stoppable(loader(), lambda: True))
    with pytest.raises(RuntimeError):
        list(_stoppable(loader(), None))
