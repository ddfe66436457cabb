"""DeepLabCut / lightning-pose import (psapose.data.convert) and the labels CSV reader/writer.

Every project here is written by the test itself: small PNGs and CSVs in the tools'
layouts (DeepLabCut's one- and three-column image index, multi-animal, lightning-pose).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from psapose.config import compose_config
from psapose.data.builder import build_dataset
from psapose.data.coco import AnnotationError, load_coco_annotations
from psapose.data.convert import convert, main, propose_flip_pairs, split_frames
from psapose.data.keypoint_spec import load_keypoint_spec
from psapose.data.labels_csv import LabelsError, read_labels_csv, read_labels_h5, write_pose_csv

W, H = 64, 48
NAN = None  # an unlabelled cell (pandas writes NaN as an empty cell)
DLC_PARTS = ["snout", "leftear", "rightear", "tailbase"]
# frame -> keypoints in DLC_PARTS order; None = unlabelled. Values with exact binary
# fractions and not, to check the round trip is exact either way.
DLC_V1 = {
    "img000.png": [(10.25, 20.5), (12.125, 18.0), NAN, (40.0, 30.75)],
    "img001.png": [(30.1, 22.2), (28.7, 19.3), (33.3, 19.9), (50.05, 25.55)],
    "img002.png": [NAN, NAN, NAN, NAN],  # no labels: left out
}
DLC_V2 = {
    "img010.png": [(5.0, 5.0), NAN, (7.5, 3.25), NAN],
    "img011.png": [(60.5, 44.0), (58.0, 40.0), (62.0, 41.0), (45.0, 30.0)],
}


def _png(path: Path, value: int = 90, size: tuple[int, int] = (W, H)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((size[1], size[0], 3), value, np.uint8))


def _cells(points: list) -> list[str]:
    out = []
    for p in points:
        out += ["", ""] if p is None else [repr(p[0]), repr(p[1])]
    return out


def _write_csv(path: Path, rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)


def _single_header(scorer: str, parts: list[str], n_index: int) -> list[list[str]]:
    pad = [""] * (n_index - 1)
    return [
        ["scorer", *pad, *[scorer] * (2 * len(parts))],
        ["bodyparts", *pad, *[p for p in parts for _ in "xy"]],
        ["coords", *pad, *["x", "y"] * len(parts)],
    ]


def _dlc_labels(path: Path, video: str, frames: dict, layout: str, scorer: str = "Alice"):
    """A CollectedData CSV: ``old`` one path column, ``new`` three index columns."""
    n_index = 1 if layout == "old" else 3
    rows = _single_header(scorer, DLC_PARTS, n_index)
    for name, points in frames.items():
        index = (
            [f"labeled-data/{video}/{name}"] if layout == "old" else ["labeled-data", video, name]
        )
        rows.append(index + _cells(points))
    _write_csv(path, rows)


def make_dlc_project(root: Path, with_images: bool = True) -> Path:
    project = root / "reach-Alice-2024-01-01"
    (project / "config.yaml").parent.mkdir(parents=True, exist_ok=True)
    (project / "config.yaml").write_text(
        "Task: reach\nscorer: Alice\n"
        f"bodyparts: [{', '.join(DLC_PARTS)}]\n"
        "skeleton:\n- [snout, leftear]\n- [snout, rightear]\n- [snout, tailbase]\n"
    )
    for video, frames, layout in (("v1", DLC_V1, "old"), ("v2", DLC_V2, "new")):
        folder = project / "labeled-data" / video
        _dlc_labels(folder / "CollectedData_Alice.csv", video, frames, layout)
        if with_images:
            for i, name in enumerate(frames):
                _png(folder / name, 40 + 30 * i)
    # check_labels' output folder: images, no labels; must be ignored.
    _png(project / "labeled-data" / "v1_labeled" / "img000_labeled.png")
    return project


def _expected_dlc() -> dict[str, list]:
    return {f"v1/{k}": v for k, v in DLC_V1.items()} | {f"v2/{k}": v for k, v in DLC_V2.items()}


def _load(out: Path, split: str, k: int):
    return load_coco_annotations(out / f"annotations/{split}.json", out / "images", k, 0.75)


def _check_round_trip(out: Path, expected: dict[str, list], k: int) -> int:
    """Every instance's keypoints equal the labels exactly; returns the instance count."""
    count = 0
    for split in ("train", "val"):
        inst = _load(out, split, k)
        for i in range(len(inst)):
            name = Path(inst.image_files[inst.image_index[i]]).relative_to(out / "images")
            points = expected[name.as_posix()]
            kps = inst.keypoints[i].astype(np.float64)
            for j, p in enumerate(points):
                if p is None:
                    assert kps[j].tolist() == [0.0, 0.0, 0.0]
                else:
                    # float32 in Instances; the JSON itself is checked exactly below
                    assert kps[j, 2] == 2
                    np.testing.assert_allclose(kps[j, :2], p, rtol=0, atol=1e-5)
            count += 1
    for split in ("train", "val"):
        data = json.loads((out / f"annotations/{split}.json").read_text())
        names = {img["id"]: img["file_name"] for img in data["images"]}
        for ann in data["annotations"]:
            points = expected[names[ann["image_id"]]]
            flat = []
            for p in points:
                flat += [0, 0, 0] if p is None else [p[0], p[1], 2]
            assert ann["keypoints"] == flat  # exact: floats survive CSV -> JSON unchanged
            assert ann["num_keypoints"] == sum(p is not None for p in points)
    return count


# ----------------------------------------------------------------------------- DeepLabCut


def test_dlc_project_converts_and_loads(tmp_path, capsys):
    project = make_dlc_project(tmp_path)
    out = tmp_path / "out"
    assert main(["dlc", str(project), str(out), "--val-fraction", "0.25", "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    spec = load_keypoint_spec(out / "keypoints.yaml")
    assert spec.keypoints == tuple(DLC_PARTS)
    assert spec.flip_pairs == ((1, 2),)  # leftear <-> rightear, glued names
    assert spec.skeleton == ((0, 1), (0, 2), (0, 3))  # from config.yaml, by name
    assert spec.sigmas == (0.05,) * 4
    assert spec.name == "reach"
    # 4 labelled frames (img002 has none), one instance each; 0.25 of 4 is 1 val frame.
    assert _check_round_trip(out, _expected_dlc(), 4) == 4
    assert len(_load(out, "train", 4)) == 3 and len(_load(out, "val", 4)) == 1
    assert "leftear <-> rightear" in printed
    assert "1 left out" in printed and "images: 4 with labels" in printed
    assert "annotations/train.json" in printed and "data=custom" in printed
    category = json.loads((out / "annotations/train.json").read_text())["categories"][0]
    assert category["keypoints"] == DLC_PARTS and category["skeleton"] == [[1, 2], [1, 3], [1, 4]]
    # images are linked by default, keeping the video folders; the check_labels folder is not
    link = out / "images/v1/img000.png"
    assert (
        link.is_symlink() and link.resolve() == (project / "labeled-data/v1/img000.png").resolve()
    )
    assert not (out / "images/v1_labeled").exists()
    assert not (out / "images/v1/img002.png").exists()


def test_dlc_boxes_padding_clamp_and_frame(tmp_path, capsys):
    project = make_dlc_project(tmp_path)

    def boxes(*args: str) -> dict[str, list]:
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        assert main(["dlc", str(project), str(out), "--val-fraction", "0", *args]) == 0
        assert "the val split is empty" in capsys.readouterr().out
        assert json.loads((out / "annotations/val.json").read_text())["images"] == []
        data = json.loads((out / "annotations/train.json").read_text())
        names = {img["id"]: img["file_name"] for img in data["images"]}
        return {names[a["image_id"]]: (a["bbox"], a["area"]) for a in data["annotations"]}

    # img000: x 10.25..40.0, y 18.0..30.75 (rightear unlabelled)
    padded = boxes("--box-padding", "5")
    assert padded["v1/img000.png"] == ([5.25, 13.0, 39.75, 22.75], 39.75 * 22.75)
    clamped = boxes()  # 20 px: x1 = -9.75 -> 0, y2 = 50.75 -> 48
    assert clamped["v1/img000.png"][0] == [0.0, 0.0, 60.0, 48.0]
    # img011 reaches x = 62 + 20 > 64: clamped to the width
    assert clamped["v2/img011.png"][0] == [25.0, 10.0, 39.0, 38.0]
    frame = boxes("--box", "frame")
    assert {tuple(v[0]) for v in frame.values()} == {(0.0, 0.0, 64.0, 48.0)}


def test_dlc_copy_writes_real_files(tmp_path):
    project = make_dlc_project(tmp_path)
    out = tmp_path / "out"
    summary = convert("dlc", project, out, copy=True)
    copied = out / "images/v2/img011.png"
    assert not copied.is_symlink()
    assert copied.read_bytes() == (project / "labeled-data/v2/img011.png").read_bytes()
    assert summary["images_placed"] == "copied"
    # a second run over the same OUT replaces its own files
    convert("dlc", project, out)
    assert copied.is_symlink()


def test_dlc_split_by_video(tmp_path):
    project = make_dlc_project(tmp_path)
    out = tmp_path / "out"
    summary = convert("dlc", project, out, split_by="video", val_videos=["v2"])
    val = json.loads((out / "annotations/val.json").read_text())
    train = json.loads((out / "annotations/train.json").read_text())
    assert sorted(i["file_name"] for i in val["images"]) == ["v2/img010.png", "v2/img011.png"]
    assert sorted(i["file_name"] for i in train["images"]) == ["v1/img000.png", "v1/img001.png"]
    assert summary["split"]["val"]["videos"] == ["v2"]
    # image ids are unique across the two files
    assert not {i["id"] for i in val["images"]} & {i["id"] for i in train["images"]}
    # seeded by fraction: a whole video, never both
    for seed in range(4):
        s = convert("dlc", project, tmp_path / f"s{seed}", split_by="video", seed=seed)
        assert len(s["split"]["val"]["videos"]) == 1 and len(s["split"]["train"]["videos"]) == 1
    with pytest.raises(LabelsError, match="every video"):
        convert("dlc", project, tmp_path / "x", split_by="video", val_videos=["v1", "v2"])
    with pytest.raises(LabelsError, match="no labelled frames from v9"):
        convert("dlc", project, tmp_path / "x", split_by="video", val_videos=["v9"])


def test_split_frames_by_fraction_and_video():
    videos = ["a"] * 6 + ["b"] * 3 + ["c"] * 1
    split = split_frames(videos, 0.2, seed=5)
    assert split.sum() == 2
    np.testing.assert_array_equal(split, split_frames(videos, 0.2, seed=5))  # seeded
    assert len({split_frames(videos, 0.2, seed=s).tobytes() for s in range(8)}) > 1
    assert split_frames(videos, 0.9, seed=0).sum() == 9  # train keeps one frame
    assert split_frames(videos, 0.01, seed=0).sum() == 1  # a positive fraction gives >= 1
    assert split_frames(videos, 0.0).sum() == 0
    assert split_frames(["a"], 0.5).sum() == 0  # one frame: it trains
    for seed in range(6):
        by_video = split_frames(videos, 0.3, seed=seed, by="video")
        val_videos = {v for v, s in zip(videos, by_video, strict=True) if s}
        # whole videos only, at least 30% of the frames unless that would take every video
        assert all(s == (v in val_videos) for v, s in zip(videos, by_video, strict=True))
        assert 1 <= len(val_videos) <= 2 and by_video.sum() >= 3
    assert split_frames(videos, 0.95, seed=0, by="video").sum() < len(videos)
    with pytest.raises(LabelsError, match="two videos or more"):
        split_frames(["a", "a"], 0.5, by="video")
    with pytest.raises(ValueError, match="val-fraction"):
        split_frames(videos, 1.0)


def test_converted_dataset_builds_from_the_custom_config(tmp_path):
    """The layout is what data=custom reads: the dataset builds and gives a crop."""
    out = tmp_path / "out"
    convert("dlc", make_dlc_project(tmp_path), out, val_fraction=0.4)
    cfg = compose_config(
        [
            "data=custom",
            f"data.root={out}",
            "data.keypoints=keypoints.yaml",
            "data.train.ann_file=annotations/train.json",
            "data.train.image_dir=images",
            "data.val.ann_file=annotations/val.json",
            "data.val.image_dir=images",
        ]
    )
    train = build_dataset(cfg.data, "train", (64, 48), augment=True)
    val = build_dataset(cfg.data, "val", (64, 48), augment=False)
    assert (len(train), len(val)) == (2, 2)
    sample = val[0]
    assert sample["valid"] and tuple(sample["image"].shape) == (64, 48, 3)


def test_multi_animal_dlc(tmp_path, capsys):
    project = tmp_path / "ma"
    parts = ["nose", "tail"]
    individuals = ["mouse1", "mouse2"]
    header = [
        ["scorer", "", "", *["Bob"] * 10],
        ["individuals", "", "", *[i for i in individuals for _ in range(4)], "single", "single"],
        ["bodyparts", "", "", *[p for _ in individuals for p in parts for _ in "xy"], "corner", "corner"],
        ["coords", "", "", *["x", "y"] * 5],
    ]  # fmt: skip
    rows = [
        # both mice, and the unique 'corner'
        ["labeled-data", "s1", "f0.png", *_cells([(1.5, 2.5), (20.0, 30.0), (40.0, 10.0), (50.0, 20.0), (0.0, 0.0)])],
        # mouse2 absent
        ["labeled-data", "s1", "f1.png", *_cells([(5.0, 6.0), NAN, NAN, NAN, (0.0, 0.0)])],
    ]  # fmt: skip
    _write_csv(project / "labeled-data/s1/CollectedData_Bob.csv", header + rows)
    for name in ("f0.png", "f1.png"):
        _png(project / "labeled-data/s1" / name)
    out = tmp_path / "out"
    assert main(["dlc", str(project), str(out), "--val-fraction", "0"]) == 0
    printed = capsys.readouterr().out
    data = json.loads((out / "annotations/train.json").read_text())
    assert data["categories"][0]["keypoints"] == parts
    kps = sorted(a["keypoints"] for a in data["annotations"])
    assert kps == [
        [1.5, 2.5, 2, 20.0, 30.0, 2],
        [5.0, 6.0, 2, 0, 0, 0],
        [40.0, 10.0, 2, 50.0, 20.0, 2],
    ]
    assert (
        "multi-animal" in printed and "unique bodyparts left out" in printed and "corner" in printed
    )
    with pytest.raises(LabelsError, match="same box"):
        convert("dlc", project, tmp_path / "o2", box="frame")


def test_dlc_h5_needs_pandas_and_tables(tmp_path):
    if importlib.util.find_spec("pandas") and importlib.util.find_spec("tables"):
        pytest.skip("pandas and PyTables are installed: the .h5 path is used, not refused")
    h5 = tmp_path / "p/labeled-data/v1/CollectedData_Alice.h5"
    h5.parent.mkdir(parents=True)
    h5.write_bytes(b"\x89HDF\r\n\x1a\n")
    with pytest.raises(LabelsError, match=r"needs pandas and PyTables .*pip install pandas tables"):
        read_labels_h5(h5)
    # a project with only the .h5 says the same, naming the file
    with pytest.raises(LabelsError, match=r"CollectedData_Alice\.h5: reading DeepLabCut \.h5"):
        convert("dlc", tmp_path / "p", tmp_path / "out")


def test_dlc_h5_reads_like_the_csv(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("tables")
    columns = pd.MultiIndex.from_product(
        [["Alice"], DLC_PARTS, ["x", "y"]], names=["scorer", "bodyparts", "coords"]
    )
    index = pd.MultiIndex.from_tuples([("labeled-data", "v1", n) for n in DLC_V1])
    values = [[math.nan if c == "" else float(c) for c in _cells(p)] for p in DLC_V1.values()]
    h5 = tmp_path / "CollectedData_Alice.h5"
    pd.DataFrame(values, index=index, columns=columns).to_hdf(h5, key="keypoints")
    csv_path = tmp_path / "labeled-data/v1/CollectedData_Alice.csv"
    _dlc_labels(csv_path, "v1", DLC_V1, "new")
    a, b = read_labels_h5(h5), read_labels_csv(csv_path)
    assert a.index == b.index and a.bodyparts == b.bodyparts
    np.testing.assert_array_equal(a.xy, b.xy)


# ----------------------------------------------------------------------------- lightning-pose

LP_PARTS = ["nose", "paw_left", "paw_right", "L_ear", "R_ear"]
LP_FRAMES = {
    "labeled-data/sessA/img0.png": [(3.0, 4.0), (10.5, 11.5), (20.25, 21.75), NAN, (8.0, 2.0)],
    "labeled-data/sessA/img1.png": [(13.0, 14.0), NAN, NAN, NAN, NAN],
    "labeled-data/sessB/img0.png": [(33.0, 34.0), (40.5, 41.5), NAN, (30.0, 30.0), (36.0, 30.0)],
    "labeled-data/sessB/img1.png": [NAN, NAN, NAN, NAN, NAN],
}


def make_lp_project(root: Path, gray: bool = True) -> Path:
    project = root / "lp"
    rows = _single_header("rick", LP_PARTS, 1)
    rows += [[path, *_cells(points)] for path, points in LP_FRAMES.items()]
    _write_csv(project / "CollectedData.csv", rows)
    for path in LP_FRAMES:
        file = project / path
        file.parent.mkdir(parents=True, exist_ok=True)
        if gray:  # lightning-pose's mirror-mouse frames are grayscale
            assert cv2.imwrite(str(file), np.full((H, W), 128, np.uint8))
        else:
            _png(file)
    return project


@pytest.mark.parametrize("given", ["folder", "csv"])
def test_lightning_pose_converts(tmp_path, given, capsys):
    project = make_lp_project(tmp_path)
    src = project if given == "folder" else project / "CollectedData.csv"
    out = tmp_path / "out"
    assert main(["lightning-pose", str(src), str(out), "--split-by", "video", "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    spec = load_keypoint_spec(out / "keypoints.yaml")
    assert spec.keypoints == tuple(LP_PARTS)
    assert spec.flip_pairs == ((1, 2), (3, 4))
    assert spec.skeleton == ()
    expected = {p.removeprefix("labeled-data/"): v for p, v in LP_FRAMES.items()}
    assert _check_round_trip(out, expected, 5) == 3
    videos = {
        s: {Path(i["file_name"]).parent.name for i in json.loads((out / f"annotations/{s}.json").read_text())["images"]}
        for s in ("train", "val")
    }  # fmt: skip
    assert videos["train"] | videos["val"] == {"sessA", "sessB"}
    assert not videos["train"] & videos["val"] and videos["val"]
    assert "paw_left <-> paw_right" in printed and "L_ear <-> R_ear" in printed
    images = json.loads((out / "annotations/train.json").read_text())["images"]
    assert all((i["width"], i["height"]) == (W, H) for i in images)


def test_lightning_pose_missing_csv_is_named(tmp_path):
    (tmp_path / "lp").mkdir()
    (tmp_path / "lp/labels.csv").write_text("")
    with pytest.raises(LabelsError, match=r"no CollectedData\.csv.*labels\.csv"):
        convert("lightning-pose", tmp_path / "lp", tmp_path / "out")


# ----------------------------------------------------------------------------- flip pairs


def test_flip_pairs_from_names():
    names = [
        "nose", "left_ear", "right_ear", "L_paw", "R_paw", "hip_r", "hip_l", "leftEye",
        "rightEye", "FrontLeftFoot", "FrontRightFoot", "leftear", "rightear", "earLeft",
        "earRight", "Knee.L", "Knee.R", "tail_left_only", "lip", "rip", "LEFT-WING", "RIGHT-WING",
    ]  # fmt: skip
    pairs, unmatched = propose_flip_pairs(names)
    assert pairs == [
        ("left_ear", "right_ear"),
        ("L_paw", "R_paw"),
        ("hip_l", "hip_r"),  # the left one first, whichever comes first in the list
        ("leftEye", "rightEye"),
        ("FrontLeftFoot", "FrontRightFoot"),
        ("leftear", "rightear"),
        ("earLeft", "earRight"),
        ("Knee.L", "Knee.R"),
        ("LEFT-WING", "RIGHT-WING"),
    ]
    assert unmatched == ["tail_left_only"]
    assert propose_flip_pairs(["nose", "tail", "spine1"]) == ([], [])


# ----------------------------------------------------------------------------- bad input


def _bad_project(tmp_path: Path, rows: list[list[str]]) -> Path:
    project = tmp_path / "bad"
    _write_csv(project / "labeled-data/v1/CollectedData_Alice.csv", rows)
    _png(project / "labeled-data/v1/img000.png")
    return project


GOOD_ROW = ["labeled-data/v1/img000.png", *_cells([(1.0, 2.0), NAN, NAN, (3.0, 4.0)])]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [["scorer_", "A"], *_single_header("A", DLC_PARTS, 1)[1:], GOOD_ROW],
            r"CollectedData_Alice\.csv: line 1, column 1: expected 'scorer'",
        ),
        (
            [*_single_header("A", DLC_PARTS, 1)[::2], GOOD_ROW],  # no bodyparts row
            r"line 2, column 1: expected 'bodyparts', got 'coords'",
        ),
        (
            [
                *_single_header("A", DLC_PARTS, 1)[:2],
                ["coords", "x", "y", "x", "y", "x", "z", "x", "y"],
                GOOD_ROW,
            ],
            r"line 3, column 7: expected x, y or likelihood, got 'z'",
        ),
        (
            [*_single_header("A", DLC_PARTS, 1), [*GOOD_ROW[:2], "abc", *GOOD_ROW[3:]]],
            r"CollectedData_Alice\.csv: line 4, column 3 \(snout y\): 'abc' is not a finite number",
        ),
        (
            [*_single_header("A", DLC_PARTS, 1), GOOD_ROW[:-1]],
            r"line 4: 8 columns, the header has 9",
        ),
        (
            [*_single_header("A", DLC_PARTS, 1), ["../elsewhere/img.png", *GOOD_ROW[1:]]],
            r"line 4, column 1 \(image path\): '../elsewhere/img.png' must be a path inside",
        ),
    ],
    ids=[
        "wrong-first-header",
        "missing-header-row",
        "bad-coord",
        "non-numeric",
        "short-row",
        "outside",
    ],
)
def test_bad_labels_give_one_clear_error(tmp_path, capsys, rows, message):
    project = _bad_project(tmp_path, rows)
    with pytest.raises(LabelsError, match=message) as info:
        convert("dlc", project, tmp_path / "out")
    assert isinstance(info.value, AnnotationError)  # the tools' exit-2 class
    assert main(["dlc", str(project), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "CollectedData_Alice.csv" in err
    assert not (tmp_path / "out/annotations").exists()  # nothing half-written


def test_missing_image_is_named(tmp_path):
    project = make_dlc_project(tmp_path)
    (project / "labeled-data/v2/img011.png").unlink()
    with pytest.raises(
        LabelsError,
        match=r"v2/CollectedData_Alice\.csv: line 5, column 1 \(image path\): "
        r"'labeled-data/v2/img011\.png': file not found",
    ):
        convert("dlc", project, tmp_path / "out")
    # an unlabelled frame's image is never needed
    (project / "labeled-data/v1/img002.png").unlink()
    _png(project / "labeled-data/v2/img011.png")
    assert convert("dlc", project, tmp_path / "out")["images"] == 4


def test_unknown_skeleton_name_and_no_labels(tmp_path):
    project = make_dlc_project(tmp_path)
    (project / "config.yaml").write_text("skeleton:\n- [snout, whisker]\n")
    with pytest.raises(LabelsError, match=r"config\.yaml: field 'skeleton\[0\]' names 'whisker'"):
        convert("dlc", project, tmp_path / "out")
    rows = [*_single_header("A", DLC_PARTS, 1), ["labeled-data/v1/img000.png", *[""] * 8]]
    with pytest.raises(LabelsError, match="no labelled keypoint in any of 1 rows"):
        convert("dlc", _bad_project(tmp_path, rows), tmp_path / "out")


# ----------------------------------------------------------------------------- CSV writer


def test_pose_csv_writer_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    parts = ["nose", "left_ear", "right_ear"]
    kps = rng.uniform(0, 640, (4, 3, 2))
    scores = rng.uniform(0, 1, (4, 3))
    kps[2] = np.nan  # a frame with no animal found
    scores[2] = np.nan
    path = write_pose_csv(tmp_path / "clip.csv", kps, scores, parts, scorer="psapose_w32")
    lines = path.read_text().splitlines()
    assert lines[0] == "scorer," + ",".join(["psapose_w32"] * 9)
    assert (
        lines[1]
        == "bodyparts,nose,nose,nose,left_ear,left_ear,left_ear,right_ear,right_ear,right_ear"
    )
    assert lines[2] == "coords," + ",".join(["x", "y", "likelihood"] * 3)
    assert lines[5] == "2," + "," * 8 and len(lines) == 7
    table = read_labels_csv(path)
    assert table.bodyparts == tuple(parts) and table.scorer == "psapose_w32"
    assert table.index == ["0", "1", "2", "3"]
    np.testing.assert_array_equal(table.xy[:, 0], kps)  # exact, NaN included
    np.testing.assert_array_equal(table.likelihood[:, 0], scores)
    with pytest.raises(ValueError, match=r"scores must be \(4, 3\)"):
        write_pose_csv(tmp_path / "x.csv", kps, scores[:, :2], parts)
