"""Convert DeepLabCut projects and lightning-pose labels to a psapose (COCO-format) dataset.

    python -m psapose.data.convert dlc ~/projects/reach-Alice-2024-01-01 data/reach
    python -m psapose.data.convert lightning-pose ~/lp/mirror-mouse data/mirror-mouse
    python -m psapose.data.convert dlc SRC OUT --split-by video --seed 1 --copy

Input:

* ``dlc``: a DeepLabCut project folder: ``labeled-data/<video>/CollectedData_<scorer>.csv``
  (or its ``.h5`` twin where pandas and PyTables are installed) and, when present,
  ``config.yaml`` for the skeleton. Single- and multi-animal projects (one instance per
  individual; the unique bodyparts of multi-animal projects are left out and reported).
* ``lightning-pose``: a labels CSV (``SRC/CollectedData.csv``, or the CSV itself) whose
  first column is the image path relative to the project folder (``--image-root``).

Output (``OUT``), the layout ``tools/train.py data=custom data.root=OUT`` reads::

    OUT/annotations/train.json    COCO keypoints: one category with the names and skeleton
    OUT/annotations/val.json
    OUT/images/<video>/<frame>    symlinks to the project's images (copies with --copy)
    OUT/keypoints.yaml            the keypoint spec: names, proposed flip pairs, sigmas, skeleton

Labelled keypoints get visibility 2, unlabelled ones ``0, 0, 0`` (COCO's convention);
coordinates are copied unchanged (DeepLabCut, lightning-pose and COCO all put pixel
centres on integer coordinates). A frame with no labelled keypoint is left out and
counted. Each animal's box is its labelled keypoints' extent grown by ``--box-padding``
pixels on every side (DeepLabCut 3's ``bbox_margin``, 20 px) and clamped to the image,
or the whole frame with ``--box frame``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import yaml

from psapose.data.keypoint_spec import KeypointSpec, KeypointSpecError, load_keypoint_spec
from psapose.data.labels_csv import LabelsError, LabelTable, read_labels
from psapose.data.transforms import ImageReadError, read_image

__all__ = [
    "ANN_FILES",
    "DEFAULT_SIGMA",
    "IMAGE_DIR",
    "SPEC_FILE",
    "Frame",
    "LabelledProject",
    "convert",
    "main",
    "propose_flip_pairs",
    "read_dlc_project",
    "read_lightning_pose",
    "split_frames",
]

# The output layout; configs/data/custom.yaml's defaults name the same files.
ANN_FILES = {"train": "annotations/train.json", "val": "annotations/val.json"}
IMAGE_DIR = "images"
SPEC_FILE = "keypoints.yaml"
# OKS sigma written for every keypoint. Without repeated labelling of the same frames
# there is no per-keypoint spread to measure (COCO's sigmas came from that), so every
# keypoint gets one value: 0.05 is psapose's KeypointSpec default and sits within COCO's
# range (0.025 eyes .. 0.107 hips). With the box area as OKS scale s^2, a keypoint then
# scores OKS 0.5 at an error of 0.1 * sqrt(2 ln 2) * s, about 12% of sqrt(box area).
DEFAULT_SIGMA = 0.05
DEFAULT_BOX_PADDING = 20.0  # pixels: DeepLabCut 3's data.bbox_margin default
DLC_LABELS_DIR = "labeled-data"


@dataclass
class Frame:
    """One labelled image: where its file is and its animals' keypoints."""

    path: str  # as written in the labels file, '/'-separated, relative to the project
    source: Path  # the image file on disk
    video: str  # the split-by-video group
    keypoints: np.ndarray  # (I, K, 2) image pixels, NaN where unlabelled
    where: str  # "labels file: line N", for messages
    individuals: tuple[str, ...] = ("",)

    @property
    def labelled(self) -> np.ndarray:
        """(I, K) True where the keypoint is labelled."""
        return ~np.isnan(self.keypoints).any(axis=-1)


@dataclass
class LabelledProject:
    """A project read into one keypoint list and its frames (before any image is opened)."""

    kind: str  # "DeepLabCut" or "lightning-pose"
    source: Path
    name: str
    keypoints: tuple[str, ...]
    skeleton: list[tuple[str, str]]
    frames: list[Frame]
    label_files: list[Path]
    multi_animal: bool = False
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- reading


def _check_relative(path: str, where: str) -> PurePosixPath:
    rel = PurePosixPath(path)
    if rel.is_absolute() or re.match(r"^[A-Za-z]:", path) or ".." in rel.parts:
        raise LabelsError(
            f"{where}, column 1 (image path): {path!r} must be a path inside the project "
            "folder (relative, without '..')"
        )
    return rel


def _reorder(table: LabelTable, names: tuple[str, ...], first: Path) -> np.ndarray:
    """The table's (R, I, K, 2) keypoints in the order of ``names`` (the first file's)."""
    if table.bodyparts == names:
        return table.xy
    if set(table.bodyparts) != set(names):
        missing = [n for n in names if n not in table.bodyparts]
        extra = [n for n in table.bodyparts if n not in names]
        raise LabelsError(
            f"{table.source}: bodyparts differ from {first}'s"
            + (f"; missing {', '.join(missing)}" if missing else "")
            + (f"; extra {', '.join(extra)}" if extra else "")
        )
    order = [table.bodyparts.index(n) for n in names]
    return table.xy[:, :, order]


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise LabelsError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LabelsError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return data


def _skeleton(raw: Any, names: tuple[str, ...], source: str) -> list[tuple[str, str]]:
    """DeepLabCut's ``skeleton`` (pairs of bodypart names), checked against the keypoints."""
    if raw in (None, "", []):
        return []
    if not isinstance(raw, list):
        raise LabelsError(f"{source}: field 'skeleton' must be a list of bodypart pairs")
    out = []
    for i, pair in enumerate(raw):
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise LabelsError(f"{source}: field 'skeleton[{i}]' must be a pair, got {pair!r}")
        for name in pair:
            if name not in names:
                raise LabelsError(
                    f"{source}: field 'skeleton[{i}]' names {name!r}, which is not a labelled "
                    f"bodypart; known: {', '.join(names)}"
                )
        if pair[0] != pair[1] and (pair[0], pair[1]) not in out and (pair[1], pair[0]) not in out:
            out.append((str(pair[0]), str(pair[1])))
    return out


def read_dlc_project(src: str | os.PathLike) -> LabelledProject:
    """The labelled frames of a DeepLabCut project folder (see the module docstring)."""
    src = Path(src)
    labels_dir = src / DLC_LABELS_DIR
    if not labels_dir.is_dir():
        raise LabelsError(
            f"{src}: not a DeepLabCut project folder (no {DLC_LABELS_DIR}/ in it); give the "
            "folder that holds config.yaml and labeled-data/"
        )
    config_path = src / "config.yaml"
    config = _read_config(config_path) if config_path.is_file() else {}
    scorer = config.get("scorer")
    label_files: list[Path] = []
    unlabelled_videos: list[str] = []
    for video_dir in sorted(p for p in labels_dir.iterdir() if p.is_dir()):
        found = sorted(video_dir.glob("CollectedData_*.csv")) or sorted(
            video_dir.glob("CollectedData_*.h5")
        )
        if scorer and len(found) > 1:
            # Old scorers' files can stay behind; the config names the current one.
            found = [p for p in found if p.stem == f"CollectedData_{scorer}"] or found
        if len(found) > 1:
            raise LabelsError(
                f"{video_dir}: several labels files ({', '.join(p.name for p in found)}); "
                "keep one, or set 'scorer' in config.yaml to choose"
            )
        if found:
            label_files.append(found[0])
        elif not video_dir.name.endswith("_labeled"):  # check_labels' output folders
            unlabelled_videos.append(video_dir.name)
    if not label_files:
        raise LabelsError(
            f"{labels_dir}: no CollectedData_<scorer>.csv (or .h5) in any video folder"
        )
    names: tuple[str, ...] = ()
    frames: list[Frame] = []
    notes: list[str] = []
    multi = None
    left_out: set[str] = set()
    for path in label_files:
        table = read_labels(path)
        if multi is None:
            multi, names = table.multi_animal, table.bodyparts
        elif table.multi_animal != multi:
            raise LabelsError(
                f"{path}: {'multi' if table.multi_animal else 'single'}-animal labels, "
                f"but {label_files[0]} is {'multi' if multi else 'single'}-animal"
            )
        xy = _reorder(table, names, label_files[0])
        left_out.update(table.left_out)
        video_dir = path.parent
        for r, key in enumerate(table.index):
            rel = _check_relative(key, table.where(r))
            source = src / rel
            # A labeled-data folder copied from another project keeps its old paths:
            # the image beside the labels file is the one meant.
            if not source.exists() and (video_dir / rel.name).exists():
                source = video_dir / rel.name
            frames.append(
                Frame(
                    path=key,
                    source=source,
                    video=video_dir.name,
                    keypoints=xy[r],
                    where=table.where(r),
                    individuals=table.individuals,
                )
            )
    if left_out:
        notes.append(f"unique bodyparts left out (not per animal): {', '.join(sorted(left_out))}")
    if unlabelled_videos:
        notes.append(
            f"{len(unlabelled_videos)} labeled-data folders without labels files skipped: "
            + ", ".join(unlabelled_videos)
        )
    skeleton = _skeleton(config.get("skeleton"), names, f"{config_path}")
    return LabelledProject(
        kind="DeepLabCut",
        source=src,
        name=str(config.get("Task") or src.resolve().name),
        keypoints=names,
        skeleton=skeleton,
        frames=frames,
        label_files=label_files,
        multi_animal=bool(multi),
        notes=notes,
    )


def read_lightning_pose(
    src: str | os.PathLike, image_root: str | os.PathLike | None = None
) -> LabelledProject:
    """The labelled frames of a lightning-pose labels CSV (``SRC/CollectedData.csv`` or SRC).

    Image paths are taken relative to ``image_root`` (default: the CSV's folder, the
    project's ``data_dir``); the split-by-video group is an image's parent folder.
    """
    src = Path(src)
    if src.is_dir():
        csv_path = src / "CollectedData.csv"
        if not csv_path.is_file():
            found = sorted(p.name for p in src.glob("*.csv"))
            raise LabelsError(
                f"{src}: no CollectedData.csv; give the labels CSV itself"
                + (f" (CSVs here: {', '.join(found)})" if found else "")
            )
    elif src.is_file():
        csv_path = src
    else:
        raise LabelsError(f"{src}: not found")
    root = Path(image_root) if image_root is not None else csv_path.parent
    table = read_labels(csv_path)
    frames = []
    for r, key in enumerate(table.index):
        rel = _check_relative(key, table.where(r))
        parent = rel.parent.name
        frames.append(
            Frame(
                path=key,
                source=root / rel,
                video=parent or ".",
                keypoints=table.xy[r],
                where=table.where(r),
                individuals=table.individuals,
            )
        )
    notes = []
    if table.left_out:
        notes.append(f"unique bodyparts left out: {', '.join(table.left_out)}")
    return LabelledProject(
        kind="lightning-pose",
        source=csv_path,
        name=root.resolve().name,
        keypoints=table.bodyparts,
        skeleton=[],
        frames=frames,
        label_files=[csv_path],
        multi_animal=table.multi_animal,
        notes=notes,
    )


# ----------------------------------------------------------------------------- flip pairs

_SIDE_WORDS = {"left": "right", "right": "left", "l": "r", "r": "l"}
# Words of a name: separators split them, and so do camelCase boundaries ("leftEar",
# "earL", "LEar"), so a side may be a prefix, a suffix or a middle word ("front_left_paw").
_WORD = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")


def _same_case(word: str, like: str) -> str:
    if like.isupper():
        return word.upper()
    if like[0].isupper():
        return word.capitalize()
    return word


def _mirrors(name: str) -> list[tuple[str, str]]:
    """Each name this one becomes with one side word swapped, and this name's side."""
    out = []
    for m in _WORD.finditer(name):
        word = m.group()
        other = _SIDE_WORDS.get(word.lower())
        if other is not None:
            side = "left" if word.lower() in ("left", "l") else "right"
            out.append((name[: m.start()] + _same_case(other, word) + name[m.end() :], side))
    # Glued full words ("leftear", "earright"): only 'left'/'right', never a bare l/r,
    # which would pair unrelated names such as "lip" and "rip".
    low = name.lower()
    for word, other in (("left", "right"), ("right", "left")):
        if low.startswith(word) and len(name) > len(word):
            out.append((_same_case(other, name[: len(word)]) + name[len(word) :], word))
        if low.endswith(word) and len(name) > len(word):
            cut = len(name) - len(word)
            out.append((name[:cut] + _same_case(other, name[cut:]), word))
    return out


def propose_flip_pairs(names: Sequence[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """Flip pairs ``(left, right)`` from left/right names, and sided names with no partner.

    Recognised: ``left``/``right`` and ``l``/``r`` as a word of the name, separated by
    ``_``, ``-``, ``.``, a space or a camelCase boundary, in any position and case
    (``left_ear``/``right_ear``, ``L_ear``/``R_ear``, ``ear_l``/``ear_r``, ``leftEar``/
    ``rightEar``, ``LeftEar``/``RightEar``, ``front_left_paw``/``front_right_paw``), and
    ``left``/``right`` glued to the front or back (``leftear``/``rightear``). A pair needs
    both names present; each name is paired at most once, in name order.
    """
    index = {n: i for i, n in enumerate(names)}
    used: set[str] = set()
    pairs: list[tuple[str, str]] = []
    unmatched: list[str] = []
    for name in names:
        if name in used:
            continue
        mirrors = _mirrors(name)
        for mirror, side in mirrors:
            if mirror != name and mirror in index and mirror not in used:
                pairs.append((name, mirror) if side == "left" else (mirror, name))
                used.update((name, mirror))
                break
        else:
            # Only full words make a name look sided; a bare 'r' word may mean anything.
            if any(len(w) > 1 for w in re.findall(r"left|right", name.lower())):
                unmatched.append(name)
    pairs.sort(key=lambda p: index[p[0]])
    return pairs, unmatched


# ----------------------------------------------------------------------------- splits


def split_frames(
    videos: Sequence[str],
    val_fraction: float,
    seed: int = 0,
    by: str = "image",
    val_videos: Sequence[str] | None = None,
) -> np.ndarray:
    """(N,) bool, True for validation frames; the training split is never empty.

    ``by="image"``: ``round(val_fraction * N)`` frames drawn with ``seed`` (at least one
    when the fraction is positive and there are two frames or more). ``by="video"``: whole
    videos go to validation, ``val_videos`` if given, else videos in a seeded order until
    they hold ``val_fraction`` of the frames (at least one video, never all).
    """
    n = len(videos)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    is_val = np.zeros(n, dtype=bool)
    rng = np.random.default_rng(seed)
    if by == "image":
        if val_fraction == 0 or n < 2:
            return is_val
        count = min(max(1, round(val_fraction * n)), n - 1)
        is_val[rng.permutation(n)[:count]] = True
        return is_val
    if by != "video":
        raise ValueError(f"split by 'image' or 'video', got {by!r}")
    names = list(dict.fromkeys(videos))  # first-appearance order, so the seed decides alone
    if val_fraction == 0 and not val_videos:
        return is_val
    if val_videos:
        unknown = [v for v in val_videos if v not in names]
        if unknown:
            raise LabelsError(
                f"--val-videos: no labelled frames from {', '.join(unknown)}; "
                f"videos: {', '.join(names)}"
            )
        chosen = set(val_videos)
    else:
        if len(names) < 2:
            raise LabelsError(
                f"--split-by video needs two videos or more; all labelled frames come from "
                f"{names[0] if names else 'none'} (use --split-by image)"
            )
        sizes = Counter(videos)
        chosen = set()
        taken = 0
        for i in rng.permutation(len(names)):
            if chosen and taken >= val_fraction * n:
                break
            if len(chosen) == len(names) - 1:
                break
            chosen.add(names[i])
            taken += sizes[names[i]]
    if len(chosen) == len(names):
        raise LabelsError("--val-videos names every video: the training split would be empty")
    is_val[:] = [v in chosen for v in videos]
    return is_val


# ----------------------------------------------------------------------------- writing


def keypoint_box(
    points: np.ndarray, width: int, height: int, padding: float
) -> tuple[float, float, float, float] | None:
    """xywh around ``points`` (M, 2) grown by ``padding`` px, clamped to ``[0, W] x [0, H]``.

    None when nothing of it is inside the image (all keypoints far outside).
    """
    x1 = max(0.0, float(points[:, 0].min()) - padding)
    y1 = max(0.0, float(points[:, 1].min()) - padding)
    x2 = min(float(width), float(points[:, 0].max()) + padding)
    y2 = min(float(height), float(points[:, 1].max()) + padding)
    if x2 <= x1 or y2 <= y1:
        return None
    return x1, y1, x2 - x1, y2 - y1


def _destination(path: str) -> str:
    """Where a frame goes under OUT/images: its project path without ``labeled-data/``."""
    parts = PurePosixPath(path).parts
    if len(parts) > 1 and parts[0] == DLC_LABELS_DIR:
        parts = parts[1:]
    return "/".join(parts)


def _place_image(source: Path, dest: Path, copy: bool) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_symlink():
        dest.unlink()  # a link from an earlier run; the image it points to stays
    elif dest.exists():
        if dest.samefile(source):
            raise LabelsError(
                f"{dest} is the project's own image {source}: choose an OUT folder outside "
                "the project"
            )
        dest.unlink()
    if copy:
        shutil.copy2(source, dest)
        return
    try:
        os.symlink(source.resolve(), dest)
    except OSError as err:  # e.g. Windows without the symlink privilege
        raise LabelsError(f"{dest}: cannot make a symlink ({err}); use --copy") from None


def _yaml_str(value: str) -> str:
    # JSON strings are YAML double-quoted scalars: any name survives ':' '#' or quotes.
    return json.dumps(value, ensure_ascii=False)


def write_keypoint_yaml(
    path: Path,
    name: str,
    keypoints: Sequence[str],
    flip_pairs: Sequence[tuple[str, str]],
    skeleton: Sequence[tuple[str, str]],
    source: str,
    sigma: float = DEFAULT_SIGMA,
) -> KeypointSpec:
    """Write the keypoint YAML (commented for the user) and load it back as a check."""
    q = _yaml_str
    lines = [
        f"# Keypoints of {name}, written by psapose.data.convert from {source}.",
        "# Joints are referred to by name; docs/data.md explains every field.",
        f"name: {q(name)}",
        "keypoints:",
        *[f"  - {q(k)}" for k in keypoints],
        "# Proposed from the names: CHECK THEM. A flip pair is two keypoints that swap under a",
        "# horizontal flip (used by flip augmentation and the flip test). If your keypoints",
        "# have sides that their names do not show, add the pairs; if the animal is not",
        "# left/right symmetric, set augment.flip_prob=0 and eval.flip_test=false.",
    ]
    if flip_pairs:
        lines += ["flip_pairs:", *[f"  - [{q(a)}, {q(b)}]" for a, b in flip_pairs]]
    else:
        lines.append("flip_pairs: []")
    lines.append("# Limbs drawn by the visualiser" + (" (from the project)." if skeleton else "."))
    if skeleton:
        lines += ["skeleton:", *[f"  - [{q(a)}, {q(b)}]" for a, b in skeleton]]
    else:
        lines.append("skeleton: []")
    lines += [
        f"# OKS constants for AP: {sigma} for every keypoint (no repeated labelling to measure",
        "# per-keypoint spread). OKS 0.5 at an error of about 12% of sqrt(box area); smaller",
        "# sigmas make AP stricter. Pixel metrics (EPE, PCK) do not use them.",
        f"sigmas: [{', '.join(str(sigma) for _ in keypoints)}]",
    ]
    path.write_text("\n".join(lines) + "\n")
    try:
        return load_keypoint_spec(path)
    except KeypointSpecError as err:  # a bug here, not the user's: say so plainly
        raise RuntimeError(f"the written keypoint YAML does not load: {err}") from err


def convert(
    fmt: str,
    src: str | os.PathLike,
    out: str | os.PathLike,
    val_fraction: float = 0.1,
    seed: int = 0,
    split_by: str = "image",
    val_videos: Sequence[str] | None = None,
    box: str = "keypoints",
    box_padding: float = DEFAULT_BOX_PADDING,
    copy: bool = False,
    image_root: str | os.PathLike | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Convert a project (``fmt`` ``dlc`` or ``lightning-pose``) into ``out``; returns a summary.

    Raises :class:`~psapose.data.labels_csv.LabelsError` (a ``ValueError``) naming the file,
    line, column and field for a bad labels file, a missing or unreadable image, or a split
    that cannot be made.
    """
    if box not in ("keypoints", "frame"):
        raise ValueError(f"--box must be 'keypoints' or 'frame', got {box!r}")
    if not box_padding >= 0:
        raise ValueError(f"--box-padding must be >= 0 pixels, got {box_padding}")
    if fmt == "dlc":
        project = read_dlc_project(src)
    elif fmt == "lightning-pose":
        project = read_lightning_pose(src, image_root)
    else:
        raise ValueError(f"format must be 'dlc' or 'lightning-pose', got {fmt!r}")
    if name:
        project.name = name
    if box == "frame" and project.multi_animal:
        raise LabelsError(
            f"{project.source}: --box frame gives every animal of a frame the same box, so a "
            "top-down model cannot tell them apart; use the keypoint boxes (the default)"
        )
    out = Path(out)
    k = len(project.keypoints)
    # Frames with at least one labelled keypoint; the rest are counted and left out.
    kept = [f for f in project.frames if f.labelled.any()]
    no_labels = len(project.frames) - len(kept)
    if not kept:
        raise LabelsError(
            f"{', '.join(map(str, project.label_files))}: no labelled keypoint in any of "
            f"{len(project.frames)} rows"
        )
    seen: dict[str, str] = {}
    for frame in kept:
        dest = _destination(frame.path)
        if dest in seen:
            raise LabelsError(
                f"{frame.where}, column 1 (image path): {frame.path!r} is labelled twice "
                f"(also {seen[dest]})"
            )
        seen[dest] = frame.where
    # Read every image once: its size, and the same decode check training will make.
    sizes = []
    for frame in kept:
        try:
            image = read_image(frame.source, "bgr")
        except ImageReadError as err:
            raise LabelsError(
                f"{frame.where}, column 1 (image path): {frame.path!r}: {err.reason} "
                f"(looked for {frame.source})"
            ) from None
        sizes.append((int(image.shape[1]), int(image.shape[0])))
    is_val = split_frames([f.video for f in kept], val_fraction, seed, split_by, val_videos)
    images: dict[str, list] = {"train": [], "val": []}
    annotations: dict[str, list] = {"train": [], "val": []}
    labelled_total = 0
    ann_id = 0
    for image_id, (frame, (width, height), val) in enumerate(
        zip(kept, sizes, is_val, strict=True), start=1
    ):
        split = "val" if val else "train"
        images[split].append(
            {
                "id": image_id,
                "file_name": _destination(frame.path),
                "width": width,
                "height": height,
            }
        )
        for i, xy in enumerate(frame.keypoints):
            labelled = ~np.isnan(xy).any(axis=-1)
            if not labelled.any():
                continue  # an individual not in this frame
            if box == "frame":
                bbox: tuple[float, ...] | None = (0.0, 0.0, float(width), float(height))
            else:
                bbox = keypoint_box(xy[labelled], width, height, box_padding)
            who = f" (individual {frame.individuals[i]!r})" if frame.individuals[i] else ""
            if bbox is None or bbox[2] <= 0 or bbox[3] <= 0:
                raise LabelsError(
                    f"{frame.where}{who}: the labelled keypoints give an empty box in the "
                    f"{width}x{height} image (keypoints outside it, or one keypoint and "
                    "--box-padding 0); fix the labels or use --box frame"
                )
            flat: list[float] = []
            for (x, y), v in zip(xy.tolist(), labelled, strict=True):
                flat += [x, y, 2] if v else [0, 0, 0]
            ann_id += 1
            labelled_total += int(labelled.sum())
            annotations[split].append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": 1,
                    "keypoints": flat,
                    "num_keypoints": int(labelled.sum()),
                    "bbox": list(bbox),
                    "area": bbox[2] * bbox[3],
                    "iscrowd": 0,
                }
            )
    flip_pairs, unmatched = propose_flip_pairs(project.keypoints)
    out.mkdir(parents=True, exist_ok=True)
    spec = write_keypoint_yaml(
        out / SPEC_FILE,
        project.name,
        project.keypoints,
        flip_pairs,
        project.skeleton,
        f"{project.kind} {project.source}",
    )
    category = spec.coco_category(1, supercategory=project.name)
    for split in ("train", "val"):
        path = out / ANN_FILES[split]
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "info": {
                "description": f"{project.name}: {split} split converted by psapose.data.convert",
                "source": f"{project.kind} {project.source}",
            },
            "images": images[split],
            "annotations": annotations[split],
            "categories": [category],
        }
        path.write_text(json.dumps(data))
    for frame in kept:
        _place_image(frame.source, out / IMAGE_DIR / _destination(frame.path), copy)
    videos = {s: sorted({f.video for f, v in zip(kept, is_val, strict=True) if v == (s == "val")})
              for s in ("train", "val")}  # fmt: skip
    return {
        "format": project.kind,
        "source": str(project.source),
        "out": str(out),
        "name": project.name,
        "keypoints": list(project.keypoints),
        "multi_animal": project.multi_animal,
        "label_files": [str(p) for p in project.label_files],
        "rows": len(project.frames),
        "images": len(kept),
        "left_out_no_labels": no_labels,
        "instances": sum(len(a) for a in annotations.values()),
        "labelled_keypoints": labelled_total,
        "keypoint_slots": sum(len(a) for a in annotations.values()) * k,
        "split": {
            "by": split_by,
            "seed": seed,
            **{
                s: {
                    "images": len(images[s]),
                    "instances": len(annotations[s]),
                    "videos": videos[s],
                }
                for s in ("train", "val")
            },
        },
        "flip_pairs": flip_pairs,
        "sided_without_partner": unmatched,
        "skeleton": project.skeleton,
        "sigma": DEFAULT_SIGMA,
        "box": "whole frame" if box == "frame" else f"keypoint extent + {box_padding:g} px",
        "images_placed": "copied" if copy else "symlinked",
        "files": {
            "train": str(out / ANN_FILES["train"]),
            "val": str(out / ANN_FILES["val"]),
            "keypoints": str(out / SPEC_FILE),
            "images": str(out / IMAGE_DIR),
        },
        "notes": project.notes,
    }


def format_summary(s: dict[str, Any]) -> str:
    """The conversion report printed by the command."""
    split = s["split"]

    def side(name: str) -> str:
        part = split[name]
        videos = part["videos"]
        shown = ", ".join(videos[:6]) + (f", ... ({len(videos)})" if len(videos) > 6 else "")
        return f"{name} {part['images']} images / {part['instances']} instances ({shown})"

    lines = [
        f"{s['format']} {s['source']}: {len(s['label_files'])} labels file(s), "
        f"{len(s['keypoints'])} keypoints: {', '.join(s['keypoints'])}"
        + (" (multi-animal: one instance per individual)" if s["multi_animal"] else ""),
        f"  images: {s['images']} with labels, {s['left_out_no_labels']} left out "
        f"(no labelled keypoint) of {s['rows']} rows",
        f"  instances: {s['instances']}; labelled keypoints: {s['labelled_keypoints']} of "
        f"{s['keypoint_slots']}",
        f"  split by {split['by']} (seed {split['seed']}): {side('train')}; {side('val')}",
        f"  boxes: {s['box']}, clamped to the image",
        *[f"  note: {n}" for n in s["notes"]],
    ]
    if not split["val"]["images"]:
        lines.append(
            "  note: the val split is empty; evaluation (the trainer's, tools/test.py) needs "
            "labelled val frames: use --val-fraction > 0"
        )
    if s["flip_pairs"]:
        lines.append("flip pairs proposed from the names (check them in the keypoint YAML):")
        lines += [f"  {a} <-> {b}" for a, b in s["flip_pairs"]]
    else:
        lines.append(
            "flip pairs: none found from the names; add them to the keypoint YAML if the "
            "keypoints have sides, or train with augment.flip_prob=0 eval.flip_test=false"
        )
    if s["sided_without_partner"]:
        lines.append("  names with a side but no partner: " + ", ".join(s["sided_without_partner"]))
    lines.append(
        f"sigmas: {s['sigma']} for every keypoint (no per-keypoint labelling spread is known; "
        "they only matter for AP)"
    )
    if s["skeleton"]:
        lines.append(f"skeleton: {len(s['skeleton'])} limbs from the project")
    files = s["files"]
    lines += [
        "wrote:",
        f"  {files['train']}  ({split['train']['images']} images)",
        f"  {files['val']}  ({split['val']['images']} images)",
        f"  {files['keypoints']}",
        f"  {files['images']}/  ({s['images']} images {s['images_placed']})",
        f"next: python tools/train.py data=custom data.root={s['out']}",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m psapose.data.convert",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("format", choices=("dlc", "lightning-pose"), help="the labels' tool")
    parser.add_argument(
        "src", help="DeepLabCut project folder; lightning-pose project folder or labels CSV"
    )
    parser.add_argument("out", help="output dataset folder (data.root)")
    parser.add_argument(
        "--val-fraction", type=float, default=0.1, help="share of frames for validation (0.1)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the split")
    parser.add_argument(
        "--split-by",
        choices=("image", "video"),
        default="image",
        help="image: frames drawn at random; video: whole videos go to validation "
        "(frames of one video are alike, so this measures generalisation to new videos)",
    )
    parser.add_argument(
        "--val-videos", nargs="+", metavar="VIDEO", help="these videos are the validation split"
    )
    parser.add_argument(
        "--box",
        choices=("keypoints", "frame"),
        default="keypoints",
        help="keypoints: the labelled keypoints' extent plus padding; frame: the whole image",
    )
    parser.add_argument(
        "--box-padding",
        type=float,
        default=DEFAULT_BOX_PADDING,
        help="pixels added on every side of the keypoint extent (default 20, as DeepLabCut 3)",
    )
    parser.add_argument(
        "--copy", action="store_true", help="copy the images (default: symlink them)"
    )
    parser.add_argument(
        "--image-root", help="lightning-pose: folder the image paths are relative to"
    )
    parser.add_argument("--name", help="dataset name (default: the project folder's)")
    args = parser.parse_args(argv)
    try:
        summary = convert(
            args.format,
            args.src,
            args.out,
            val_fraction=args.val_fraction,
            seed=args.seed,
            split_by="video" if args.val_videos else args.split_by,
            val_videos=args.val_videos,
            box=args.box,
            box_padding=args.box_padding,
            copy=args.copy,
            image_root=args.image_root,
            name=args.name,
        )
    except ValueError as err:  # LabelsError and bad options: the message says it all
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
