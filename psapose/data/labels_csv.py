"""DeepLabCut / lightning-pose keypoint tables: read labels, write per-frame predictions.

Both tools store keypoints as a pandas frame with MultiIndex columns, written as CSV
with one header row per column level and the row index in the first column(s)::

    scorer,    Alice,  Alice,  Alice, Alice          <- level 'scorer'
    bodyparts, nose,   nose,   tail,  tail           <- level 'bodyparts'
    coords,    x,      y,      x,     y              <- level 'coords' (x, y[, likelihood])
    labeled-data/v1/img001.png, 12.5, 40.0, , <- index, then values; empty = unlabelled

* older DeepLabCut and lightning-pose: one index column holding the image path;
* DeepLabCut >= 2.3: three index columns (``labeled-data``, video, file name);
* multi-animal DeepLabCut: a fourth level ``individuals`` between scorer and bodyparts
  (each individual becomes one instance; the individual ``single`` holds the unique
  bodyparts, which are not per animal and are reported as left out);
* predictions (DeepLabCut's video analysis, lightning-pose's video predictions):
  coords ``x, y, likelihood`` and the frame number as the index.

Only the standard library's :mod:`csv` is needed. DeepLabCut's ``.h5`` twin of the
labels CSV is read through pandas + PyTables where both import; otherwise the error
says to install them or to use the CSV (DeepLabCut writes both when labelling).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from psapose.data.coco import AnnotationError

__all__ = [
    "LabelTable",
    "LabelsError",
    "read_labels",
    "read_labels_csv",
    "read_labels_h5",
    "write_pose_csv",
]

COORDS = ("x", "y", "likelihood")
UNIQUE_INDIVIDUAL = "single"  # multi-animal DeepLabCut's individual for the unique bodyparts
_MISSING = {"", "nan", "NaN", "NAN"}  # pandas writes NaN as an empty cell; accept its spelling too


class LabelsError(AnnotationError):
    """A labels file or project that cannot be converted; names the file, line, column and field.

    An :class:`~psapose.data.coco.AnnotationError` (a ``ValueError``), so the tools map it
    to exit code 2 like any other bad annotation.
    """


@dataclass
class LabelTable:
    """One labels (or predictions) file as arrays: R rows, I individuals, K bodyparts.

    Attributes:
        source: the file read.
        scorer: the labeller (or model) name of the ``scorer`` row.
        bodyparts: keypoint names in column order.
        individuals: individual names; ``("",)`` for a single-animal file.
        index: per row, the image path ('/' separators; index columns joined) or frame number.
        lines: per row, its 1-based line in the file (for error messages).
        xy: (R, I, K, 2) float64, NaN where unlabelled.
        likelihood: (R, I, K) float64 when the file has ``likelihood`` columns, else None.
        left_out: bodyparts read but not in ``bodyparts`` (multi-animal unique bodyparts).
    """

    source: Path
    scorer: str
    bodyparts: tuple[str, ...]
    individuals: tuple[str, ...]
    index: list[str]
    lines: list[int]
    xy: np.ndarray
    likelihood: np.ndarray | None = None
    left_out: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.index)

    @property
    def multi_animal(self) -> bool:
        return self.individuals != ("",)

    def where(self, row: int) -> str:
        """``file: line N`` of a row, for messages."""
        return f"{self.source}: line {self.lines[row]}"


def _header_error(path: Path, line: int, column: int, expected: str, got: str) -> LabelsError:
    return LabelsError(
        f"{path}: line {line}, column {column}: expected {expected}, got {got!r} (a DeepLabCut/"
        "lightning-pose labels file starts with the header rows scorer, bodyparts, coords, "
        "and multi-animal DeepLabCut adds individuals after scorer)"
    )


def parse_label_rows(rows: Sequence[Sequence[str]], path: Path, lines: Sequence[int]) -> LabelTable:
    """A :class:`LabelTable` from the rows of a labels file (header rows included).

    ``lines`` gives each row's 1-based line number in ``path`` for the messages. Shared by
    the CSV reader and the ``.h5`` reader (which rebuilds the same rows from the frame).
    """
    if len(rows) < 3:
        raise LabelsError(
            f"{path}: {len(rows)} non-empty lines; a labels file needs the three header rows "
            "scorer, bodyparts, coords"
        )
    levels = ["scorer", "bodyparts", "coords"]
    if len(rows) > 1 and rows[1] and rows[1][0].strip() == "individuals":
        levels = ["scorer", "individuals", "bodyparts", "coords"]
    for r, name in enumerate(levels):
        if r >= len(rows):
            raise LabelsError(f"{path}: the header row {name!r} is missing")
        first = rows[r][0].strip() if rows[r] else ""
        if first != name:
            raise _header_error(path, lines[r], 1, repr(name), first)
    header = [[c.strip() for c in row] for row in rows[: len(levels)]]
    width = len(header[-1])
    for r, row in enumerate(header):
        if len(row) != width:
            raise LabelsError(
                f"{path}: line {lines[r]}: header row {levels[r]!r} has {len(row)} columns, "
                f"the coords row {width}"
            )
    # The index columns are those whose coords cell is empty: one (the image path) in older
    # DeepLabCut and lightning-pose, three (labeled-data, video, file) in DeepLabCut >= 2.3.
    coords_row = header[-1]
    n_index = next((j for j in range(1, width) if coords_row[j]), width)
    if n_index == width:
        raise LabelsError(f"{path}: line {lines[len(levels) - 1]}: the coords row names no x/y")
    where_level = {name: r for r, name in enumerate(levels)}
    columns: dict[tuple[str, str, str], int] = {}
    order: dict[str, list[str]] = {}
    for j in range(n_index, width):
        individual = header[where_level["individuals"]][j] if "individuals" in levels else ""
        part = header[where_level["bodyparts"]][j]
        coord = coords_row[j]
        line = lines[where_level["bodyparts"]]
        if not part:
            raise LabelsError(f"{path}: line {line}, column {j + 1}: empty bodypart name")
        if coord not in COORDS:
            raise _header_error(path, lines[len(levels) - 1], j + 1, "x, y or likelihood", coord)
        key = (individual, part, coord)
        if key in columns:
            who = f"{individual} " if individual else ""
            raise LabelsError(
                f"{path}: column {j + 1}: '{who}{part} {coord}' repeats column {columns[key] + 1}"
            )
        columns[key] = j
        parts = order.setdefault(individual, [])
        if part not in parts:
            parts.append(part)
    individuals = list(order)
    for individual, parts in order.items():
        for part in parts:
            for coord in ("x", "y"):
                if (individual, part, coord) not in columns:
                    who = f"individual {individual!r}, " if individual else ""
                    raise LabelsError(f"{path}: {who}bodypart {part!r} has no {coord!r} column")
    # Multi-animal: every animal has the same bodyparts; 'single' holds the unique ones,
    # which are not per animal and so cannot be keypoints of a per-animal crop.
    left_out: tuple[str, ...] = ()
    animals = [i for i in individuals if i != UNIQUE_INDIVIDUAL] or individuals
    if len(animals) < len(individuals):
        left_out = tuple(order[UNIQUE_INDIVIDUAL])
    bodyparts = order[animals[0]]
    for individual in animals[1:]:
        if order[individual] != bodyparts:
            raise LabelsError(
                f"{path}: individual {individual!r} has bodyparts {', '.join(order[individual])}; "
                f"individual {animals[0]!r} has {', '.join(bodyparts)} (they must be the same)"
            )
    has_likelihood = any(key[2] == "likelihood" for key in columns)
    data = rows[len(levels) :]
    data_lines = lines[len(levels) :]
    n, n_ind, k = len(data), len(animals), len(bodyparts)
    xy = np.full((n, n_ind, k, 2), np.nan)
    likelihood = np.full((n, n_ind, k), np.nan) if has_likelihood else None
    index: list[str] = []
    targets = [
        (i, p, c, columns.get((individual, part, coord)))
        for i, individual in enumerate(animals)
        for p, part in enumerate(bodyparts)
        for c, coord in enumerate(COORDS)
    ]
    for r, row in enumerate(data):
        line = data_lines[r]
        if len(row) != width:
            raise LabelsError(f"{path}: line {line}: {len(row)} columns, the header has {width}")
        key = "/".join(cell.strip() for cell in row[:n_index] if cell.strip())
        key = key.replace("\\", "/")  # DeepLabCut projects labelled on Windows
        if not key:
            raise LabelsError(f"{path}: line {line}, column 1: empty image path (index) cell")
        index.append(key)
        for i, p, c, j in targets:
            if j is None:
                continue
            cell = row[j].strip()
            if cell in _MISSING:
                continue
            try:
                value = float(cell)
            except ValueError:
                value = math.nan
                bad = True
            else:
                bad = not math.isfinite(value)
            if bad:
                who = f"{animals[i]} " if animals[i] else ""
                raise LabelsError(
                    f"{path}: line {line}, column {j + 1} ({who}{bodyparts[p]} {COORDS[c]}): "
                    f"{cell!r} is not a finite number"
                )
            if c < 2:
                xy[r, i, p, c] = value
            elif likelihood is not None:
                likelihood[r, i, p] = value
    # A keypoint with only one of x and y is not a position: treat it as unlabelled.
    half = np.isnan(xy).any(axis=-1)
    xy[half] = np.nan
    scorer = next((c for c in header[0][n_index:] if c), "")
    return LabelTable(
        source=path,
        scorer=scorer,
        bodyparts=tuple(bodyparts),
        individuals=tuple(animals),
        index=index,
        lines=list(data_lines),
        xy=xy,
        likelihood=likelihood,
        left_out=left_out,
    )


def read_labels_csv(path: str | os.PathLike) -> LabelTable:
    """A DeepLabCut or lightning-pose labels/predictions CSV (layouts in the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise LabelsError(f"{path}: labels file not found")
    rows: list[list[str]] = []
    lines: list[int] = []
    try:
        # utf-8-sig: a file saved from a spreadsheet program starts with a byte-order mark.
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue  # blank lines (and trailing ones) carry nothing
                rows.append(row)
                lines.append(reader.line_num)
    except (UnicodeDecodeError, csv.Error) as err:
        raise LabelsError(f"{path}: not a readable CSV text file ({err})") from None
    return parse_label_rows(rows, path, lines)


def read_labels_h5(path: str | os.PathLike) -> LabelTable:
    """DeepLabCut's ``CollectedData_<scorer>.h5`` (needs pandas and PyTables)."""
    path = Path(path)
    try:
        import pandas as pd
        import tables  # noqa: F401  (pandas reads HDF5 through PyTables)
    except ImportError as err:
        raise LabelsError(
            f"{path}: reading DeepLabCut .h5 files needs pandas and PyTables ({err}); "
            "install them (pip install pandas tables) or use the CSV that DeepLabCut writes "
            "beside it (CollectedData_<scorer>.csv; deeplabcut.convertcsv2h5 goes the other way)"
        ) from None
    if not path.is_file():
        raise LabelsError(f"{path}: labels file not found")
    try:
        frame = pd.read_hdf(path)
    except Exception as err:  # PyTables raises many types for a bad file
        raise LabelsError(f"{path}: cannot read the HDF5 labels ({err})") from None
    # Rebuild the rows the CSV would hold, so both files take exactly the same checks.
    names = [str(n) if n is not None else "" for n in frame.columns.names]
    n_index = frame.index.nlevels
    rows: list[list[str]] = []
    for level, name in enumerate(names):
        values = [str(v) for v in frame.columns.get_level_values(level)]
        rows.append([name] + [""] * (n_index - 1) + values)
    for key, values in zip(frame.index, frame.to_numpy(dtype=float), strict=True):
        parts = [str(k) for k in key] if isinstance(key, tuple) else [str(key)]
        rows.append(parts + ["" if np.isnan(v) else repr(float(v)) for v in values])
    return parse_label_rows(rows, path, list(range(1, len(rows) + 1)))


def read_labels(path: str | os.PathLike) -> LabelTable:
    """A labels file by its suffix: ``.csv`` or DeepLabCut's ``.h5``."""
    path = Path(path)
    if path.suffix.lower() in (".h5", ".hdf5"):
        return read_labels_h5(path)
    return read_labels_csv(path)


def write_pose_csv(
    path: str | os.PathLike,
    keypoints: np.ndarray,
    scores: np.ndarray,
    bodyparts: Sequence[str],
    scorer: str = "psapose",
    index: Sequence[int | str] | None = None,
) -> Path:
    """Per-frame keypoints in DeepLabCut's / lightning-pose's predictions layout.

    Header rows ``scorer``, ``bodyparts`` and ``coords`` (``x, y, likelihood`` per bodypart),
    then one row per frame: the frame number (or ``index[i]``) and the values. This is the
    layout DeepLabCut's ``analyze_videos`` writes, so their analysis tools (and
    ``pandas.read_csv(path, header=[0, 1, 2], index_col=0)``) read it. A frame with no
    prediction (NaN, e.g. no animal found) gets empty cells, which pandas reads as NaN.
    Values are written with ``repr``, so they read back exactly.

    Args:
        path: the CSV to write (parent folders created).
        keypoints: (F, K, 2) image pixels.
        scores: (F, K) keypoint confidences, written as ``likelihood``.
        bodyparts: K keypoint names.
        scorer: the ``scorer`` row (a model name).
        index: F row labels; default the frame numbers 0..F-1.
    """
    kps = np.asarray(keypoints, dtype=np.float64)
    conf = np.asarray(scores, dtype=np.float64)
    names = [str(b) for b in bodyparts]
    if kps.ndim != 3 or kps.shape[2] != 2 or kps.shape[1] != len(names):
        raise ValueError(
            f"keypoints must be (frames, {len(names)}, 2) for {len(names)} bodyparts, "
            f"got {kps.shape}"
        )
    if conf.shape != kps.shape[:2]:
        raise ValueError(f"scores must be {kps.shape[:2]}, got {conf.shape}")
    labels = list(range(len(kps))) if index is None else list(index)
    if len(labels) != len(kps):
        raise ValueError(f"index has {len(labels)} entries for {len(kps)} frames")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def cell(v: float) -> str:
        return "" if math.isnan(v) else repr(float(v))

    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["scorer"] + [scorer] * (3 * len(names)))
        writer.writerow(["bodyparts"] + [n for n in names for _ in range(3)])
        writer.writerow(["coords"] + list(COORDS) * len(names))
        for label, frame, frame_scores in zip(labels, kps, conf, strict=True):
            values = []
            for (x, y), s in zip(frame, frame_scores, strict=True):
                values += [cell(x), cell(y), cell(s)]
            writer.writerow([str(label)] + values)
    return path
