"""One synthetic image: a textured background, the people (back to front), occluding
objects, camera effects, and the labels read back from the part map
(:func:`render_synthetic_image`, :class:`SyntheticImage`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from .person import _PART_SLOTS, _build_person, _Person, _random_colour, difficulty_preset
from .pose import _unit
from .raster import _SHIFT, _draw_person, _ellipse, _fixed

SPLITS = ("train2017", "val2017")
DEFAULT_IMAGE_SIZE = (256, 320)  # (H, W)
MIN_AREA = 40  # people with fewer visible pixels are drawn but not annotated

_SPLIT_CODE = {"train2017": 0, "val2017": 1}
_ID_OFFSET = {"train2017": 1, "val2017": 1_000_001}
_MAX_IMAGES = 1_000_000  # per split: keeps train and val ids apart
_OCCLUDER_ID = 100_000  # occluder j has id _OCCLUDER_ID + j; background is -1


def _smooth_noise(
    rng: np.random.Generator, H: int, W: int, cells: int, channels: int
) -> np.ndarray:
    gh, gw = max(2, cells * H // max(H, W)), max(2, cells * W // max(H, W))
    small = rng.standard_normal((gh, gw, channels)).astype(np.float32)
    out = cv2.resize(small, (W, H), interpolation=cv2.INTER_CUBIC)
    return out.reshape(H, W, channels)


def _background(rng: np.random.Generator, H: int, W: int) -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    c0, c1 = rng.uniform(15, 240, 3), rng.uniform(15, 240, 3)
    ang = rng.uniform(0, 2 * np.pi)
    t = (xx - W / 2) * np.cos(ang) + (yy - H / 2) * np.sin(ang)
    t = (t - t.min()) / max(float(np.ptp(t)), 1.0)
    img = c0 + (c1 - c0) * t[..., None]
    style = rng.random()
    if style < 0.45:  # a horizon: wall/sky above, floor/ground below
        hz = int(rng.uniform(0.25, 0.8) * H)
        floor = rng.uniform(15, 220, 3)
        tt = np.linspace(0.7, 1.15, H - hz, dtype=np.float32)[:, None, None]
        img[hz:] = floor * tt + _smooth_noise(rng, H - hz, W, 24, 3) * rng.uniform(5, 25)
    img += _smooth_noise(rng, H, W, int(rng.integers(3, 10)), 3) * rng.uniform(8, 40)
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(3, 16))):
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        kind = rng.random()
        cx, cy = rng.uniform(-0.1, 1.1) * W, rng.uniform(-0.1, 1.1) * H
        size = rng.uniform(0.04, 0.4) * max(H, W)
        if kind < 0.3:
            w, h = size * rng.uniform(0.3, 1.5), size * rng.uniform(0.3, 1.5)
            pts = cv2.boxPoints(((cx, cy), (w, h), rng.uniform(-20, 20)))
            if rng.random() < 0.7:
                cv2.fillPoly(img, [_fixed(pts)], colour, cv2.LINE_AA, _SHIFT)
            else:
                cv2.polylines(
                    img, [_fixed(pts)], True, colour, int(rng.integers(1, 4)), cv2.LINE_AA, _SHIFT
                )
        elif kind < 0.5:
            pts = _ellipse(
                (cx, cy), size / 2, size / 2 * rng.uniform(0.4, 1.0), rng.uniform(0, np.pi)
            )
            cv2.fillPoly(img, [_fixed(pts)], colour, cv2.LINE_AA, _SHIFT)
        elif kind < 0.8:
            a = rng.uniform(0, np.pi)
            d = np.array([np.cos(a), np.sin(a)]) * size
            p0, p1 = np.array([cx, cy]) - d, np.array([cx, cy]) + d
            cv2.line(
                img,
                tuple(_fixed(p0)),
                tuple(_fixed(p1)),
                colour,
                int(rng.integers(1, 6)),
                cv2.LINE_AA,
                _SHIFT,
            )
        else:
            k = int(rng.integers(3, 7))
            ang = np.sort(rng.uniform(0, 2 * np.pi, k))
            rad = size / 2 * rng.uniform(0.4, 1.0, k)
            pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1)
            cv2.fillPoly(img, [_fixed(pts)], colour, cv2.LINE_AA, _SHIFT)
    if rng.random() < 0.25:  # a regular pattern: stripes or tiles
        period = rng.uniform(6, 30)
        a = rng.uniform(0, np.pi)
        wave = np.sin((xx * np.cos(a) + yy * np.sin(a)) * 2 * np.pi / period)
        img = np.clip(img + (wave * rng.uniform(5, 20))[..., None], 0, 255).astype(np.uint8)
    sigma = rng.uniform(0.0, 2.0)
    if sigma > 0.4:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    # Desaturate towards grey: most real scenes are far less colourful than random colours.
    sat = rng.uniform(0.3, 1.0)
    grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)[..., None].astype(np.float32)
    return np.clip(grey + (img - grey) * sat, 0, 255).round().astype(np.uint8)


def _draw_occluder(img, ids, rng, oid, person: _Person | None, H, W) -> None:
    if person is not None:
        k = int(rng.integers(17))
        target = person.keypoints[k] + rng.normal(0, 0.05, 2) * person.height_px
        size = rng.uniform(0.12, 0.45) * person.height_px
    else:
        target = np.array([rng.uniform(0, W), rng.uniform(0, H)])
        size = rng.uniform(0.1, 0.4) * H
    kind = rng.random()
    if kind < 0.4:  # box
        w, h = size * rng.uniform(0.5, 1.4), size * rng.uniform(0.5, 1.4)
        pts = cv2.boxPoints(((float(target[0]), float(target[1])), (w, h), rng.uniform(-15, 15)))
    elif kind < 0.6:  # pole or board spanning the image height
        w = max(size * rng.uniform(0.12, 0.35), 2.0)
        x, a = float(target[0]), rng.uniform(-8, 8)
        pts = cv2.boxPoints(((x, H / 2), (w, H * 1.6), a))
    elif kind < 0.8:  # round
        pts = _ellipse(
            target, size / 2, size / 2 * rng.uniform(0.5, 1.0), rng.uniform(0, np.pi), 24
        )
    else:  # blob
        k = int(rng.integers(5, 9))
        ang = np.sort(rng.uniform(0, 2 * np.pi, k))
        rad = size / 2 * rng.uniform(0.5, 1.0, k)
        pts = np.stack([target[0] + rad * np.cos(ang), target[1] + rad * np.sin(ang)], 1)
    pts = np.asarray(pts, dtype=np.float64)
    colour = _random_colour(rng, (0, 256), (30, 240))
    x0, y0 = np.floor(pts.min(0)).astype(int) - 1
    x1, y1 = np.ceil(pts.max(0)).astype(int) + 2
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)
    if x0 >= x1 or y0 >= y1:
        return
    # A textured fill: the colour with a gradient, smooth noise and sometimes stripes.
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    local = pts - [x0, y0]
    cv2.fillPoly(mask, [_fixed(local)], 255, cv2.LINE_AA, _SHIFT)
    h, w = mask.shape
    tex = colour + _smooth_noise(rng, h, w, 6, 1) * rng.uniform(5, 30)
    g = np.linspace(1.1, 0.75, h, dtype=np.float32)[:, None, None]
    tex = tex * g
    if rng.random() < 0.35:
        yy, xx = np.mgrid[0:h, 0:w]
        period = rng.uniform(4, 14)
        tex = tex + (np.sin((xx + yy * rng.uniform(-1, 1)) * 2 * np.pi / period) * 25)[..., None]
    al = mask[..., None].astype(np.float32) / 255.0
    region = img[y0:y1, x0:x1].astype(np.float32)
    img[y0:y1, x0:x1] = np.clip(region * (1 - al) + tex * al, 0, 255).round().astype(np.uint8)
    cv2.fillPoly(ids, [_fixed(pts)], _OCCLUDER_ID + oid, cv2.LINE_8, _SHIFT)


@dataclass
class SyntheticImage:
    """One rendered image with its labels, before JPEG compression.

    Attributes:
        image_id / file_name / split: as in the annotation file.
        image: (H, W, 3) uint8 BGR, exactly what is JPEG-encoded.
        part_map: (H, W) int32: what each pixel shows: -1 background, person ``p``'s
            body part ``k`` as ``p * 32 + k`` (people in drawing order), occluder
            ``j`` as ``100000 + j``.
        annotations: the COCO annotation dicts of this image.
        masks: one (H, W) bool mask per annotation: the person's visible pixels.
        people: how many people were drawn (annotated or not).
    """

    image_id: int
    file_name: str
    split: str
    image: np.ndarray
    part_map: np.ndarray
    annotations: list[dict] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    people: int = 0


def image_id_for(split: str, index: int) -> int:
    """The COCO image id of image ``index`` (0-based) of ``split``: unique across the splits."""
    if split not in _SPLIT_CODE:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if not 0 <= index < _MAX_IMAGES:
        raise ValueError(f"image index {index} out of range [0, {_MAX_IMAGES})")
    return _ID_OFFSET[split] + index


def _rng(seed: int, stream: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream, index)))


def _segmentation(mask: np.ndarray) -> list[list[float]]:
    contours, _ = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    polys = []
    for c in sorted(contours, key=lambda c: (-cv2.contourArea(c), -len(c))):
        c = c[:, 0, :].astype(np.float64)
        if len(c) < 3:  # a one- or two-pixel piece: its pixel boxes
            (x0, y0), (x1, y1) = c.min(0) - 0.5, c.max(0) + 0.5
            c = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
        polys.append([float(v) for v in c.reshape(-1)])
    return polys


def render_synthetic_image(
    seed: int,
    split: str,
    index: int,
    image_size: Sequence[int] = DEFAULT_IMAGE_SIZE,
    difficulty: str = "standard",
) -> SyntheticImage:
    """Render image ``index`` of ``split``: a pure function of its arguments.

    Annotation ids are ``image_id * 100 + k`` for the ``k``-th annotated person.
    """
    H, W = (int(v) for v in image_size)
    if H < 32 or W < 32:
        raise ValueError(f"image_size {tuple(image_size)} too small; at least 32x32")
    image_id = image_id_for(split, index)
    rng = _rng(int(seed), _SPLIT_CODE[split], index)
    img = _background(rng, H, W)
    ids = np.full((H, W), -1, np.int32)

    la = rng.uniform(-np.pi * 0.85, -np.pi * 0.15)  # light from above, left or right
    light2 = np.array([np.cos(la), np.sin(la)])
    light3 = _unit(np.array([light2[0] * 0.7, light2[1] * 0.7, -0.75]))
    level = difficulty_preset(difficulty)
    count = int(rng.choice(len(level.people_probs), p=list(level.people_probs))) + 1
    people: list[_Person] = []
    for i in range(count):
        people.append(_build_person(rng, H, W, i == 0, people, light3, level))
    # Back to front: people standing lower in the image are nearer.
    bottoms = np.array([p.box[3] for p in people]) + rng.normal(0, 0.05 * H, count)
    order = [int(i) for i in np.argsort(bottoms, kind="stable")]
    people = [people[i] for i in order]

    n_occ = int(rng.choice(len(level.occluder_probs), p=list(level.occluder_probs)))
    occluders = []
    for j in range(n_occ):
        after = count if rng.random() < 0.75 else int(rng.integers(1, count + 1))
        target = int(rng.integers(count)) if rng.random() < 0.8 else None
        occluders.append((after, j, target))
    for p, person in enumerate(people):
        _draw_person(img, ids, person, p, light2)
        for after, j, target in occluders:
            if after == p + 1:
                _draw_occluder(img, ids, rng, j, None if target is None else people[target], H, W)
    img = _camera_effects(rng, img)

    out = SyntheticImage(image_id, f"{image_id:012d}.jpg", split, img, ids, people=count)
    for p, person in enumerate(people):
        labels = _annotation(person, p, ids, image_id, image_id * 100 + len(out.annotations))
        if labels is not None:
            out.annotations.append(labels[0])
            out.masks.append(labels[1])
    return out


def _camera_effects(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Slight blur, sensor noise, exposure."""
    H, W = img.shape[:2]
    if rng.random() < 0.4:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 0.8))
    noise = rng.standard_normal((H, W), dtype=np.float32) * rng.uniform(1.5, 5.0)
    gain, bias = rng.uniform(0.85, 1.15), rng.uniform(-15, 15)
    return (
        np.clip(img.astype(np.float32) * gain + bias + noise[..., None], 0, 255)
        .round()
        .astype(np.uint8)
    )


def _annotation(
    person: _Person, p: int, ids: np.ndarray, image_id: int, ann_id: int
) -> tuple[dict, np.ndarray] | None:
    """The COCO annotation of the ``p``-th person drawn and its visible pixels, read from the
    part map ``ids``; ``None`` when fewer than ``MIN_AREA`` pixels show."""
    H, W = ids.shape
    lo = p * _PART_SLOTS
    mask = (ids >= lo) & (ids < lo + _PART_SLOTS)
    area = int(mask.sum())
    if area < MIN_AREA:
        return None
    kps: list[float] = []
    labelled = 0
    for k in range(17):
        x, y = (round(float(v), 2) + 0.0 for v in person.keypoints[k])  # no -0.0
        if not (0.0 <= x <= W - 1 and 0.0 <= y <= H - 1):
            kps += [0.0, 0.0, 0]
            continue
        # The pixel under the keypoint (pixel centres at integers), as written to the file.
        shown = int(ids[int(np.floor(y + 0.5)), int(np.floor(x + 0.5))]) - lo
        v = 2 if shown in person.owners[k] else 1
        kps += [x, y, v]
        labelled += 1
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    bbox = [float(x0), float(y0), float(xs.max() - x0 + 1), float(ys.max() - y0 + 1)]
    ann = {
        "segmentation": _segmentation(mask),
        "num_keypoints": labelled,
        "area": float(area),
        "iscrowd": 0,
        "keypoints": kps,
        "image_id": image_id,
        "bbox": bbox,
        "category_id": 1,
        "id": ann_id,
    }
    return ann, mask
