"""The synthetic COCO-keypoint dataset: layout, determinism, COCO validity and true visibility."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from psapose.data import synthetic
from psapose.data.synthetic import (
    DETECTION_FILE,
    SPLITS,
    generate_synthetic_coco,
    image_id_for,
    render_synthetic_image,
)

SEED = 3
SMALL = {"images": 6, "val_images": 2, "seed": SEED}


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _quiet_coco(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synthetic") / "out"
    return root, generate_synthetic_coco(root, **SMALL)


@pytest.fixture(scope="module")
def rendered() -> list:
    """A moderately sized set of rendered images (not written), for label statistics."""
    return [render_synthetic_image(SEED, "train2017", i) for i in range(40)]


def test_layout_and_summary(dataset):
    root, summary = dataset
    for split, n in zip(SPLITS, (6, 2), strict=True):
        assert (root / "annotations" / f"person_keypoints_{split}.json").is_file()
        assert len(list((root / "images" / split).glob("*.jpg"))) == n
        assert summary["splits"][split]["images"] == n
    assert (root / "person_detection_results" / DETECTION_FILE).is_file()
    assert summary["images"] == 8 and summary["people"] > 0
    assert summary["keypoints_labelled"] > 0 and 0 <= summary["fraction_occluded"] < 1


def test_same_seed_gives_identical_bytes_and_another_seed_other_images(dataset, tmp_path):
    root, _ = dataset
    again = tmp_path / "again"
    generate_synthetic_coco(again, **SMALL)
    assert _hashes(root) == _hashes(again)

    other = tmp_path / "other"
    generate_synthetic_coco(other, **{**SMALL, "seed": SEED + 1})
    first, second = _hashes(root), _hashes(other)
    jpgs = [k for k in first if k.endswith(".jpg")]
    assert jpgs and all(first[k] != second[k] for k in jpgs)


def test_val_images_do_not_depend_on_the_training_count(dataset, tmp_path):
    root, _ = dataset
    more = tmp_path / "more"
    generate_synthetic_coco(more, images=2, val_images=2, seed=SEED)
    a, b = _hashes(root), _hashes(more)
    val = [k for k in a if k.startswith("images/val2017/")]
    assert val and all(a[k] == b[k] for k in val)
    assert a["images/train2017/000000000001.jpg"] == b["images/train2017/000000000001.jpg"]


def test_annotations_are_valid_coco(dataset):
    root, _ = dataset
    ids: set[int] = set()
    for split in SPLITS:
        ann_file = root / "annotations" / f"person_keypoints_{split}.json"
        data = json.loads(ann_file.read_text())
        assert list(data) == ["info", "licenses", "images", "annotations", "categories"]
        coco = _quiet_coco(ann_file)
        cat = coco.loadCats([1])[0]
        assert cat["name"] == "person" and len(cat["keypoints"]) == 17
        assert len(cat["skeleton"]) == 19
        images = {img["id"]: img for img in data["images"]}
        assert not ids & set(images), "image ids must be unique across the splits"
        ids |= set(images)
        for img in images.values():
            decoded = cv2.imread(str(root / "images" / split / img["file_name"]))
            assert decoded is not None and decoded.shape == (img["height"], img["width"], 3)
            assert img["file_name"] == f"{img['id']:012d}.jpg"
        assert data["annotations"], split
        ann_ids = [a["id"] for a in data["annotations"]]
        assert len(set(ann_ids)) == len(ann_ids)
        for ann in data["annotations"]:
            img = images[ann["image_id"]]
            W, H = img["width"], img["height"]
            assert ann["category_id"] == 1 and ann["iscrowd"] == 0
            kp = np.asarray(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
            assert kp.shape == (17, 3)
            v = kp[:, 2]
            assert set(np.unique(v)) <= {0, 1, 2}
            assert (kp[v == 0, :2] == 0).all()
            assert ann["num_keypoints"] == int((v > 0).sum())
            lab = kp[v > 0]
            assert (lab[:, 0] >= 0).all() and (lab[:, 0] <= W - 1).all()
            assert (lab[:, 1] >= 0).all() and (lab[:, 1] <= H - 1).all()
            x, y, w, h = ann["bbox"]
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= W and y + h <= H
            assert ann["area"] > 0 and ann["area"] <= w * h
            assert ann["segmentation"] and all(len(p) >= 6 for p in ann["segmentation"])
            mask = coco.annToMask(ann)
            assert mask.shape == (H, W) and mask.sum() > 0


def test_detections_load_and_look_like_a_detector(dataset):
    root, _ = dataset
    coco = _quiet_coco(root / "annotations" / "person_keypoints_val2017.json")
    det_file = root / "person_detection_results" / DETECTION_FILE
    dets = json.loads(det_file.read_text())
    assert dets
    with contextlib.redirect_stdout(io.StringIO()):
        res = coco.loadRes(str(det_file))
    assert len(res.getAnnIds()) == len(dets)
    sizes = {i["id"]: (i["width"], i["height"]) for i in coco.dataset["images"]}
    for d in dets:
        assert list(d) == ["image_id", "category_id", "bbox", "score"]
        assert d["image_id"] in sizes and d["category_id"] == 1 and 0 < d["score"] <= 1
        W, H = sizes[d["image_id"]]
        x, y, w, h = d["bbox"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= W + 1e-6 and y + h <= H + 1e-6


def test_detections_statistics_on_a_larger_val_set():
    H, W = synthetic.DEFAULT_IMAGE_SIZE
    gts, dets = 0, []
    for i in range(40):
        r = render_synthetic_image(SEED, "val2017", i)
        gts += len(r.annotations)
        dets += synthetic.writer._detections(SEED, i, r.image_id, r.annotations, H, W)
    scores = np.array([d["score"] for d in dets])
    assert 0.6 < np.mean(scores >= 0.6) < 1.0  # mostly confident, some low-score ones
    assert (scores >= 0.6).sum() < gts  # a few people missed


def test_regenerated_image_matches_the_files(dataset):
    root, _ = dataset
    for split in SPLITS:
        data = json.loads((root / "annotations" / f"person_keypoints_{split}.json").read_text())
        by_image: dict[int, list] = {}
        for ann in data["annotations"]:
            by_image.setdefault(ann["image_id"], []).append(ann)
        for i, img in enumerate(data["images"]):
            r = render_synthetic_image(SEED, split, i)
            assert r.image_id == img["id"] == image_id_for(split, i)
            assert json.dumps(r.annotations) == json.dumps(by_image.get(img["id"], []))
            decoded = cv2.imread(str(root / "images" / split / img["file_name"]))
            # JPEG at quality 90: close to the rendered pixels, not equal.
            assert np.abs(decoded.astype(np.float64) - r.image).mean() < 6


def test_visibility_flags_are_true(rendered):
    occluded_by_others = 0
    multi = 0
    v1 = 0
    for r in rendered:
        H, W = r.image.shape[:2]
        multi += len(r.annotations) > 1
        for ann, mask in zip(r.annotations, r.masks, strict=True):
            kp = np.asarray(ann["keypoints"], dtype=np.float64).reshape(17, 3)
            # The annotation's box and area are its visible pixels.
            ys, xs = np.nonzero(mask)
            assert ann["area"] == mask.sum()
            assert ann["bbox"] == [
                xs.min(),
                ys.min(),
                xs.max() - xs.min() + 1,
                ys.max() - ys.min() + 1,
            ]
            for x, y, v in kp:
                if v == 0:
                    continue
                xi, yi = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
                if v == 2:  # the pixel shows this person
                    assert mask[yi, xi], (r.image_id, ann["id"], x, y)
                else:
                    v1 += 1
                    occluded_by_others += not mask[yi, xi]
    assert multi >= 5, "several images should hold more than one person"
    assert v1 > 0 and occluded_by_others > 0, "occluders and other people must hide keypoints"


def test_most_people_carry_many_keypoints(rendered):
    counts = np.array([a["num_keypoints"] for r in rendered for a in r.annotations])
    assert len(counts) >= 40
    assert np.mean(counts >= 10) > 0.7
    kp = np.array([a["keypoints"] for r in rendered for a in r.annotations]).reshape(-1, 17, 3)
    assert (kp[..., 2] == 0).any(), "some people should be cut by the image border"


def test_part_map_marks_people_and_occluders(rendered):
    ids = np.concatenate([r.part_map.ravel() for r in rendered])
    assert (ids == -1).any() and (ids >= 0).any()
    assert (ids >= synthetic.scene._OCCLUDER_ID).any()


def test_left_right_bands_mirror_under_a_horizontal_flip():
    """Left-limb bands, mirrored, are exactly right-limb bands: the cue survives flip augmentation."""
    H, W = 64, 96
    a, b = np.array([20.3, 12.6]), np.array([70.1, 48.4])
    mirror = np.array([W - 1, 0.0])

    def draw(p, q, side):
        img = np.zeros((H, W, 3), np.uint8)
        synthetic.raster._draw_bands(img, p, q, 9.0, 7.0, side, np.array([255.0, 255.0, 255.0]))
        return img.astype(np.float64)

    left_flipped = draw(a, b, 1)[:, ::-1]
    mirrored = [mirror + [-1, 1] * p for p in (a, b)]
    as_right = draw(*mirrored, -1)
    as_left = draw(*mirrored, 1)
    assert np.abs(left_flipped - as_right).mean() < 0.1 * np.abs(left_flipped - as_left).mean()
    # The slant does not depend on which end the segment starts from.
    assert (
        np.abs(draw(a, b, 1) - draw(b, a, 1)).mean()
        < 0.1 * np.abs(draw(a, b, 1) - draw(a, b, -1)).mean()
    )


def test_non_empty_directory_needs_force(dataset, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="force"):
        generate_synthetic_coco(out, images=1, val_images=1)
    generate_synthetic_coco(out, images=2, val_images=1, force=True)
    generate_synthetic_coco(out, images=1, val_images=1, force=True)
    assert (out / "keep.txt").read_text() == "mine"
    assert len(list((out / "images" / "train2017").glob("*.jpg"))) == 1


def test_cli(tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "psapose.data.synthetic", str(out), "--images", "3", "--seed", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    assert "\n" not in line and "3 train + 1 val images" in line and "keypoints labelled" in line
    assert len(list((out / "images" / "train2017").glob("*.jpg"))) == 3

    refused = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "--force" in refused.stderr

    forced = subprocess.run(
        [*cmd, "--force", "--image-size", "96", "128"], capture_output=True, text=True, timeout=120
    )
    assert forced.returncode == 0, forced.stderr
    img = json.loads((out / "annotations" / "person_keypoints_val2017.json").read_text())["images"]
    assert (img[0]["height"], img[0]["width"]) == (96, 128)

    helped = subprocess.run(
        [sys.executable, "-m", "psapose.data.synthetic", "--help"], capture_output=True, text=True
    )
    assert helped.returncode == 0 and "--image-size" in helped.stdout and "--force" in helped.stdout


def test_difficulty_presets_differ_and_bad_names_are_refused(tmp_path):
    from psapose.data.synthetic import DIFFICULTIES, render_synthetic_image

    people = {
        name: [
            render_synthetic_image(0, "train2017", i, (128, 160), name).people for i in range(40)
        ]
        for name in DIFFICULTIES
    }
    assert max(people["easy"]) <= 3 and max(people["standard"]) == 4
    assert np.mean(people["easy"]) < np.mean(people["standard"])
    with pytest.raises(ValueError, match="difficulty must be one of"):
        generate_synthetic_coco(tmp_path / "x", images=1, difficulty="hardest")
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())
