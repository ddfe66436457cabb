"""COCO top-down data: loading and filtering, transforms, augmentation, image reading."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from psapose.config import compose_config
from psapose.data import load_keypoint_spec
from psapose.data.builder import build_dataset
from psapose.data.coco import (
    AnnotationError,
    TopDownDataset,
    load_coco_annotations,
    load_detections,
)
from psapose.data.keypoint_spec import KeypointSpec, KeypointSpecError
from psapose.data.normalize import normalize_images
from psapose.data.transforms import (
    Augmentation,
    ImageReadError,
    affine_matrix,
    apply_affine,
    box_to_center_scale,
    crop_to_image,
    invert_affine,
    read_image,
)
from tests.helpers import SHARED_DATA

COCO_MINI = SHARED_DATA / "coco_mini"
needs_coco_mini = pytest.mark.skipif(
    not COCO_MINI.is_dir(), reason=f"shared COCO subset not found at {COCO_MINI}"
)
SPEC = load_keypoint_spec("coco")
ASPECT = 192 / 256


def _pycocotools_person_count(ann_file: Path) -> int:
    from pycocotools.coco import COCO

    coco = COCO(str(ann_file))
    anns = coco.loadAnns(coco.getAnnIds(catIds=[1], iscrowd=False))
    return sum(1 for a in anns if a["num_keypoints"] > 0 and a["area"] > 0)


@needs_coco_mini
@pytest.mark.parametrize("split", ["train2017", "val2017"])
def test_ground_truth_instances_match_pycocotools(split):
    ann = COCO_MINI / f"annotations/person_keypoints_{split}.json"
    inst = load_coco_annotations(ann, COCO_MINI / "images" / split, 17, ASPECT)
    assert len(inst) == _pycocotools_person_count(ann)
    assert len(inst) == {"train2017": 86, "val2017": 68}[split]  # the data README's counts
    assert (inst.keypoints[..., 2] > 0).any(axis=1).all()
    assert all(Path(f).is_file() for f in np.asarray(inst.image_files)[inst.image_index])


@needs_coco_mini
def test_detection_instances_match_pycocotools(tmp_path):
    from pycocotools.coco import COCO

    ann = COCO_MINI / "annotations/person_keypoints_val2017.json"
    det = COCO_MINI / "annotations/coco_mini_val2017_gtbox_as_dets.json"
    gt = COCO(str(ann))
    expected = len(gt.loadRes(str(det)).getAnnIds(catIds=[1]))
    inst = load_detections(det, ann, COCO_MINI / "images/val2017", 17, ASPECT)
    assert len(inst) == expected == 117
    np.testing.assert_allclose(inst.scores, 1.0)
    # A score threshold, another category and an unlisted image are left out and counted.
    raw = json.loads(det.read_text())
    raw[0]["score"], raw[1]["category_id"], raw[2]["image_id"] = 0.1, 3, -5
    _write(tmp_path / "dets.json", raw)
    inst = load_detections(
        tmp_path / "dets.json", ann, COCO_MINI / "images/val2017", 17, ASPECT, score_threshold=0.5
    )
    assert len(inst) == 114
    assert inst.skipped == {
        "other category": 1,
        "below score threshold": 1,
        "image not listed": 1,
        "empty box": 0,
    }
    np.testing.assert_allclose(inst.boxes[0], raw[3]["bbox"])


@needs_coco_mini
def test_val_split_switches_between_detector_and_ground_truth_boxes():
    base = ["data=coco", f"data.root={COCO_MINI}"]
    det = ["data.val.det_file=annotations/coco_mini_val2017_gtbox_as_dets.json"]
    cfg = compose_config(base + det)
    assert len(build_dataset(cfg.data, "val", (256, 192))) == 117
    cfg = compose_config(base + ["data.val.use_gt_boxes=true"])
    ds = build_dataset(cfg.data, "val", (256, 192))
    assert len(ds) == 68 and ds.augment is None
    train = build_dataset(cfg.data, "train", (256, 192))
    assert len(train) == 86 and train.augment == Augmentation()


def test_box_to_center_scale_is_the_official_formula():
    # HRNet _xywh2cs: centre x + w/2, aspect fixed by growing the short side, times 1.25.
    center, scale = box_to_center_scale(np.array([[10.0, 20.0, 30.0, 100.0]]), ASPECT)
    np.testing.assert_allclose(center, [[25.0, 70.0]])
    np.testing.assert_allclose(scale, [[75.0 * 1.25, 100.0 * 1.25]])
    center, scale = box_to_center_scale(np.array([[0.0, 0.0, 120.0, 40.0]]), ASPECT)
    np.testing.assert_allclose(scale, [[150.0, 200.0]])


def _official_affine(center, scale, rot, output_size):
    """leoxiaobin/deep-high-resolution-net.pytorch get_affine_transform, restated."""
    out_h, out_w = output_size
    src_w = scale[0]
    rot_rad = np.pi * rot / 180
    sn, cs = np.sin(rot_rad), np.cos(rot_rad)
    src_dir = np.array([0 * cs - (src_w * -0.5) * sn, 0 * sn + (src_w * -0.5) * cs])
    dst_dir = np.array([0, out_w * -0.5])
    src = np.zeros((3, 2), np.float32)
    dst = np.zeros((3, 2), np.float32)
    src[0] = center
    src[1] = center + src_dir
    dst[0] = [out_w * 0.5, out_h * 0.5]
    dst[1] = dst[0] + dst_dir

    def third(a, b):
        d = a - b
        return b + np.array([-d[1], d[0]], dtype=np.float32)

    src[2], dst[2] = third(src[0], src[1]), third(dst[0], dst[1])
    return cv2.getAffineTransform(src, dst)


def _udp_warp_matrix(theta, size_input, size_dst, size_target):
    """UDP-Pose get_warp_matrix, restated."""
    theta = np.deg2rad(theta)
    sx, sy = size_dst[0] / size_target[0], size_dst[1] / size_target[1]
    m = np.zeros((2, 3))
    m[0, 0], m[0, 1] = math.cos(theta) * sx, -math.sin(theta) * sx
    m[0, 2] = sx * (
        -0.5 * size_input[0] * math.cos(theta)
        + 0.5 * size_input[1] * math.sin(theta)
        + 0.5 * size_target[0]
    )
    m[1, 0], m[1, 1] = math.sin(theta) * sy, math.cos(theta) * sy
    m[1, 2] = sy * (
        -0.5 * size_input[0] * math.sin(theta)
        - 0.5 * size_input[1] * math.cos(theta)
        + 0.5 * size_target[1]
    )
    return m


@pytest.mark.parametrize("rot", [0.0, 17.0, -60.0])
def test_affine_matrices_match_the_reference_code(rot):
    center, scale = np.array([311.5, 207.25]), np.array([180.0, 240.0])
    ours = affine_matrix(center, scale, rot, (256, 192))
    np.testing.assert_allclose(ours, _official_affine(center, scale, rot, (256, 192)), atol=2e-3)
    # UDP turns the other way for the same angle; the sign of a random rotation is immaterial.
    ours = affine_matrix(center, scale, rot, (256, 192), udp=True)
    ref = _udp_warp_matrix(-rot, 2 * center, np.array([191.0, 255.0]), scale)
    np.testing.assert_allclose(ours, ref, atol=1e-9)


@pytest.mark.parametrize("udp", [False, True])
def test_crop_to_image_inverts_the_crop(udp):
    rng = np.random.default_rng(0)
    center = rng.uniform(100, 400, size=(5, 2))
    scale = box_to_center_scale(np.c_[center, rng.uniform(50, 300, size=(5, 2))], ASPECT)[1]
    points = rng.uniform(-50, 600, size=(5, 17, 2))
    crops = np.stack(
        [
            apply_affine(p, affine_matrix(c, s, 0.0, (256, 192), udp))
            for p, c, s in zip(points, center, scale, strict=True)
        ]
    )
    np.testing.assert_allclose(
        crop_to_image(crops, center, scale, (256, 192), udp), points, atol=1e-9
    )
    m = affine_matrix(center[0], scale[0], 33.0, (256, 192), udp, flip=True)
    np.testing.assert_allclose(
        apply_affine(apply_affine(points[0], m), invert_affine(m)), points[0]
    )


def _marked_dataset(tmp_path: Path, count: int = 12) -> tuple[Path, Path, list[np.ndarray]]:
    """Real coco_mini people re-saved as lossless PNGs with a coloured disc at every
    labelled keypoint (a colour per keypoint), so crops can be checked pixel by pixel."""
    src = json.loads((COCO_MINI / "annotations/person_keypoints_train2017.json").read_text())
    anns = [a for a in src["annotations"] if a["num_keypoints"] >= 6 and not a["iscrowd"]][:count]
    images = {i["id"]: i for i in src["images"]}
    colors = [
        np.array([(37 * k) % 256, (91 * k + 60) % 256, (151 * k + 120) % 256]) for k in range(17)
    ]
    out_images, out_anns = [], []
    for n, ann in enumerate(anns):
        info = images[ann["image_id"]]
        img = cv2.imread(str(COCO_MINI / "images/train2017" / info["file_name"]))
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        kps = np.asarray(ann["keypoints"], dtype=np.float64).reshape(17, 3)
        for k in np.flatnonzero(kps[:, 2] > 0):
            cv2.circle(img, (int(kps[k, 0]), int(kps[k, 1])), 4, colors[k].tolist(), -1)
        name = f"{n:06d}.png"
        cv2.imwrite(str(tmp_path / name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        out_images.append({**info, "id": n, "file_name": name})
        out_anns.append({**ann, "id": n + 1, "image_id": n})
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(
        json.dumps({"images": out_images, "annotations": out_anns, "categories": src["categories"]})
    )
    return ann_file, tmp_path, colors


@needs_coco_mini
@pytest.mark.parametrize("udp", [False, True])
def test_augmented_keypoints_land_on_their_image_content(tmp_path, udp):
    """Every visible keypoint of every augmented crop sits on the disc painted for it
    (its own colour, or its mirror partner's colour label-swapped for flipped crops)."""
    ann_file, image_dir, colors = _marked_dataset(tmp_path)
    inst = load_coco_annotations(ann_file, image_dir, 17, ASPECT)
    # Integer-pixel discs: drop keypoints whose rounded positions collide with another's disc.
    ds = TopDownDataset(inst, SPEC, (256, 192), udp=udp, augment=Augmentation(), seed=3)
    checked = flipped = rotated = 0
    for epoch in range(4):
        for i in range(len(ds)):
            s = ds.crop(i, epoch)
            original = inst.keypoints[i]
            expected = apply_affine(original[:, :2], s["matrix"])
            if s["flipped"]:
                expected = expected[SPEC.flip_indices]
                flipped += 1
            rotated += s["rotation"] != 0
            vis = s["visible"] > 0
            np.testing.assert_allclose(s["keypoints"][vis], expected[vis], atol=1e-3)
            scale_px = 192 / s["scale"][0]
            for k in np.flatnonzero(vis):
                x, y = s["keypoints"][k]
                if not (2 <= x < 190 and 2 <= y < 254) or scale_px < 0.7:
                    continue
                source = SPEC.flip_indices[k] if s["flipped"] else k
                # Skip where another keypoint's disc is within reach in the source image.
                others = np.delete(np.arange(17), source)
                near = np.linalg.norm(
                    original[others, :2] - original[source, :2], axis=1
                ) < 10 / min(scale_px, 1.0)
                if (near & (original[others, 2] > 0)).any():
                    continue
                pixel = s["image"][int(round(y)), int(round(x))].astype(int)
                assert np.abs(pixel - colors[source]).max() <= 40, (i, k, pixel, colors[source])
                checked += 1
    assert checked > 150 and flipped > 5 and rotated > 5


@needs_coco_mini
def test_flipped_crop_mirrors_the_image_and_swaps_left_and_right():
    inst = load_coco_annotations(
        COCO_MINI / "annotations/person_keypoints_val2017.json",
        COCO_MINI / "images/val2017",
        17,
        ASPECT,
    )
    for udp in (False, True):
        fixed = dict(half_body_prob=0.0, scale_factor=0.2, rotation_factor=30.0, rotation_prob=1.0)
        plain = TopDownDataset(
            inst, SPEC, (256, 192), udp=udp, augment=Augmentation(flip_prob=0.0, **fixed)
        )
        mirror = TopDownDataset(
            inst, SPEC, (256, 192), udp=udp, augment=Augmentation(flip_prob=1.0, **fixed)
        )
        for i in range(0, len(inst), 7):
            a, b = plain.crop(i), mirror.crop(i)
            assert b["flipped"] and not a["flipped"] and a["rotation"] == b["rotation"]
            # Equal up to OpenCV's fixed-point bilinear rounding (1 level on a few pixels).
            diff = np.abs(b["image"].astype(int) - a["image"][:, ::-1])
            assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
            vis = b["visible"] > 0
            np.testing.assert_array_equal(b["visible"], a["visible"][SPEC.flip_indices])
            mirrored = a["keypoints"][SPEC.flip_indices].copy()
            mirrored[:, 0] = 191 - mirrored[:, 0]
            np.testing.assert_allclose(b["keypoints"][vis], mirrored[vis], atol=1e-3)
            # The left shoulder of the flipped crop is the right shoulder of the plain one.
            left, right = (
                SPEC.keypoints.index("left_shoulder"),
                SPEC.keypoints.index("right_shoulder"),
            )
            if a["visible"][right]:
                assert b["keypoints"][left, 0] == pytest.approx(
                    191 - a["keypoints"][right, 0], abs=1e-3
                )


@needs_coco_mini
def test_samples_depend_only_on_seed_epoch_and_index():
    inst = load_coco_annotations(
        COCO_MINI / "annotations/person_keypoints_train2017.json",
        COCO_MINI / "images/train2017",
        17,
        ASPECT,
    )
    a = TopDownDataset(inst, SPEC, (128, 96), augment=Augmentation(), seed=5)
    b = TopDownDataset(inst, SPEC, (128, 96), augment=Augmentation(), seed=5)
    b.set_epoch(2)
    for i in (0, 9, 40):
        x, y = a[(i, 2)], b[i]
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["keypoints"], y["keypoints"])
    assert not torch.equal(a[(0, 1)]["image"], a[(0, 2)]["image"])
    sample = a[0]
    assert sample["image"].dtype == torch.uint8 and sample["image"].shape == (128, 96, 3)
    assert sample["keypoints"].dtype == torch.float32 and sample["visible"].shape == (17,)
    batch = torch.utils.data.default_collate([a[0], a[1]])
    assert batch["image"].shape == (2, 128, 96, 3) and batch["center"].dtype == torch.float64


def test_normalize_images_matches_the_reference_formula():
    images = torch.randint(0, 256, (2, 8, 6, 3), dtype=torch.uint8)
    out = normalize_images(images)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    ref = (images.permute(0, 3, 1, 2).float() / 255 - mean) / std
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    assert out.shape == (2, 3, 8, 6) and out.is_contiguous(memory_format=torch.channels_last)
    assert normalize_images(images, channels_last=False).is_contiguous()
    with pytest.raises(ValueError, match="uint8"):
        normalize_images(images.float())


def _jpeg_with_exif_orientation(image: np.ndarray, orientation: int) -> bytes:
    ok, jpeg = cv2.imencode(".jpg", image)
    assert ok
    tiff = b"MM\x00\x2a\x00\x00\x00\x08\x00\x01" + b"\x01\x12\x00\x03\x00\x00\x00\x01"
    tiff += orientation.to_bytes(2, "big") + b"\x00\x00" + b"\x00\x00\x00\x00"
    payload = b"Exif\x00\x00" + tiff
    app1 = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    data = jpeg.tobytes()
    return data[:2] + app1 + data[2:]


def test_read_image_ignores_exif_orientation_and_makes_gray_three_channels(tmp_path):
    image = np.zeros((40, 60, 3), np.uint8)
    image[:, :30] = (255, 0, 0)  # blue in BGR on the left half
    path = tmp_path / "rotated.jpg"
    path.write_bytes(_jpeg_with_exif_orientation(image, 6))
    assert cv2.imread(str(path)).shape == (60, 40, 3)  # OpenCV alone would rotate it
    rgb = read_image(path)
    assert rgb.shape == (40, 60, 3) and rgb[20, 5, 2] > 200 and rgb[20, 5, 0] < 50
    assert read_image(path, "bgr")[20, 5, 0] > 200
    gray = tmp_path / "gray.png"
    cv2.imwrite(str(gray), np.full((7, 9), 80, np.uint8))
    out = read_image(gray)
    assert out.shape == (7, 9, 3) and (out == 80).all()


def test_read_image_errors_name_the_file_and_the_reason(tmp_path):
    with pytest.raises(ImageReadError, match="missing.jpg: file not found"):
        read_image(tmp_path / "missing.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty.jpg: empty file \(0 bytes\)"):
        read_image(tmp_path / "empty.jpg")
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(ImageReadError, match="text.jpg: not a decodable image"):
        read_image(tmp_path / "text.jpg")


def _write(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_broken_annotations_name_file_record_and_field(tmp_path):
    images = [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 80}]
    good = {
        "id": 7,
        "image_id": 1,
        "category_id": 1,
        "iscrowd": 0,
        "area": 50.0,
        "bbox": [1, 2, 30, 40],
    }
    good["keypoints"] = [10, 10, 2] * 17
    cases = {
        "short keypoints": (
            {**good, "keypoints": [1, 2, 2] * 16},
            r"annotations\[0\] \(id 7\): field 'keypoints': expected 51 numbers, got 48",
        ),
        "nan": ({**good, "bbox": [1, 2, float("nan"), 4]}, r"field 'bbox': contains NaN"),
        "negative box": ({**good, "bbox": [1, 2, -3, 4]}, "field 'bbox' has a negative size"),
        "missing field": ({k: v for k, v in good.items() if k != "bbox"}, "missing field 'bbox'"),
        "unknown image": ({**good, "image_id": 9}, "field 'image_id' 9 is not in 'images'"),
    }
    for name, (ann, message) in cases.items():
        path = _write(tmp_path / f"{name}.json", {"images": images, "annotations": [ann]})
        with pytest.raises(AnnotationError, match=message):
            load_coco_annotations(path, tmp_path, 17, ASPECT)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(AnnotationError, match="bad.json: not valid JSON"):
        load_coco_annotations(tmp_path / "bad.json", tmp_path, 17, ASPECT)
    ok = load_coco_annotations(
        _write(tmp_path / "ok.json", {"images": images, "annotations": [good]}),
        tmp_path,
        17,
        ASPECT,
    )
    np.testing.assert_allclose(ok.boxes, [[1, 2, 29, 39]])  # HRNet's clean_bbox (x2 = x + w - 1)


def test_keypoint_spec_validation_names_the_field(tmp_path):
    base = {"keypoints": ["a", "b", "c"], "flip_pairs": [["a", "b"]], "sigmas": [0.1, 0.1, 0.1]}
    spec = KeypointSpec.from_dict(base, "mine.yaml")
    assert spec.flip_indices.tolist() == [1, 0, 2] and spec.joint_weights == (1.0, 1.0, 1.0)
    bad = {
        "flip_pairs": (
            [["a", "z"]],
            r"mine.yaml: field 'flip_pairs\[0\]' names unknown keypoint 'z'",
        ),
        "sigmas": ([0.1, 0.1], r"field 'sigmas' must list one number per keypoint \(3\), got 2"),
        "joint_weights": ([1, -1, 1], r"field 'joint_weights\[1\]' is -1"),
        "skeleton": ([["a"]], r"field 'skeleton\[0\]' must be a pair"),
        "colour": ("red", "unknown field"),
    }
    for key, (value, message) in bad.items():
        with pytest.raises(KeypointSpecError, match=message):
            KeypointSpec.from_dict({**base, key: value}, "mine.yaml")
    with pytest.raises(KeypointSpecError, match="already in flip_pairs"):
        KeypointSpec.from_dict({**base, "flip_pairs": [["a", "b"], ["b", "c"]]}, "mine.yaml")
    with pytest.raises(KeypointSpecError, match="no built-in keypoint spec 'cocoo'"):
        load_keypoint_spec("cocoo")


def test_custom_dataset_with_its_own_keypoints_needs_no_code(tmp_path):
    """A 5-keypoint animal dataset in COCO format with its own YAML, through the config."""
    (tmp_path / "annotations").mkdir()
    (tmp_path / "images/train2017").mkdir(parents=True)
    (tmp_path / "images/val2017").mkdir(parents=True)
    (tmp_path / "mouse.yaml").write_text(
        "name: mouse\nkeypoints: [nose, left_ear, right_ear, tail_base, tail_tip]\n"
        "flip_pairs: [[left_ear, right_ear]]\nskeleton: [[nose, left_ear], [nose, right_ear], "
        "[tail_base, tail_tip]]\nupper_body: [nose, left_ear, right_ear]\nlower_body: [tail_base, tail_tip]\n"
    )
    rng = np.random.default_rng(0)
    for split in ("train2017", "val2017"):
        images, anns = [], []
        for i in range(3):
            img = rng.integers(0, 255, size=(60, 80, 3), dtype=np.uint8)
            cv2.imwrite(str(tmp_path / f"images/{split}/{i}.jpg"), img)
            images.append({"id": i, "file_name": f"{i}.jpg", "width": 80, "height": 60})
            kps = np.c_[rng.uniform(10, 70, 5), rng.uniform(10, 50, 5), np.full(5, 2)]
            anns.append(
                {
                    "id": i + 1,
                    "image_id": i,
                    "category_id": 3,
                    "iscrowd": 0,
                    "area": 900.0,
                    "bbox": [5, 5, 60, 45],
                    "keypoints": kps.ravel().tolist(),
                    "num_keypoints": 5,
                }
            )
        cats = [{"id": 3, "name": "mouse", "keypoints": ["a"] * 5, "skeleton": []}]
        _write(
            tmp_path / f"annotations/person_keypoints_{split}.json",
            {"images": images, "annotations": anns, "categories": cats},
        )
    cfg = compose_config(["data=custom", f"data.root={tmp_path}", "data.keypoints=mouse.yaml"])
    train = build_dataset(cfg.data, "train", (64, 48))
    val = build_dataset(cfg.data, "val", (64, 48))
    assert train.spec.num_keypoints == 5 and len(train) == 3 and len(val) == 3
    sample = train[0]
    assert sample["keypoints"].shape == (5, 2) and sample["image"].shape == (64, 48, 3)


TESTDEV = SHARED_DATA / "coco_testdev_fixture"


@pytest.mark.skipif(not TESTDEV.is_dir(), reason=f"shared test-dev fixture not found at {TESTDEV}")
def test_test_dev_split_reads_image_info_and_a_detection_file(tmp_path):
    info = json.loads((TESTDEV / "image_info_test-dev2017.TRUNCATED_10imgs.json").read_text())
    present = [i for i in info["images"] if (TESTDEV / "test2017" / i["file_name"]).is_file()]
    assert present, "the fixture's images are missing"
    dets = [
        {
            "image_id": i["id"],
            "category_id": 1,
            "score": s,
            "bbox": [10, 20, i["width"] / 3, i["height"] / 2],
        }
        for i in present
        for s in (0.9, 0.05)
    ]
    _write(tmp_path / "dets.json", dets)
    cfg = compose_config(
        [
            "data=coco",
            f"data.root={TESTDEV}",
            "data.test_dev.ann_file=image_info_test-dev2017.TRUNCATED_10imgs.json",
            "data.test_dev.image_dir=test2017",
            f"data.test_dev.det_file={tmp_path / 'dets.json'}",
            "data.test_dev.det_score_threshold=0.1",
        ]
    )
    ds = build_dataset(cfg.data, "test-dev", (256, 192))
    assert len(ds) == len(present) and ds.augment is None
    assert ds.instances.skipped["below score threshold"] == len(present)
    sample = ds[0]
    assert sample["image"].shape == (256, 192, 3) and sample["image"].float().std() > 10
    assert sample["image_id"] == present[0]["id"] and sample["score"] == pytest.approx(0.9)
    with pytest.raises(ValueError, match="unknown split 'test'"):
        build_dataset(cfg.data, "test", (256, 192))


@needs_coco_mini
@pytest.mark.parametrize(
    ("codec_name", "tolerance_hm_px"),
    [("udp", 0.05), ("dark", 0.05), ("udp_combined", 0.01), ("msra", 0.75)],
)
def test_ground_truth_survives_crop_encode_decode_and_back(codec_name, tolerance_hm_px):
    """Image keypoints -> crop -> codec targets -> decode -> image keypoints, on real val people."""
    from hydra.utils import instantiate

    cfg = compose_config(
        ["data=coco", f"data.root={COCO_MINI}", "data.val.use_gt_boxes=true", f"codec={codec_name}"]
    )
    codec = instantiate(cfg.codec)
    ds = build_dataset(cfg.data, "val", (256, 192), codec=codec)
    assert ds.udp == codec.use_udp
    batch = torch.utils.data.default_collate([ds[i] for i in range(len(ds))])
    keypoints, _ = codec.decode(batch["target"])
    image_kps = crop_to_image(
        keypoints.double().numpy(),
        batch["center"].numpy(),
        batch["scale"].numpy(),
        (256, 192),
        ds.udp,
    )
    truth = ds.instances.keypoints
    # Heatmap pixels -> image pixels: the crop's size over the heatmap's.
    px_per_hm = batch["scale"].numpy()[:, None, :] / np.array([48, 64])
    error = np.abs(image_kps - truth[..., :2]) / px_per_hm
    labelled = (truth[..., 2] > 0) & (batch["target_weight"].numpy() > 0)
    # Exact within 7 heatmap pixels of the border (3 sigma + 1: the whole Gaussian is on
    # the map); nearer the border the cut-off Gaussian biases the sub-pixel step a little.
    hm = codec.to_heatmap(batch["keypoints"]).numpy()
    interior = ((hm >= 7) & (hm <= np.array([47, 63]) - 7)).all(axis=-1) & labelled
    border = ((hm >= 1) & (hm <= np.array([47, 63]) - 1)).all(axis=-1) & labelled & ~interior
    assert interior.sum() > 300 and border.sum() > 20
    assert error[interior].max() < tolerance_hm_px
    assert error[border].max() < max(tolerance_hm_px, 0.5)
