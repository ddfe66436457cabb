"""The inference API, the demo tool and ONNX export."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import SHARED_DATA
from omegaconf import OmegaConf
from torch import nn

from psapose.api import PoseEstimator, as_boxes
from psapose.checkpoint import CheckpointError
from psapose.codecs import DarkHeatmap, UDPHeatmap
from psapose.config import build_model, compose_config
from psapose.data.builder import build_dataset
from psapose.data.keypoint_spec import load_keypoint_spec
from psapose.data.normalize import IMAGENET_MEAN, IMAGENET_STD
from psapose.data.synthetic import generate_synthetic_coco
from psapose.engine.inference import predict

COCO_FIXTURE = SHARED_DATA / "coco_fixture"
needs_fixture = pytest.mark.skipif(
    not (COCO_FIXTURE / "test_coco.json").is_file(),
    reason=f"shared COCO fixture not found at {COCO_FIXTURE}",
)
needs_onnxruntime = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None,
    reason="onnx/onnxruntime not installed (pip install 'psapose[onnx]')",
)


def _tool(name: str):
    return importlib.import_module(f"psapose.commands.{name}")


class BrightnessModel(nn.Module):
    """Heatmaps = the crop's brightness at each heatmap cell's crop position (the codec's
    convention: UDP's ``(W-1)/(w-1)`` or the standard stride 4), the same for every keypoint.

    On a black image with one bright Gaussian spot every keypoint decodes to the spot,
    so the whole geometry (box -> crop -> heatmap -> decode -> image pixels) is checked
    against a known answer.
    """

    def __init__(self, num_keypoints: int, input_size: tuple[int, int], udp: bool) -> None:
        super().__init__()
        self.num_keypoints = num_keypoints
        h, w = input_size
        hh, hw = h // 4, w // 4
        step_x, step_y = ((w - 1) / (hw - 1), (h - 1) / (hh - 1)) if udp else (4.0, 4.0)
        # grid_sample(align_corners=True): -1 and 1 are the centres of the first and last pixel.
        xs = torch.arange(hw) * step_x * 2 / (w - 1) - 1
        ys = torch.arange(hh) * step_y * 2 / (h - 1) - 1
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)[None]
        self.register_buffer("grid", grid.float())
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        brightness = (x * self.std + self.mean).mean(1, keepdim=True)  # undo the normalisation
        grid = self.grid.expand(len(x), -1, -1, -1)
        sampled = F.grid_sample(brightness, grid, mode="bilinear", align_corners=True)
        return sampled.repeat(1, self.num_keypoints, 1, 1)


def _spot_image(size: tuple[int, int], center: tuple[float, float], sigma: float) -> np.ndarray:
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    spot = np.exp(-((xx - center[0]) ** 2 + (yy - center[1]) ** 2) / (2 * sigma**2))
    return np.repeat(np.round(255 * spot).astype(np.uint8)[..., None], 3, axis=2)


@pytest.mark.parametrize(
    "codec_cls, flip_test, tolerance",
    [(UDPHeatmap, True, 0.25), (UDPHeatmap, False, 0.25), (DarkHeatmap, False, 0.25)],
)
def test_keypoints_come_back_to_the_spot_in_image_pixels(codec_cls, flip_test, tolerance):
    spec = load_keypoint_spec("coco")
    size = (256, 192)
    estimator = PoseEstimator(
        BrightnessModel(17, size, codec_cls is UDPHeatmap), codec_cls(input_size=size), spec, size,
        device="cpu", flip_test=flip_test, batch_size=3,
    )  # fmt: skip
    spot = (213.3, 151.7)
    # Boxes of several sizes, the spot off-centre in each: the crop scale changes per box.
    boxes = [[150, 80, 120, 160], [120, 60, 180, 200], [190, 120, 60, 70], [100, 100, 160, 120]]
    first = _spot_image((360, 420), spot, sigma=9.0)
    second = _spot_image((300, 300), (120.4, 99.6), sigma=7.0)
    poses = estimator.estimate([first, second], [boxes, [[60, 40, 140, 130]]])
    assert [len(p) for p in poses] == [4, 1]
    assert poses[0].keypoints.shape == (4, 17, 2) and poses[0].scores.shape == (4, 17)
    np.testing.assert_allclose(
        poses[0].keypoints, np.broadcast_to(spot, (4, 17, 2)), atol=tolerance
    )
    np.testing.assert_allclose(poses[1].keypoints[0], np.broadcast_to((120.4, 99.6), (17, 2)), atol=tolerance)  # fmt: skip
    np.testing.assert_array_equal(poses[0].boxes, np.asarray(boxes, dtype=np.float64))
    assert np.all(poses[0].scores > 0.5)
    # One image through __call__ equals the same image in a batch of two.
    single = estimator(first, boxes)
    np.testing.assert_array_equal(single.keypoints, poses[0].keypoints)


def test_xyxy_boxes_bgr_arrays_paths_and_the_whole_frame(tmp_path):
    spec = load_keypoint_spec("coco")
    size = (256, 192)
    estimator = PoseEstimator(
        BrightnessModel(17, size, True), UDPHeatmap(input_size=size), spec, size, device="cpu"
    )
    image = _spot_image((300, 240), (131.0, 170.0), sigma=10.0)
    image[..., 0] = 0  # not grey: channel order matters
    xywh = estimator(image, [[60, 90, 140, 160]])
    xyxy = estimator(image, [[60, 90, 200, 250]], box_format="xyxy")
    np.testing.assert_allclose(xyxy.keypoints, xywh.keypoints, atol=1e-9)
    bgr = estimator(np.ascontiguousarray(image[..., ::-1]), [[60, 90, 140, 160]], color="bgr")
    np.testing.assert_array_equal(bgr.keypoints, xywh.keypoints)
    path = tmp_path / "spot.png"
    cv2.imwrite(str(path), image[..., ::-1])
    from_file = estimator(path, [[60, 90, 140, 160]])
    np.testing.assert_array_equal(from_file.keypoints, xywh.keypoints)
    whole = estimator(image)  # no boxes: the whole frame
    np.testing.assert_array_equal(whole.boxes, [[0, 0, 240, 300]])
    np.testing.assert_allclose(
        whole.keypoints[0], np.broadcast_to((131.0, 170.0), (17, 2)), atol=0.3
    )


def test_bad_boxes_and_images_name_the_problem():
    with pytest.raises(ValueError, match=r"boxes\[1\].*width and height must be positive"):
        as_boxes([[0, 0, 10, 10], [5, 5, 0, 3]])
    with pytest.raises(ValueError, match=r"expected \(N, 4\) boxes"):
        as_boxes([[0, 0, 10]])
    with pytest.raises(ValueError, match="box_format"):
        as_boxes([[0, 0, 1, 1]], box_format="cxcywh")
    spec = load_keypoint_spec("coco")
    estimator = PoseEstimator(BrightnessModel(17, (64, 48), True), UDPHeatmap(input_size=(64, 48)), spec, (64, 48), device="cpu")  # fmt: skip
    with pytest.raises(ValueError, match="uint8"):
        estimator(np.zeros((10, 10, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="2 boxes but 1 box scores"):
        estimator(np.zeros((10, 10, 3), np.uint8), [[0, 0, 5, 5], [1, 1, 5, 5]], box_scores=[0.9])
    assert len(estimator(np.zeros((10, 10, 3), np.uint8), np.zeros((0, 4)))) == 0


def _small_config(root: Path, *extra: str) -> OmegaConf:
    return compose_config(
        [
            "experiment=quickstart", "data=coco", f"data.root={root}",
            "data.val.use_gt_boxes=true", "model.num_blocks=1", "device=cpu", *extra,
        ]
    )  # fmt: skip


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic_coco(root, images=4, val_images=4, seed=3, difficulty="easy")
    return root


def test_api_equals_the_evaluation_path_and_loads_a_run(synthetic_root, tmp_path):
    """Same model, same boxes: the API's keypoints equal tools/test.py's predict path exactly;
    a run directory (config.yaml + checkpoints/best.pth) loads to the same estimator."""
    torch.manual_seed(0)
    cfg = _small_config(synthetic_root)
    estimator = PoseEstimator.from_config(cfg, device="cpu", batch_size=5)
    dataset = build_dataset(
        estimator_cfg(cfg), "val", estimator.input_size, augment=False, udp=True
    )
    preds = predict(estimator.model, dataset, estimator.codec, torch.device("cpu"), batch_size=7)
    inst = dataset.instances
    boxes_by_image: dict[int, list] = {}
    for row in range(len(inst)):
        boxes_by_image.setdefault(inst.image_index[row], []).append(row)
    images = sorted(boxes_by_image)
    padded = [inst.scales[boxes_by_image[i]] / 1.25 for i in images]  # undo the padding
    centers = [inst.centers[boxes_by_image[i]] for i in images]
    boxes = [np.concatenate([c - s / 2, s], axis=1) for c, s in zip(centers, padded, strict=True)]
    poses = estimator.estimate([inst.image_files[i] for i in images], boxes)
    ours = np.concatenate([p.keypoints for p in poses])
    order = np.concatenate([boxes_by_image[i] for i in images])
    reference = preds.keypoints[np.argsort(preds.index)][order]
    np.testing.assert_allclose(ours, reference, atol=1e-6)
    np.testing.assert_allclose(
        np.concatenate([p.scores for p in poses]), preds.scores[np.argsort(preds.index)][order]
    )

    # A run directory as the trainer writes it.
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    torch.save(
        {
            "model": estimator.model.state_dict(),
            "config": OmegaConf.to_container(cfg, resolve=True),
        },
        run / "checkpoints" / "best.pth",
    )
    loaded = PoseEstimator.from_run(run, device="cpu")
    again = loaded.estimate([inst.image_files[i] for i in images], boxes)
    np.testing.assert_array_equal(np.concatenate([p.keypoints for p in again]), ours)
    # The checkpoint alone carries its config.
    alone = PoseEstimator.from_checkpoint(run / "checkpoints" / "best.pth", device="cpu")
    np.testing.assert_array_equal(alone(inst.image_files[images[0]], boxes[0]).keypoints, poses[0].keypoints)  # fmt: skip
    results = poses[0].to_coco(image_id=7)
    assert len(results) == len(boxes[0]) and len(results[0]["keypoints"]) == 51
    assert results[0]["image_id"] == 7 and 0 <= results[0]["score"] <= 1

    plain = tmp_path / "plain.pth"
    torch.save(estimator.model.state_dict(), plain)
    with pytest.raises(CheckpointError, match="holds no config"):
        PoseEstimator.from_checkpoint(plain)
    with pytest.raises(FileNotFoundError, match="no config.yaml"):
        PoseEstimator.from_run(tmp_path)


def estimator_cfg(cfg):
    from psapose.runtime import prepare_config

    return prepare_config(cfg)[0].data


def _is_plain(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_is_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


def test_checkpoints_carry_a_plain_inference_config_that_loads_without_hydra(
    synthetic_root, tmp_path, monkeypatch
):
    """The trainer's checkpoints hold the inference config as plain data; from_checkpoint
    builds from it alone (no composing, no validating), and a checkpoint without it (older
    ones) still loads through its stored config, to the same outputs."""
    from psapose.engine.checkpoints import atomic_save
    from psapose.engine.trainer import Trainer

    cfg = _small_config(synthetic_root, "schedule.epochs=1")
    trainer = Trainer(cfg, tmp_path / "run")
    path = trainer.save()
    state = torch.load(path, weights_only=True)
    inference = state["inference"]
    assert _is_plain(inference)
    assert inference["input_size"] == list(trainer.input_size)
    assert inference["keypoints"]["keypoints"] == list(trainer.spec.keypoints)
    assert inference["codec"]["name"] == "psapose.codecs.udp.UDPHeatmap"
    assert (inference["color"], inference["box_padding"]) == ("rgb", 1.25)
    assert inference["model"]["_target_"] == cfg.model._target_

    old = tmp_path / "old.pth"  # as checkpoints were written before the inference config
    atomic_save({k: v for k, v in state.items() if k not in ("inference", "checksum")}, old)
    before = PoseEstimator.from_checkpoint(old, device="cpu")

    def refused(*args, **kwargs):
        raise AssertionError("the inference config path composed or prepared a Hydra config")

    for name in ("psapose.config.compose", "psapose.api.compose_config", "psapose.api.run_setup"):
        monkeypatch.setattr(name, refused)
    after = PoseEstimator.from_checkpoint(path, device="cpu")
    assert after.spec == before.spec == trainer.spec
    assert type(after.codec) is type(before.codec)
    assert (after.codec.input_size, after.codec.heatmap_size) == (before.codec.input_size, before.codec.heatmap_size)  # fmt: skip
    for key in ("input_size", "color", "box_padding", "flip_test", "batch_size", "precision",
                "channels_last", "udp"):  # fmt: skip
        assert getattr(after, key) == getattr(before, key), key
    image = next(p for p in sorted(synthetic_root.rglob("*")) if p.suffix in (".jpg", ".png"))
    boxes = [[10.0, 12.0, 60.0, 90.0], [0.0, 0.0, 40.0, 40.0]]
    ours, theirs = after(image, boxes), before(image, boxes)
    np.testing.assert_array_equal(ours.keypoints, theirs.keypoints)
    np.testing.assert_array_equal(ours.scores, theirs.scores)


def test_an_inference_config_builds_only_allowed_classes(tmp_path):
    import copy

    from psapose.config import ConfigError
    from psapose.runtime import run_setup

    good = run_setup(compose_config(["experiment=quickstart", "model.num_blocks=1"]))
    good = good.inference_config()
    assert PoseEstimator.from_inference_config(good, device="cpu").spec.num_keypoints == 17
    marker = tmp_path / "pwned"
    changes = {
        "model builds os.system": ("model", "_target_", "os.system"),
        "model walks out": ("model", "_target_", "psapose.data.coco.Path.write_text"),
        "a model class as the codec": ("codec", "name", "psapose.models.hrnet.PoseHRNet"),
        "an interpolation": ("model", "num_keypoints", "${oc.env:HOME}"),
    }
    for name, (node, key, value) in changes.items():
        bad = copy.deepcopy(good)
        bad[node][key] = value
        with pytest.raises(ConfigError, match="is not allowed|interpolation"):
            PoseEstimator.from_inference_config(bad, source=str(marker))
        assert not marker.exists(), name


def _run_dir(tmp_path: Path, root: Path, *extra: str, realistic: bool = False) -> Path:
    """A run directory as the trainer writes it (config.yaml, checkpoints/latest.pth)."""
    torch.manual_seed(0)
    cfg = _small_config(root, *extra)
    estimator = PoseEstimator.from_config(cfg, device="cpu")
    if realistic:
        from psapose.export import random_weights

        spots = [_spot_image(estimator.input_size, (30 + 4 * i, 50), 6.0) for i in range(4)]
        random_weights(estimator.model, estimator.normalize(spots))
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    torch.save({"model": estimator.model.state_dict()}, run / "checkpoints" / "latest.pth")
    return run


@needs_fixture
def test_demo_on_real_images_with_a_detection_file(tmp_path, synthetic_root):
    from pycocotools.coco import COCO

    demo = _tool("demo")
    run = _run_dir(tmp_path, synthetic_root)
    out = tmp_path / "out"
    summary = demo.run(
        demo.parse_args(
            [
                str(COCO_FIXTURE), "--run", str(run), "--out", str(out), "--device", "cpu",
                "--detections", str(COCO_FIXTURE / "test_coco_det_AP_H_56.json"),
                "--ann", str(COCO_FIXTURE / "test_coco.json"), "--det-threshold", "0.5",
            ]
        )
    )  # fmt: skip
    dets = json.loads((COCO_FIXTURE / "test_coco_det_AP_H_56.json").read_text())
    kept = [d for d in dets if d["score"] >= 0.5 and d["category_id"] == 1]
    assert summary["images"] == 4 and summary["people"] == len(kept)
    pngs = sorted(out.glob("*_poses.png"))
    assert len(pngs) == 4
    image = cv2.imread(str(pngs[0]))
    original = cv2.imread(str(COCO_FIXTURE / pngs[0].name.replace("_poses.png", ".jpg")))
    assert image.shape == original.shape and not np.array_equal(image, original)
    results = json.loads((out / "results.json").read_text())
    assert 0 < len(results) <= len(kept)
    gt = COCO(str(COCO_FIXTURE / "test_coco.json"))
    loaded = gt.loadRes(str(out / "results.json"))
    assert len(loaded.getAnnIds()) == len(results)
    assert {r["image_id"] for r in results} <= set(gt.getImgIds())


def test_demo_on_a_video_with_a_given_box(tmp_path, synthetic_root):
    demo = _tool("demo")
    run = _run_dir(tmp_path, synthetic_root)
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    assert writer.isOpened()
    for i in range(11):
        writer.write(_spot_image((120, 160), (40 + 8 * i, 60), 6.0))
    writer.release()
    out = tmp_path / "out"
    summary = demo.run(
        demo.parse_args(
            [
                str(video),
                "--run",
                str(run),
                "--out",
                str(out),
                "--box",
                "20",
                "10",
                "120",
                "100",
                "--device",
                "cpu",
                "--nms",
                "none",
            ]
        )  # fmt: skip
    )
    assert summary["images"] == 11 and summary["people"] == 11
    written = cv2.VideoCapture(summary["outputs"][0])
    frames = 0
    while written.read()[0]:
        frames += 1
    assert frames == 11
    results = json.loads((out / "results.json").read_text())
    assert sorted(r["image_id"] for r in results) == list(range(11))
    # The per-frame CSV in DeepLabCut's layout holds each frame's (only) person.
    from psapose.data.labels_csv import read_labels_csv

    table = read_labels_csv(out / "clip_poses.csv")
    assert summary["outputs"][-1] == str(out / "clip_poses.csv")
    assert list(table.bodyparts) == list(load_keypoint_spec("coco").keypoints)
    by_frame = {r["image_id"]: np.asarray(r["keypoints"]).reshape(-1, 3) for r in results}
    for frame in range(11):
        assert table.index[frame] == str(frame)
        np.testing.assert_array_equal(table.xy[frame, 0], by_frame[frame][:, :2])
        np.testing.assert_array_equal(table.likelihood[frame, 0], by_frame[frame][:, 2])


def test_demo_detector_needs_torchvision_and_says_so(tmp_path, monkeypatch):
    demo = _tool("demo")
    monkeypatch.setitem(sys.modules, "torchvision", None)  # as on a machine without it
    monkeypatch.setitem(sys.modules, "torchvision.models.detection", None)
    with pytest.raises(demo.DemoInputError, match="--detector needs torchvision"):
        demo.PersonDetector(str(tmp_path / "w.pth"), "cpu", 0.5)
    # Through the tool's main: one line and exit 2 (the contract of docs/reliability.md).
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    torch.save(
        build_model(compose_config(["experiment=quickstart"])).state_dict(), tmp_path / "w.pth"
    )
    with pytest.raises(SystemExit) as stop:
        demo.main([str(image), "--checkpoint", str(tmp_path / "w.pth"), "--overrides",
                   "experiment=quickstart", "--detector", str(tmp_path / "w.pth"),
                   "--out", str(tmp_path / "out"), "--device", "cpu"])  # fmt: skip
    assert stop.value.code == 2


# ----------------------------------------------------------------------------- ONNX


@needs_onnxruntime
@pytest.mark.parametrize("layout", ["parallel", "sequential"])
def test_onnx_export_matches_pytorch_with_a_dynamic_batch(tmp_path, layout):
    from psapose.export import check_onnx, export_onnx, random_weights

    cfg = compose_config(
        ["experiment=quickstart", f"attention=psa_{layout}", "model.num_blocks=1", "codec=msra",
         "input_size=[64,64]", "device=cpu"]
    )  # fmt: skip
    estimator = PoseEstimator.from_config(cfg, device="cpu", channels_last=False)
    spots = [_spot_image((64, 64), (20 + 5 * i, 30), 5.0) for i in range(5)]
    images = estimator.normalize(spots)
    random_weights(estimator.model, images, seed=1)
    path = export_onnx(estimator.model, tmp_path / "m.onnx", (64, 64), exporter="torchscript")
    report = check_onnx(path, estimator.model, images, estimator.codec, estimator.spec.flip_indices)
    assert report["batch"] == 5  # exported with batch 2: the batch axis is dynamic
    assert report["heatmap_max_abs"] == pytest.approx(1.0, rel=1e-5)
    assert report["max_abs_diff"] < 1e-5
    assert report["flip_max_abs_diff"] < 1e-5
    assert report["keypoint_max_diff_px"] < 1e-3  # argmax decoding: exact unless maxima tie


@needs_onnxruntime
def test_export_tool_dynamo_round_trip(tmp_path, synthetic_root, capsys):
    """The default (dynamo) exporter through the tool, on synthetic renders, batch 3 != 2."""
    export_tool = _tool("export_onnx")
    run = _run_dir(tmp_path, synthetic_root, "codec=msra", realistic=True)
    out = tmp_path / "q.onnx"
    argv = ["--run", str(run), "--checkpoint", "latest", "--output", str(out), "--batch", "3"]
    assert export_tool.main([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert out.is_file() and report["exporter"] == "dynamo" and report["batch"] == 3
    assert report["weights"] == "checkpoint" and report["heatmap_shape"] == [17, 32, 24]
    assert 0.1 < report["heatmap_max_abs"] < 10
    assert report["max_abs_diff"] < 1e-4 and report["keypoint_max_diff_px"] < 1e-3
    assert report["ok"] is True
    # A tolerance nothing can meet fails the check with exit code 1.
    assert (
        export_tool.main([*argv, "--atol", "-1", "--rtol", "-1", "--exporter", "torchscript"]) == 1
    )
    assert "Replaced initializer" not in capsys.readouterr().out, "the export is quiet"


def test_parity_check_passes_flat_maps_that_round_differently_and_fails_a_wrong_export():
    """An early checkpoint's maps: flat to 1e-8, an export that differs by 2e-9 moves every
    argmax (the old check failed it); only decisive peaks are compared. A wrong export,
    with peaks in other places, still fails, and so do heatmaps beyond both tolerances."""
    from psapose.codecs import UDPHeatmap
    from psapose.export import compare_heatmaps, decisive_peaks, parity_ok

    codec = UDPHeatmap(input_size=(64, 48))
    g = torch.Generator().manual_seed(0)
    flat = 1.0 + 1e-8 * torch.rand((2, 17, 16, 12), generator=g, dtype=torch.float64)
    rounded = flat + 2e-9 * torch.rand(flat.shape, generator=g, dtype=torch.float64)
    report = compare_heatmaps(flat.float(), rounded.float(), codec)
    assert report["max_abs_diff"] < 1e-7 and report["keypoints_compared"] == 0
    assert parity_ok(report, atol=1e-4, rtol=1e-5, keypoint_atol=1e-3)

    trained, _ = codec.encode(torch.rand((2, 17, 2), generator=g) * 40 + 4, torch.ones(2, 17))
    assert decisive_peaks(trained, 1e-3).all()
    exact = compare_heatmaps(trained, trained + 1e-7, codec)
    assert exact["keypoints_compared"] == 34 and parity_ok(exact, 1e-4, 1e-5, 1e-3)
    moved, _ = codec.encode(torch.rand((2, 17, 2), generator=g) * 40 + 4, torch.ones(2, 17))
    wrong = compare_heatmaps(trained, moved, codec)
    assert wrong["keypoint_max_diff_px_all"] > 1 and wrong["max_rel_diff"] > 0.5
    assert not parity_ok(wrong, atol=1e-4, rtol=1e-5, keypoint_atol=1e-3)
    # Peaks that stay decisive against the differences but decode elsewhere fail too.
    shifted = compare_heatmaps(trained, torch.roll(trained, 1, dims=-1) * 1e-6 + trained, codec)
    assert shifted["keypoints_compared"] == 34
    assert not parity_ok(shifted, atol=1e-4, rtol=1e-5, keypoint_atol=1e-9)


@needs_onnxruntime
def test_onnx_check_of_an_early_checkpoint_compares_only_decisive_peaks(tmp_path):
    """Through the real export and onnxruntime: an early checkpoint's flat maps pass (no peak
    is decisive, none compared); after changing the model the same file fails."""
    from psapose.export import check_onnx, export_onnx, parity_ok

    cfg = compose_config(["experiment=quickstart", "input_size=[64,64]", "device=cpu"])
    estimator = PoseEstimator.from_config(cfg, device="cpu", channels_last=False)  # pose init
    images = estimator.normalize([_spot_image((64, 64), (20 + 5 * i, 30), 5.0) for i in range(4)])
    final = [m for m in estimator.model.modules() if isinstance(m, nn.Conv2d)][-1]
    with torch.no_grad():  # an early checkpoint: maps flat to within float32's rounding at 1
        final.weight.mul_(1e-6)
        final.bias.fill_(1.0)
    path = export_onnx(estimator.model, tmp_path / "flat.onnx", (64, 64), exporter="torchscript")
    report = check_onnx(path, estimator.model, images, estimator.codec, estimator.spec.flip_indices)
    assert report["max_abs_diff"] < 1e-6, "a correct export"
    assert report["keypoints_compared"] < report["keypoints_total"] // 2, report
    assert parity_ok(report, atol=1e-4, rtol=1e-5, keypoint_atol=1e-3)
    with torch.no_grad():
        final.weight.mul_(1e6)  # now the file no longer matches the model: a wrong export
        final.bias.zero_()
    wrong = check_onnx(path, estimator.model, images, estimator.codec, estimator.spec.flip_indices)
    assert wrong["max_abs_diff"] > 0.5
    assert not parity_ok(wrong, atol=1e-4, rtol=1e-5, keypoint_atol=1e-3)
