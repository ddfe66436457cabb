"""Faults a long run meets, injected for real (issue 7; docs/reliability.md).

Bad images, broken annotation files and configs, SIGTERM/SIGINT mid-epoch with
an exact resume, corrupt and unsafe checkpoints, non-finite losses, determinism.
Training runs are tiny (quick-start HRNet at 64x64 on the shared COCO subset, one
thread) so that the whole file takes well under a minute.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from psapose.checkpoint import CheckpointError, UnsafeCheckpointError, load_state_dict_file
from psapose.config import ConfigError, compose_config, validate_config
from psapose.data.coco import AnnotationError, TopDownDataset, load_coco_annotations
from psapose.data.keypoint_spec import KeypointSpecError, load_keypoint_spec
from psapose.data.transforms import ImageReadError, read_image
from psapose.engine.checkpoints import atomic_save
from psapose.engine.faults import DataError, NonFiniteLossError, TrainingInterrupted
from psapose.engine.inference import predict
from psapose.engine.sampler import EpochSampler
from psapose.engine.trainer import Trainer
from psapose.runtime import prepare_config
from tests.helpers import SHARED_DATA

ROOT = Path(__file__).resolve().parents[1]
COCO_MINI = SHARED_DATA / "coco_mini"
TRAIN_ANN = COCO_MINI / "annotations/person_keypoints_train2017.json"
TRAIN_IMAGES = COCO_MINI / "images/train2017"
BATCHES_PER_EPOCH = 10  # 86 instances, batch 8

pytestmark = pytest.mark.skipif(
    not COCO_MINI.is_dir(), reason=f"shared COCO subset not found at {COCO_MINI}"
)


def _overrides(out: Path, image_dir: Path = TRAIN_IMAGES, **extra: str) -> list[str]:
    base = {
        "experiment": "quickstart",
        "data": "coco",
        "data.root": str(COCO_MINI),
        "data.train.ann_file": str(TRAIN_ANN),
        "data.train.image_dir": str(image_dir),
        "data.val.ann_file": "missing.json",  # no evaluation: these tests are about training
        "input_size": "[64,64]",
        "schedule.batch_size": "8",
        "schedule.epochs": "2",
        "schedule.warmup_iters": "3",
        "schedule.milestones": "[1]",
        "eval.images": "0",
        "workers": "0",
        "log_interval": "1",
        "device": "cpu",
        "seed": "3",
        "deterministic": "true",
        "output_dir": str(out),
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Bit-identical weights across processes need the same reduction order: one
    # thread here and OMP_NUM_THREADS=1 in the subprocesses.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(False)


def _trainer(out: Path, *overrides: str, **extra: str) -> Trainer:
    return Trainer(compose_config([*_overrides(out, **extra), *overrides]), out)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict]:
    """An uninterrupted two-epoch run: its directory and fit() result."""
    out = tmp_path_factory.mktemp("reference")
    result = _trainer(out).fit()
    return out, result


# ----------------------------------------------------------------------------- determinism


def test_two_seeded_deterministic_runs_give_identical_losses_and_weights(reference, tmp_path):
    ref_dir, ref_result = reference
    again = _trainer(tmp_path).fit()
    assert [r["loss"] for r in again["history"]] == [r["loss"] for r in ref_result["history"]]
    assert all(np.isfinite(r["loss"]) for r in again["history"])
    _assert_same_weights(
        _weights(tmp_path / "checkpoints/latest.pth"), _weights(ref_dir / "checkpoints/latest.pth")
    )
    other_seed = _trainer(tmp_path / "seed4", seed="4", **{"schedule.epochs": "1"}).fit()
    assert other_seed["history"][0]["loss"] != ref_result["history"][0]["loss"]


# ----------------------------------------------------------------------------- signals


def _train_py(out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "tools/train.py", *_overrides(out), f"hydra.run.dir={out / 'hydra'}", *extra],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def test_external_sigterm_mid_epoch_then_resume_auto_ends_with_identical_weights(
    reference, tmp_path
):
    """A real tools/train.py process, SIGTERMed from outside while in epoch 1, then resumed."""
    ref_dir, ref_result = reference
    proc = _train_py(tmp_path)
    log_lines = []
    progress = re.compile(rf"epoch 1/2 2/{BATCHES_PER_EPOCH}\b")
    for line in proc.stdout:  # the trainer logs every step (log_interval=1)
        log_lines.append(line)
        if progress.search(line):
            proc.send_signal(signal.SIGTERM)
            break
    rest, _ = proc.communicate(timeout=120)
    output = "".join(log_lines) + rest
    assert proc.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert "SIGTERM received: stopped at epoch 1/2" in output and "resume=auto" in output
    state = torch.load(tmp_path / "checkpoints/latest.pth", weights_only=True)
    assert state["epoch"] == 0 and 2 <= state["batch_in_epoch"] < BATCHES_PER_EPOCH, output
    assert state["step"] == state["batch_in_epoch"]

    resumed = _train_py(tmp_path, "resume=auto")
    output, _ = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, output[-3000:]
    assert f"batch {state['batch_in_epoch']} (step {state['step']})" in output
    _assert_same_weights(
        _weights(tmp_path / "checkpoints/latest.pth"), _weights(ref_dir / "checkpoints/latest.pth")
    )
    final = torch.load(tmp_path / "checkpoints/latest.pth", weights_only=True)
    assert [r["loss"] for r in final["history"]] == [r["loss"] for r in ref_result["history"]]


def test_sigint_at_a_chosen_step_checkpoints_restores_handlers_and_resumes_exactly(
    reference, tmp_path
):
    """The process signals itself inside epoch 2, batch 3: a fixed, reproducible position."""
    ref_dir, _ = reference
    trainer = _trainer(tmp_path)
    train_step = trainer.train_step
    stop_at = BATCHES_PER_EPOCH + 3

    def signal_then_step(batch):
        if trainer.step == stop_at - 1:
            os.kill(os.getpid(), signal.SIGINT)  # delivered for real, like Ctrl-C
        return train_step(batch)

    trainer.train_step = signal_then_step
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted, match="stopped by SIGINT at epoch 2, batch 3") as info:
        trainer.fit()
    assert info.value.exit_code == 130
    assert signal.getsignal(signal.SIGINT) is before, "fit() put its handler back"
    state = torch.load(info.value.checkpoint, weights_only=True)
    assert (state["epoch"], state["batch_in_epoch"], state["step"]) == (1, 3, stop_at)
    previous = torch.load(tmp_path / "checkpoints/previous.pth", weights_only=True)
    assert (previous["epoch"], previous["batch_in_epoch"]) == (1, 0), "epoch 1's checkpoint kept"

    resumed = _trainer(tmp_path, "resume=auto")
    assert (resumed.epoch, resumed.batch_in_epoch) == (1, 3)
    loaded = []
    resumed_step = resumed.train_step
    resumed.train_step = lambda batch: loaded.append(batch["index"]) or resumed_step(batch)
    resumed.fit()
    assert len(loaded) == BATCHES_PER_EPOCH - 3, "only the remaining batches are loaded"
    _assert_same_weights(
        _weights(tmp_path / "checkpoints/latest.pth"), _weights(ref_dir / "checkpoints/latest.pth")
    )


def test_sampler_start_batch_skips_exactly_the_trained_batches():
    full = EpochSampler(50, batch_size=4, shuffle=True, seed=1, rank=1, world_size=2)
    full.set_epoch(3)
    tail = EpochSampler(50, batch_size=4, shuffle=True, seed=1, rank=1, world_size=2)
    tail.set_epoch(3, start_batch=2)
    assert list(tail) == list(full)[2 * 4 :] and len(tail) == len(full) - 8
    tail.set_epoch(4)
    assert len(tail) == len(full), "the offset applies to one epoch only"
    with pytest.raises(ValueError, match="start_batch 7 is outside"):
        tail.set_epoch(4, start_batch=7)


# ----------------------------------------------------------------------------- checkpoints


def test_truncated_latest_falls_back_to_previous_and_all_corrupt_stops(reference, tmp_path, caplog):
    ref_dir, _ = reference
    run = tmp_path / "run"
    shutil.copytree(ref_dir / "checkpoints", run / "checkpoints")
    latest = run / "checkpoints/latest.pth"
    data = latest.read_bytes()
    latest.write_bytes(data[: len(data) // 2])  # a write cut off half-way (without atomic_save)
    with caplog.at_level(logging.WARNING, logger="psapose"):
        resumed = _trainer(run, "resume=auto")
    assert re.search(r"cannot use .*latest\.pth: .*truncated or corrupt", caplog.text)
    assert (resumed.epoch, resumed.batch_in_epoch) == (1, 0), "resumed from previous.pth"
    resumed.fit()  # epoch 2 again, from epoch 1's checkpoint: the same end
    _assert_same_weights(_weights(latest), _weights(ref_dir / "checkpoints/latest.pth"))

    (run / "checkpoints/latest.pth").write_bytes(b"")
    previous = run / "checkpoints/previous.pth"
    previous.write_bytes(previous.read_bytes()[:1000])
    assert (run / "checkpoints/latest.pth.corrupt").is_file(), "the bad file is kept aside"
    with pytest.raises(
        CheckpointError, match=r"resume=auto: no usable checkpoint in .*Move them away"
    ):
        _trainer(run, "resume=auto")


def test_atomic_save_survives_a_crash_mid_write_and_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "latest.pth"
    atomic_save({"n": torch.tensor(1)}, path, keep_previous=tmp_path / "previous.pth")
    atomic_save({"n": torch.tensor(2)}, path, keep_previous=tmp_path / "previous.pth")
    assert torch.load(tmp_path / "previous.pth", weights_only=True)["n"] == 1

    def crash_mid_write(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", crash_mid_write)
    with pytest.raises(OSError, match="No space left"):
        atomic_save({"n": torch.tensor(3)}, path, keep_previous=tmp_path / "previous.pth")
    assert torch.load(path, weights_only=True)["n"] == 2, "latest untouched"
    assert torch.load(tmp_path / "previous.pth", weights_only=True)["n"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pth", "previous.pth"]


class _Payload:
    def __init__(self) -> None:
        self.command = "echo pwned"


@pytest.mark.parametrize("payload", ["partial", "instance"])
def test_checkpoints_holding_pickled_objects_are_refused(reference, tmp_path, payload):
    ref_dir, _ = reference
    state = torch.load(ref_dir / "checkpoints/latest.pth", weights_only=True)
    state["extra"] = (
        functools.partial(os.system, "echo pwned") if payload == "partial" else _Payload()
    )
    bad = tmp_path / "run/checkpoints/latest.pth"
    bad.parent.mkdir(parents=True)
    torch.save(state, bad)
    needs = "functools.partial" if payload == "partial" else "_Payload"
    message = rf"refused to load: the file holds pickled Python objects.*it needs .*{needs}"
    with pytest.raises(UnsafeCheckpointError, match=message):
        load_state_dict_file(bad)
    with pytest.raises(UnsafeCheckpointError, match=message):
        _trainer(tmp_path / "other", f"resume={bad}")
    # resume=auto refuses too, rather than quietly falling back to previous.pth.
    shutil.copy(ref_dir / "checkpoints/latest.pth", bad.with_name("previous.pth"))
    with pytest.raises(UnsafeCheckpointError, match=message):
        _trainer(tmp_path / "run", "resume=auto")


# ----------------------------------------------------------------------------- non-finite losses


class _PoisonedInputs(torch.nn.Module):
    """Feeds NaN images to the real model on the chosen forward calls (1-based)."""

    def __init__(self, model: torch.nn.Module, poisoned: set[int]) -> None:
        super().__init__()
        self.model, self.poisoned, self.calls = model, poisoned, 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls in self.poisoned:
            images = images * float("nan")
        return self.model(images)


def test_nan_losses_skip_their_steps_and_are_counted(tmp_path, caplog):
    trainer = _trainer(tmp_path, **{"schedule.epochs": "1"})
    trainer.model = _PoisonedInputs(trainer.model, {2, 5, 6})
    with caplog.at_level(logging.WARNING, logger="psapose"):
        result = trainer.fit()
    assert result["nonfinite_steps"] == 3 and result["history"][0]["nonfinite_steps"] == 3
    assert np.isfinite(result["history"][0]["loss"])
    assert caplog.text.count("non-finite loss nan at epoch 1") == 3
    assert "3 non-finite loss steps skipped" in caplog.text
    state = torch.load(tmp_path / "checkpoints/latest.pth", weights_only=True)
    # BatchNorm statistics too: the NaN forward passes must not leave their mark.
    assert all(t.isfinite().all() for t in state["model"].values() if t.is_floating_point())
    assert state["step"] == BATCHES_PER_EPOCH and state["counters"]["nonfinite_steps"] == 3


def test_consecutive_nan_losses_stop_the_run_and_keep_the_last_good_checkpoint(tmp_path):
    trainer = _trainer(tmp_path, **{"schedule.max_nonfinite_steps": "3"})
    poisoned = set(range(BATCHES_PER_EPOCH + 4, 3 * BATCHES_PER_EPOCH))  # from epoch 2, batch 4
    trainer.model = _PoisonedInputs(trainer.model, poisoned)
    with pytest.raises(NonFiniteLossError, match=r"3 non-finite losses in a row .*epoch 2 batch 6"):
        trainer.fit()
    latest = tmp_path / "checkpoints/latest.pth"
    state = torch.load(latest, weights_only=True)
    assert (state["epoch"], state["batch_in_epoch"]) == (1, 0), "epoch 1's checkpoint untouched"
    assert not (tmp_path / "checkpoints/previous.pth").exists()


# ----------------------------------------------------------------------------- bad images


def test_read_image_detects_truncated_jpeg_and_png(tmp_path):
    image = (np.arange(64 * 48 * 3) % 251).astype(np.uint8).reshape(64, 48, 3)
    for ext, name in ((".jpg", "JPEG"), (".png", "PNG")):
        ok, encoded = cv2.imencode(ext, image)
        whole = tmp_path / f"whole{ext}"
        whole.write_bytes(encoded.tobytes() + b"\0" * 16)  # padding after the end is fine
        assert read_image(whole).shape == (64, 48, 3)
        cut = tmp_path / f"cut{ext}"
        cut.write_bytes(encoded.tobytes()[: len(encoded) * 2 // 3])
        with pytest.raises(ImageReadError, match=rf"cut\{ext}: truncated {name}"):
            read_image(cut)
    (tmp_path / "dir.jpg").mkdir()
    with pytest.raises(ImageReadError, match="dir.jpg: cannot read the file"):
        read_image(tmp_path / "dir.jpg")


@pytest.fixture
def corrupt_images(tmp_path) -> tuple[Path, dict[str, str]]:
    """The training images with four broken: missing, empty, truncated, not an image."""
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    for path in TRAIN_IMAGES.iterdir():
        (image_dir / path.name).symlink_to(path)
    inst = load_coco_annotations(TRAIN_ANN, TRAIN_IMAGES, 17, 1.0)
    names = sorted(Path(inst.image_files[i]).name for i in set(inst.image_index.tolist()))
    broken = dict(zip(names[:4], ["file not found", "empty file", "truncated JPEG", "not a decodable image"], strict=True))  # fmt: skip
    missing, empty, truncated, text = (image_dir / n for n in names[:4])
    missing.unlink()
    empty.unlink()
    empty.write_bytes(b"")
    data = (TRAIN_IMAGES / truncated.name).read_bytes()
    truncated.unlink()
    truncated.write_bytes(data[: len(data) // 2])
    text.unlink()
    text.write_text("<html>404 not found</html>")
    return image_dir, broken


def _bad_sample_count(image_names: list[str]) -> int:
    inst = load_coco_annotations(TRAIN_ANN, TRAIN_IMAGES, 17, 1.0)
    files = [Path(inst.image_files[i]).name for i in inst.image_index]
    return sum(f in image_names for f in files)


def test_corrupt_images_are_skipped_logged_once_counted_and_reported(
    corrupt_images, tmp_path, caplog
):
    image_dir, broken = corrupt_images
    bad = _bad_sample_count(list(broken))
    assert 4 <= bad < 0.3 * 86
    trainer = _trainer(
        tmp_path / "run", image_dir=image_dir, workers="1", **{"data.max_bad_fraction": "0.3"}
    )
    with caplog.at_level(logging.WARNING, logger="psapose"):
        result = trainer.fit()
    skipping = [
        r.getMessage() for r in caplog.records if "unreadable training sample" in r.getMessage()
    ]
    assert len(skipping) == 4, "each bad file logged once, however many people it holds"
    for name, reason in broken.items():
        assert sum(name in m and reason in m for m in skipping) == 1, (name, skipping)
    # drop_last leaves 6 of 86 samples out of each epoch, so counts depend on the shuffle.
    per_epoch = [r["skipped_samples"] for r in result["history"]]
    assert result["skipped_samples"] == sum(per_epoch) and all(0 < n <= bad for n in per_epoch)
    assert len(result["bad_samples"]) <= bad and all(
        np.isfinite(r["loss"]) for r in result["history"]
    )
    assert f"{sum(per_epoch)} unreadable samples skipped" in caplog.text


def test_too_many_bad_images_stop_with_examples_named(corrupt_images, tmp_path):
    image_dir, broken = corrupt_images
    trainer = _trainer(tmp_path / "run", image_dir=image_dir)  # default max_bad_fraction 0.01
    with pytest.raises(DataError, match=r"training samples cannot be read, more than data\.max_bad_fraction=0\.01") as info:  # fmt: skip
        trainer.fit()
    assert any(name in str(info.value) for name in broken)


def test_evaluation_leaves_out_unreadable_crops(corrupt_images, caplog):
    image_dir, broken = corrupt_images
    cfg, spec, codec = prepare_config(compose_config(_overrides(Path("unused"))))
    inst = load_coco_annotations(TRAIN_ANN, image_dir, 17, 1.0)
    dataset = TopDownDataset(inst, spec, (64, 64), udp=codec.use_udp)
    model = torch.nn.Sequential(torch.nn.AvgPool2d(4), torch.nn.Conv2d(3, 17, 1))
    with caplog.at_level(logging.WARNING, logger="psapose"):
        preds = predict(model, dataset, codec, torch.device("cpu"), batch_size=16, flip_test=False)
    files = np.array([Path(inst.image_files[i]).name for i in inst.image_index])
    readable = np.flatnonzero(~np.isin(files, list(broken)))
    assert preds.index.tolist() == readable.tolist()
    assert f"{len(inst) - len(readable)} crops from 4 unreadable files left out" in caplog.text


# ----------------------------------------------------------------------------- bad annotations


_IMAGES = [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 80}]
_GOOD = {"id": 7, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 50.0, "bbox": [1, 2, 30, 40], "keypoints": [10, 10, 2] * 17}  # fmt: skip


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", r"bad\.json: not valid JSON"),
        ({"annotations": [_GOOD]}, r"bad\.json: missing or invalid field 'images'"),
        ({"images": [{"id": 1}], "annotations": []}, r"images\[0\] \(id 1\): missing field 'file_name'"),
        ({"images": _IMAGES, "annotations": [{k: v for k, v in _GOOD.items() if k != "keypoints"}]}, r"annotations\[0\] \(id 7\): missing field 'keypoints'"),
        ({"images": _IMAGES, "annotations": [{**_GOOD, "keypoints": [1, 1, 2] * 16}]}, r"annotations\[0\] \(id 7\): field 'keypoints': expected 51 numbers, got 48"),
        ({"images": _IMAGES, "annotations": [{**_GOOD, "bbox": [1, 2, -30, 40]}]}, r"annotations\[0\] \(id 7\): field 'bbox' has a negative size"),
        ({"images": _IMAGES, "annotations": [{**_GOOD, "bbox": [1, 2, 30, 0]}]}, r"annotations\[0\] \(id 7\): field 'bbox' has zero area"),
        ({"images": _IMAGES, "annotations": [{**_GOOD, "keypoints": [10, float("nan"), 2] * 17}]}, r"field 'keypoints': contains NaN"),
        ({"images": _IMAGES, "annotations": [{**_GOOD, "area": float("nan")}]}, r"annotations\[0\] \(id 7\): field 'area': contains NaN"),
        ({"images": _IMAGES, "annotations": [_GOOD, {**_GOOD, "id": 8, "bbox": [0, 0, "x", 4]}]}, r"annotations\[1\] \(id 8\): field 'bbox': not all numbers"),
    ],
    ids=["invalid-json", "no-images", "image-field", "missing-field", "keypoint-length",
         "negative-box", "zero-area-box", "nan-keypoint", "nan-area", "not-a-number"],
)  # fmt: skip
def test_broken_annotation_files_stop_at_load_naming_file_record_and_field(
    tmp_path, content, message
):
    path = tmp_path / "bad.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(AnnotationError, match=message) as info:
        load_coco_annotations(path, tmp_path, 17, 0.75)
    assert str(path) in str(info.value)


def test_train_py_stops_at_start_on_a_broken_annotation_file(tmp_path):
    bad = tmp_path / "train.json"
    bad.write_text(
        json.dumps({"images": _IMAGES, "annotations": [{**_GOOD, "bbox": [1, 2, 0, 4]}]})
    )
    overrides = _overrides(tmp_path, **{"data.train.ann_file": str(bad)})
    proc = subprocess.run(
        [sys.executable, "tools/train.py", *overrides, f"hydra.run.dir={tmp_path / 'hydra'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{bad}: annotations[0] (id 7): field 'bbox' has zero area" in proc.stdout + proc.stderr
    assert not (tmp_path / "checkpoints").exists()


# ----------------------------------------------------------------------------- bad configs


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+schedule.lrr=1", "unknown key schedule.lrr; allowed here: epochs, batch_size"),
        ("schedule.batch_size=big", "schedule.batch_size: Value 'big'"),
        ("input_size=[130,96]", "input_size [130, 96]: height and width must be multiples of 32"),
        ("codec.sigma=0", "codec.sigma must be a finite number > 0, got 0"),
        ("codec.sigma=-1.5", "codec.sigma must be a finite number > 0, got -1.5"),
        ("data.max_bad_fraction=1.5", "data.max_bad_fraction=1.5 is out of range"),
        ("schedule.max_nonfinite_steps=0", "schedule.max_nonfinite_steps=0 is out of range"),
        ("model._target_=os.system", "model._target_='os.system' is not allowed: _target_ must name a psapose model class"),
        ("+attention.extra._target_=builtins.eval", "attention.extra._target_='builtins.eval' is not allowed"),
        ("codec._target_=subprocess.call", "codec._target_='subprocess.call' is not allowed"),
        ("+data.synthetic.hook._target_=os.system", "data.synthetic.hook._target_='os.system' is not allowed"),
        ("precision=fp8", "precision='fp8'; allowed: fp32, bf16, fp16"),
    ],
)  # fmt: skip
def test_bad_configs_stop_at_start_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config(compose_config(["experiment=quickstart", override]))


def test_a_flip_pair_naming_an_unknown_joint_stops_at_start(tmp_path):
    spec = tmp_path / "mouse.yaml"
    spec.write_text("keypoints: [nose, left_ear, right_ear]\nflip_pairs: [[left_ear, right_eye]]\nsigmas: [0.1, 0.1, 0.1]\n")  # fmt: skip
    with pytest.raises(KeypointSpecError, match=r"mouse\.yaml: field 'flip_pairs\[0\]' names unknown keypoint 'right_eye'"):  # fmt: skip
        prepare_config(compose_config(["experiment=quickstart", f"data.keypoints={spec}"]))
    with pytest.raises(KeypointSpecError):
        load_keypoint_spec(spec)


def test_no_config_value_is_evaluated_as_code(tmp_path):
    marker = tmp_path / "ran"
    cfg = OmegaConf.create({"name": f'${{eval:\'__import__("os").system("touch {marker}")\'}}'})
    with pytest.raises(Exception, match="eval"):
        OmegaConf.to_container(cfg, resolve=True)
    for name in ("eval", "python", "exec", "oc.eval"):
        assert not OmegaConf.has_resolver(name)
    with pytest.raises(ConfigError, match="not allowed"):
        validate_config(compose_config(["experiment=quickstart", "model._target_=os.system"]))
    assert not marker.exists()
