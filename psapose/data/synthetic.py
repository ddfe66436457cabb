"""A built-in synthetic COCO-keypoint dataset: articulated people on textured backgrounds.

``python -m psapose.data.synthetic OUT --images N --seed S`` (or
:func:`generate_synthetic_coco`) writes a dataset in the official COCO layout::

    OUT/annotations/person_keypoints_{train,val}2017.json
    OUT/images/{train,val}2017/000000000001.jpg ...
    OUT/person_detection_results/synthetic_val2017_detections.json

Each image holds 1-4 people: a 3-D kinematic skeleton (torso, neck, head with
nose, eyes and ears, two-segment arms and legs, hands and feet) in a random pose
(standing, walking, running, arms raised, waving, reaching, squatting, sitting,
bending, kicking, ...), seen from a random direction (frontal, three-quarter,
profile, from behind), orthographically projected and drawn back to front as
shaded, tapered, anti-aliased limbs, a torso and a shaded ellipsoid head with
hair and face features. Backgrounds are gradients, smooth noise, shapes and
lines with blur; opaque objects are drawn over some people.

**Left and right.** Every arm and leg segment carries contrasting bands slanted
45 degrees to its axis: one way on the person's left limbs, the mirror way on
the right ones (a left- and a right-handed helix). The slant relative to the
limb axis does not change with the view or an in-plane rotation, so the sides
can be told apart in every pose and view (besides the face, hair and which side
is drawn in front); and, unlike a marking on one side only, the cue survives
horizontal-flip augmentation, which mirrors the bands exactly as it swaps the
left and right labels.

Labels are exact by construction: every pixel records which body part (or
occluder) was drawn there last, so a keypoint is ``v=2`` when the pixel under it
shows a body part it belongs to, ``v=1`` when it lies in the image but is covered
(by an occluder, another person, the person's own torso or limbs, or the head
itself for the far ear/eye in profile and the face seen from behind), and ``v=0``
with ``x=y=0`` outside the image. ``bbox``, ``area`` and ``segmentation`` come from
the person's visible pixels. Keypoints are in pixels with pixel centres at
integer coordinates (COCO's convention), rounded to 0.01.

Image ``i`` of a split is a pure function of ``(seed, split, i, image_size)``
(NumPy ``SeedSequence(seed, spawn_key=(split, i))``), image ids are ``i + 1``
(train) and ``1_000_001 + i`` (val), JSON has a fixed key order and no
timestamps: the same arguments give byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from psapose.data.keypoint_spec import load_keypoint_spec

__all__ = [
    "DETECTION_FILE",
    "SPLITS",
    "SyntheticImage",
    "generate_synthetic_coco",
    "image_id_for",
    "main",
    "render_synthetic_image",
]

SPLITS = ("train2017", "val2017")
DETECTION_FILE = "synthetic_val2017_detections.json"
GENERATOR_VERSION = 1
JPEG_QUALITY = 90
DEFAULT_IMAGE_SIZE = (256, 320)  # (H, W)
MIN_AREA = 40  # people with fewer visible pixels are drawn but not annotated

_SPLIT_CODE = {"train2017": 0, "val2017": 1}
_ID_OFFSET = {"train2017": 1, "val2017": 1_000_001}
_MAX_IMAGES = 1_000_000  # per split: keeps train and val ids apart
_DETECTION_STREAM = 2  # spawn_key[0] of the detection jitter streams
_MIN_POOL_IMAGES = 64  # fewer images are rendered in-process: starting workers costs more

_COCO_NAMES = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
_KP = {name: i for i, name in enumerate(_COCO_NAMES)}
_NOSE = _KP["nose"]


def _pair(joint: str) -> dict[int, int]:
    """Keypoint indices by side: +1 the person's left, -1 the right."""
    return {1: _KP[f"left_{joint}"], -1: _KP[f"right_{joint}"]}


_EYE, _EAR, _SHOULDER, _ELBOW, _WRIST, _HIP, _KNEE, _ANKLE = (
    _pair(j) for j in ("eye", "ear", "shoulder", "elbow", "wrist", "hip", "knee", "ankle")
)

# Body parts of one person; a pixel of person p showing part k has id p * _PART_SLOTS + k.
_TORSO, _NECK, _HEAD = 0, 1, 2
_EAR_PART = {1: 3, -1: 4}
_UPPER_ARM, _FOREARM, _HAND = {1: 5, -1: 6}, {1: 7, -1: 8}, {1: 9, -1: 10}
_THIGH, _SHIN, _FOOT = {1: 11, -1: 12}, {1: 13, -1: 14}, {1: 15, -1: 16}
_PART_SLOTS = 32
_OCCLUDER_ID = 100_000  # occluder j has id _OCCLUDER_ID + j; background is -1

# Facing thresholds: a surface point counts as turned to the camera while the
# camera-space depth component of its outward normal is below these.
_FACE_FACING = 0.2  # nose and eyes (the nose stays visible in a strict profile)
_EAR_FACING = 0.3  # ears: both seen from the front and from behind, one in profile
_SIDE_FACING = 0.75  # shoulders/hips seen on the torso unless that side is turned away

_SHIFT = 4  # fixed-point drawing: 1/16 pixel
_ONE = float(1 << _SHIFT)
_ANGLES = np.linspace(0, 2 * np.pi, 14, endpoint=False)
_UNIT_CIRCLE = np.stack([np.cos(_ANGLES), np.sin(_ANGLES)], axis=1)

# Skin tones (BGR) and hair colours.
_SKIN = np.array(
    [
        [189, 208, 241],
        [160, 188, 224],
        [128, 164, 210],
        [102, 138, 190],
        [74, 105, 160],
        [52, 78, 120],
        [40, 58, 92],
        [170, 196, 232],
    ],
    dtype=np.float64,
)
_HAIR = np.array(
    [
        [20, 20, 25],
        [30, 40, 60],
        [40, 70, 110],
        [70, 130, 190],
        [150, 150, 150],
        [35, 35, 90],
        [60, 60, 60],
        [200, 210, 220],
    ],
    dtype=np.float64,
)


# --------------------------------------------------------------------------- geometry


def _rot(axis: Sequence[float], deg: float) -> np.ndarray:
    """Rotation matrix about ``axis`` (right-handed) by ``deg`` degrees."""
    x, y, z = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    t = np.radians(deg)
    c, s, C = np.cos(t), np.sin(t), 1.0 - np.cos(t)
    return np.array(
        [
            [c + x * x * C, x * y * C - z * s, x * z * C + y * s],
            [y * x * C + z * s, c + y * y * C, y * z * C - x * s],
            [z * x * C - y * s, z * y * C + x * s, c + z * z * C],
        ]
    )


# Body frame: x = the person's left, y = up, z = forward (the way the person faces).
_L, _U, _F = np.eye(3)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-9)


def _limb_dir(flex: float, abd: float, side: int) -> np.ndarray:
    """Direction of a limb hanging down, raised forward by ``flex`` and sideways by ``abd`` degrees."""
    a, b = np.radians(flex), np.radians(abd)
    d0 = np.array([0.0, -np.cos(a), np.sin(a)])
    return np.cos(b) * d0 + np.sin(b) * side * _L


def _bend(d: np.ndarray, pref: np.ndarray, deg: float, fallback: np.ndarray) -> np.ndarray:
    """Rotate ``d`` by ``deg`` towards ``pref`` (made perpendicular to ``d``)."""
    w = pref - np.dot(pref, d) * d
    if np.linalg.norm(w) < 0.2:
        w = fallback - np.dot(fallback, d) * d
    w = _unit(w)
    t = np.radians(deg)
    return np.cos(t) * d + np.sin(t) * w


def _ellipsoid_surface(direction: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """The point of an axis-aligned ellipsoid (centre 0) in ``direction``."""
    d = _unit(direction)
    return d / np.sqrt(np.sum((d / radii) ** 2))


# --------------------------------------------------------------------------- people


@dataclass
class _Part:
    depth: float
    index: int
    kind: str  # "limb", "torso", "head", "ear"
    data: dict


@dataclass
class _Person:
    keypoints: np.ndarray  # (17, 2) image pixels
    owners: list[set[int]]  # per keypoint: part indices that show it
    parts: list[_Part]
    box: np.ndarray  # x0, y0, x1, y1 of the drawn figure (approximate)
    height_px: float


def _uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _sample_pose(rng: np.random.Generator) -> dict[str, Any]:
    """Joint angles (degrees) of a random, human-like pose."""
    u = lambda lo, hi: _uniform(rng, lo, hi)  # noqa: E731
    n = lambda sd: float(rng.normal(0.0, sd))  # noqa: E731
    arm = {
        s: {"a": n(10) + 3, "b": u(4, 18), "e": u(0, 25), "f": 1.0, "up": 0.0, "in": u(0, 0.5)}
        for s in (1, -1)
    }
    leg = {s: {"h": n(4), "g": u(0, 10), "k": u(0, 10)} for s in (1, -1)}
    pose = {"pitch": n(4), "roll": n(3), "twist": n(6), "arm": arm, "leg": leg}
    kinds = (
        "stand", "walk", "run", "raise", "wave", "reach", "squat",
        "sit", "bend", "kick", "hips", "cross", "random",
    )  # fmt: skip
    weights = np.array([18, 18, 7, 8, 7, 6, 6, 5, 6, 4, 4, 3, 8], dtype=np.float64)
    kind = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
    s = 1 if rng.random() < 0.5 else -1  # the side doing the one-sided thing
    if kind == "walk":
        leg[s].update(h=u(12, 32), k=u(0, 15))
        leg[-s].update(h=-u(5, 20), k=u(5, 35))
        arm[-s].update(a=u(10, 35), e=u(10, 45))
        arm[s].update(a=-u(5, 30), e=u(0, 30))
    elif kind == "run":
        leg[s].update(h=u(35, 70), k=u(30, 85))
        leg[-s].update(h=-u(10, 30), k=u(60, 110))
        arm[-s].update(a=u(20, 60), e=u(70, 100))
        arm[s].update(a=-u(15, 45), e=u(70, 100))
        pose["pitch"] = u(5, 20)
    elif kind == "raise":
        for side in (s, -s) if rng.random() < 0.5 else (s,):
            if rng.random() < 0.5:
                arm[side].update(a=u(100, 175), b=u(0, 35), e=u(0, 50))
            else:
                arm[side].update(a=u(-10, 30), b=u(90, 170), e=u(0, 50), up=1.0)
    elif kind == "wave":
        arm[s].update(a=u(-10, 40), b=u(50, 110), e=u(60, 130), up=1.5, f=u(0, 0.5))
    elif kind == "reach":
        arm[s].update(a=u(60, 110), b=u(0, 40), e=u(0, 25))
        if rng.random() < 0.3:
            arm[-s].update(a=u(60, 110), b=u(0, 30), e=u(0, 40))
    elif kind == "squat":
        for side in (1, -1):
            leg[side].update(h=u(50, 110), g=u(5, 25), k=u(60, 130))
            arm[side].update(a=u(20, 90), e=u(10, 90))
        pose["pitch"] = u(5, 40)
    elif kind == "sit":
        for side in (1, -1):
            leg[side].update(h=u(75, 100), g=u(0, 15), k=u(70, 100))
            arm[side].update(a=u(10, 60), e=u(30, 90))
        pose["pitch"] = u(-5, 15)
    elif kind == "bend":
        pose["pitch"] = u(30, 75)
        for side in (1, -1):
            arm[side].update(a=pose["pitch"] + n(15), e=u(0, 30))
            leg[side].update(h=u(-5, 10), k=u(0, 20))
    elif kind == "kick":
        leg[s].update(h=u(40, 95), k=u(0, 50))
        leg[-s].update(k=u(0, 20))
        for side in (1, -1):
            arm[side].update(b=u(20, 80), e=u(0, 60))
        pose["roll"] = n(6)
    elif kind == "hips":
        for side in (1, -1):
            arm[side].update(a=u(-10, 10), b=u(35, 55), e=u(90, 120), f=0.2, **{"in": 1.0})
    elif kind == "cross":
        for side in (1, -1):
            arm[side].update(a=u(20, 40), b=u(0, 10), e=u(100, 130), f=0.4, **{"in": 1.0})
    elif kind == "random":
        for side in (1, -1):
            arm[side].update(a=u(-40, 170), b=u(0, 120), e=u(0, 140), up=u(0, 1))
            leg[side].update(h=u(-25, 70), g=u(0, 35), k=u(0, 100))
        pose["pitch"] = u(-10, 30)
    for side in (1, -1):
        for key in ("a", "b", "e"):
            arm[side][key] += n(4)
        for key in ("h", "g", "k"):
            leg[side][key] += n(3)
        arm[side]["e"] = float(np.clip(arm[side]["e"], 0, 150))
        arm[side]["b"] = float(np.clip(arm[side]["b"], -10, 175))
        leg[side]["k"] = float(np.clip(leg[side]["k"], 0, 150))
        leg[side]["g"] = float(np.clip(leg[side]["g"], -8, 45))
    pose["kind"] = kind
    pose["head"] = (n(18), n(8), n(6))  # yaw, pitch, roll relative to the torso
    return pose


def _random_colour(
    rng: np.random.Generator, sat: tuple[int, int], val: tuple[int, int]
) -> np.ndarray:
    hsv = np.uint8([[[rng.integers(0, 180), rng.integers(*sat), rng.integers(*val)]]])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float64)


@dataclass(frozen=True)
class Difficulty:
    """How hard the scenes are: people per image, truncation, close-ups, sizes, overlap, occluders."""

    people_probs: tuple[float, ...]  # P(1 person), P(2), ...
    truncate_prob: float  # extra people cut by the image border (20-80% outside)
    closeup_prob: float  # main person larger than the image, cut at the bottom
    main_size: tuple[float, float]  # main person's height / image height
    other_size: tuple[float, float]  # others: lo + (hi - lo) * u^1.3
    overlap_prob: float  # placed next to someone already placed, overlapping
    occluder_probs: tuple[float, ...]  # P(0 occluders), P(1), ...


DIFFICULTIES = {
    # Everything COCO-like: crowds of up to 4, truncation, close-ups, small people, occluders.
    "standard": Difficulty(
        (0.35, 0.3, 0.2, 0.15), 0.3, 0.12, (0.45, 0.95), (0.25, 0.95), 0.4, (0.45, 0.4, 0.15)
    ),
    # The quick start's: 1-3 larger people inside the image, fewer overlaps and occluders.
    "easy": Difficulty(
        (0.55, 0.35, 0.1), 0.0, 0.0, (0.55, 0.95), (0.45, 0.9), 0.15, (0.7, 0.25, 0.05)
    ),
}


def difficulty_preset(name: str) -> Difficulty:
    if name not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {', '.join(DIFFICULTIES)}, got {name!r}")
    return DIFFICULTIES[name]


def _build_person(
    rng: np.random.Generator,
    H: int,
    W: int,
    main: bool,
    placed: list[_Person],
    light: np.ndarray,
    level: Difficulty = DIFFICULTIES["standard"],
) -> _Person:
    """Sample a person (body, pose, view, size, place, clothes) and list its parts to draw."""
    u = lambda lo, hi: _uniform(rng, lo, hi)  # noqa: E731
    # Body proportions, in units of the standing height.
    girth = u(0.85, 1.3)
    sh_half, hip_half = u(0.095, 0.125), u(0.07, 0.09)
    torso_len, neck_len = u(0.27, 0.32), u(0.035, 0.05)
    head_h = u(0.058, 0.07)
    head_r = np.array([head_h * u(0.76, 0.86), head_h, head_h * u(0.85, 0.95)])
    upper_arm, forearm, hand = u(0.16, 0.19), u(0.14, 0.165), u(0.05, 0.065)
    thigh, shin, foot = u(0.23, 0.26), u(0.22, 0.25), u(0.065, 0.085)
    standing = thigh + shin + 0.025 + torso_len + neck_len + 0.8 * head_h + head_h

    pose = _sample_pose(rng)
    # View: yaw about the vertical (0 = facing the camera, +90 = facing image right).
    r = rng.random()
    if r < 0.42:
        yaw = float(rng.normal(0, 15))
    elif r < 0.72:
        yaw = (1 if rng.random() < 0.5 else -1) * u(65, 100)
    elif r < 0.9:
        yaw = (1 if rng.random() < 0.5 else -1) * u(25, 65)
    else:
        yaw = 180.0 + float(rng.normal(0, 20))
    roll = float(rng.normal(0, 4)) if rng.random() < 0.9 else u(-25, 25)
    cam_pitch = float(np.clip(rng.normal(0, 6), -12, 12))
    # Body frame -> camera frame (x right, y down, z away from the camera).
    view = (
        _rot((0, 0, 1), roll)
        @ _rot((1, 0, 0), cam_pitch)
        @ np.diag([1.0, -1.0, -1.0])
        @ _rot(_U, yaw)
    )

    # Skeleton in the body frame, pelvis at the origin.
    R_t = _rot(_L, pose["pitch"]) @ _rot(_F, pose["roll"]) @ _rot(_U, pose["twist"])
    hy, hp, hr = pose["head"]
    R_h = R_t @ _rot(_U, hy) @ _rot(_L, -hp) @ _rot(_F, hr)
    neck_base = R_t @ (torso_len * _U)
    neck_top = neck_base + neck_len * (R_t @ _rot(_L, 0.4 * pose["pitch"]) @ _U)
    head_c = neck_top + R_h @ np.array([0.0, 0.78 * head_h, 0.12 * head_r[2]])
    pts: dict[str, np.ndarray] = {"neck_base": neck_base, "neck_top": neck_top, "head": head_c}
    kp3 = np.zeros((17, 3))
    kp3[_NOSE] = head_c + R_h @ (1.06 * _ellipsoid_surface(np.array([0, -0.08, 1.0]), head_r))
    normals = {_NOSE: R_h @ _unit(np.array([0, -0.08, 1.0]))}
    for s in (1, -1):
        d_eye = np.array([0.42 * s, 0.16, 0.9])
        kp3[_EYE[s]] = head_c + R_h @ _ellipsoid_surface(d_eye, head_r)
        normals[_EYE[s]] = R_h @ _unit(d_eye)
        d_ear = np.array([1.0 * s, 0.02, -0.05])
        kp3[_EAR[s]] = head_c + R_h @ _ellipsoid_surface(d_ear, head_r)
        normals[_EAR[s]] = R_h @ _unit(d_ear)
        a = pose["arm"][s]
        sho = neck_base + R_t @ np.array([s * sh_half, -0.03, 0.0])
        d1 = _limb_dir(a["a"], a["b"], s)
        pref = a["f"] * _F + a["up"] * _U - a["in"] * s * _L
        d2 = _bend(d1, pref, a["e"], _F)
        elb = sho + upper_arm * (R_t @ d1)
        wri = elb + forearm * (R_t @ d2)
        d3 = _bend(d2, pref, u(0, 25), _F)
        kp3[_SHOULDER[s]], kp3[_ELBOW[s]], kp3[_WRIST[s]] = sho, elb, wri
        pts[f"hand{s}"] = wri + hand * (R_t @ d3)
        g = pose["leg"][s]
        hip = s * hip_half * _L
        t1 = _limb_dir(g["h"], g["g"], s)
        t2 = _rot(_L, g["k"]) @ t1
        knee = hip + thigh * t1
        ank = knee + shin * t2
        fwd = _F - np.dot(_F, t2) * t2
        fdir = _unit(fwd) if np.linalg.norm(fwd) > 0.2 else _unit(-_U - np.dot(-_U, t2) * t2)
        kp3[_HIP[s]], kp3[_KNEE[s]], kp3[_ANKLE[s]] = hip, knee, ank
        pts[f"heel{s}"] = ank + 0.02 * t2 - 0.015 * fdir
        pts[f"toe{s}"] = ank + 0.02 * t2 + foot * fdir

    # Size and place: ``scale`` pixels per body unit; some people cross the image border
    # and some main people are close-ups cut at the bottom edge (upper body only).
    closeup = main and rng.random() < level.closeup_prob
    if closeup:
        frac = u(0.9, 1.5)
    else:
        lo, hi = level.other_size
        frac = u(*level.main_size) if main else lo + (hi - lo) * float(rng.random()) ** 1.3
    scale = frac * H / standing
    cam_kp = kp3 @ view.T
    cam_pts = {k: view @ v for k, v in pts.items()}
    head_px = head_r * scale
    xy = np.concatenate([cam_kp[:, :2], np.array([p[:2] for p in cam_pts.values()])]) * scale
    top = cam_pts["head"][:2] * scale - head_px.max()
    lo = np.minimum(xy.min(0), top)
    hi = xy.max(0) + np.array([0.03, 0.03]) * scale
    size = hi - lo
    truncated = (not main) and rng.random() < level.truncate_prob
    cut_axis = int(rng.integers(2)) if truncated else -1
    centre = np.empty(2)
    for ax, extent in ((0, W), (1, H)):
        if ax == cut_axis:  # the box centre near a border: 20-80% of the figure outside
            centre[ax] = (extent if rng.random() < 0.5 else 0.0) + u(-0.3, 0.3) * size[ax]
        elif size[ax] < extent:
            centre[ax] = u(size[ax] / 2, extent - size[ax] / 2)
        else:
            centre[ax] = extent / 2 + u(-0.1, 0.1) * (size[ax] - extent)
    if closeup:
        centre[1] = u(0.0, 0.15) * H + size[1] / 2
    if placed and not truncated and rng.random() < level.overlap_prob:
        # Next to someone already placed, so that the two overlap.
        other = placed[int(rng.integers(len(placed)))]
        ocx = (other.box[0] + other.box[2]) / 2
        centre[0] = ocx + (1 if rng.random() < 0.5 else -1) * u(0.15, 0.6) * (
            other.box[2] - other.box[0]
        )
    offset = centre - (lo + hi) / 2
    box = np.concatenate([lo + offset, hi + offset])

    def to_px(p_cam: np.ndarray) -> np.ndarray:
        return p_cam[..., :2] * scale + offset

    kp2 = to_px(cam_kp)

    # Clothes and colours.
    skin = _SKIN[int(rng.integers(len(_SKIN)))] * u(0.9, 1.1)
    shirt = _random_colour(rng, (40, 256), (50, 256))
    trousers = (
        _random_colour(rng, (0, 200), (30, 200))
        if rng.random() < 0.7
        else _random_colour(rng, (100, 256), (60, 256))
    )
    shoes = _random_colour(rng, (0, 120), (20, 110))
    hair = _HAIR[int(rng.integers(len(_HAIR)))] * u(0.85, 1.15)
    sleeves = rng.choice(3, p=[0.5, 0.35, 0.15])  # long, short, none
    shorts = rng.random() < 0.25

    def band_colour(base: np.ndarray) -> np.ndarray:
        lum = 0.114 * base[0] + 0.587 * base[1] + 0.299 * base[2]
        return np.array([245.0, 245.0, 240.0]) if lum < 135 else np.array([25.0, 20.0, 30.0])

    parts: list[_Part] = []

    def limb(index, a3, b3, ra, rb, colour, bias=0.0, side=0):
        pa, pb = to_px(view @ a3), to_px(view @ b3)
        z = 0.5 * ((view @ a3)[2] + (view @ b3)[2]) + bias
        data = {
            "a": pa,
            "b": pb,
            "ra": ra * scale * girth,
            "rb": rb * scale * girth,
            "colour": colour,
        }
        if side:
            data["bands"] = (side, band_colour(colour))
        parts.append(_Part(z, index, "limb", data))

    torso_axis_z = (view @ (R_t @ _L))[2]
    pelvis_axis_z = (view @ _L)[2]
    for s in (1, -1):
        upper_c = shirt if sleeves < 2 else skin
        fore_c = shirt if sleeves == 0 else skin
        limb(_UPPER_ARM[s], kp3[_SHOULDER[s]], kp3[_ELBOW[s]], 0.031, 0.024, upper_c, 0.0, s)
        limb(_FOREARM[s], kp3[_ELBOW[s]], kp3[_WRIST[s]], 0.023, 0.017, fore_c, -0.001, s)
        limb(_HAND[s], kp3[_WRIST[s]], pts[f"hand{s}"], 0.019, 0.017, skin, -0.003)
        limb(_THIGH[s], kp3[_HIP[s]], kp3[_KNEE[s]], 0.05, 0.036, trousers, 0.03, s)
        shin_c = skin if shorts else trousers
        limb(_SHIN[s], kp3[_KNEE[s]], kp3[_ANKLE[s]], 0.034, 0.024, shin_c, 0.029, s)
        limb(_FOOT[s], pts[f"heel{s}"], pts[f"toe{s}"], 0.022, 0.018, shoes, 0.028)
    limb(_NECK, neck_base - 0.02 * (R_t @ _U), neck_top, 0.027, 0.025, skin * 0.92, 0.05)

    # Torso: convex hull of a box-like chest/waist/hip point set, hips in trousers.
    d_chest = 0.06 * girth
    t_local = []
    for s in (1, -1):
        for fz in (1, -1):
            t_local.append(
                R_t @ np.array([s * sh_half * 1.02, torso_len - 0.035, fz * d_chest * 0.8])
            )
            t_local.append(R_t @ np.array([s * sh_half * 0.95, torso_len - 0.09, fz * d_chest]))
            t_local.append(
                R_t @ np.array([s * (hip_half + 0.035) * girth**0.5, 0.1, fz * d_chest * 0.9])
            )
    pelvis_local = []
    for s in (1, -1):
        for fz in (1, -1):
            pelvis_local.append(
                np.array([s * (hip_half + 0.04) * girth**0.5, 0.05, fz * d_chest * 0.9])
            )
            pelvis_local.append(
                np.array([s * (hip_half + 0.035) * girth**0.5, -0.03, fz * d_chest * 0.85])
            )
    pelvis_local.append(np.array([0.0, -0.07, 0.0]))
    cam_t = np.array(t_local + pelvis_local) @ view.T
    hull = cv2.convexHull(to_px(cam_t).astype(np.float32))[:, 0].astype(np.float64)
    hull_p = cv2.convexHull(to_px(np.array(pelvis_local) @ view.T).astype(np.float32))[:, 0].astype(
        np.float64
    )
    logo = None
    front_z = (view @ (R_t @ _F))[2]
    if front_z < -0.3 and rng.random() < 0.35:
        logo = (to_px(view @ (R_t @ np.array([0.0, torso_len - 0.12, d_chest]))), 0.035 * scale)
    torso_z = float(np.mean(cam_t[:, 2])) + 0.015
    parts.append(
        _Part(
            torso_z,
            _TORSO,
            "torso",
            {"hull": hull, "pelvis": hull_p, "shirt": shirt, "trousers": trousers, "logo": logo},
        )
    )

    # Head: a shaded ellipsoid with hair; ears on the sides that face the camera.
    M_head = view @ R_h
    head_cam = view @ head_c
    hair_dir = _unit(np.array([u(-0.1, 0.1), 0.6, -0.8]))
    facing = {k: float((view @ v)[2]) for k, v in normals.items()}
    head_data = {
        "centre": to_px(head_cam),
        "M": M_head,
        "radii": head_r * scale,
        "skin": skin,
        "hair": hair if rng.random() < 0.92 else None,
        "hair_dir": hair_dir,
        "hair_cut": u(-0.3, 0.0),
        "light": light,
        "nose": kp2[_NOSE] if facing[_NOSE] < _FACE_FACING else None,
        "eyes": [kp2[_EYE[s]] for s in (1, -1) if facing[_EYE[s]] < _FACE_FACING],
        "mouth": [
            to_px(
                view @ (head_c + R_h @ _ellipsoid_surface(np.array([0.3 * s, -0.45, 0.85]), head_r))
            )
            for s in (1, -1)
        ]
        if facing[_NOSE] < 0.0
        else None,
    }
    head_z = float(head_cam[2]) - 0.02
    parts.append(_Part(head_z, _HEAD, "head", head_data))
    for s in (1, -1):
        if facing[_EAR[s]] < _EAR_FACING:
            ear = {
                "centre": kp2[_EAR[s]],
                "axes": (0.2 * head_r[0] * scale, 0.32 * head_r[1] * scale),
                "colour": skin * 0.85,
            }
            parts.append(_Part(head_z - 1e-4, _EAR_PART[s], "ear", ear))

    # Which parts show each keypoint (a facing test first where a surface can turn away).
    owners: list[set[int]] = [set() for _ in range(17)]
    if facing[_NOSE] < _FACE_FACING:
        owners[_NOSE] = {_HEAD}
    for s in (1, -1):
        if facing[_EYE[s]] < _FACE_FACING:
            owners[_EYE[s]] = {_HEAD}
        if facing[_EAR[s]] < _EAR_FACING:
            owners[_EAR[s]] = {_HEAD, _EAR_PART[s]}
        owners[_SHOULDER[s]] = {_UPPER_ARM[s]} | (
            {_TORSO} if s * torso_axis_z < _SIDE_FACING else set()
        )
        owners[_ELBOW[s]] = {_UPPER_ARM[s], _FOREARM[s]}
        owners[_WRIST[s]] = {_FOREARM[s], _HAND[s]}
        owners[_HIP[s]] = {_THIGH[s]} | ({_TORSO} if s * pelvis_axis_z < _SIDE_FACING else set())
        owners[_KNEE[s]] = {_THIGH[s], _SHIN[s]}
        owners[_ANKLE[s]] = {_SHIN[s], _FOOT[s]}
    return _Person(kp2, owners, parts, box, frac * H)


# --------------------------------------------------------------------------- drawing


def _fixed(pts: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(pts) * _ONE).astype(np.int32)


def _fill(img: np.ndarray, ids: np.ndarray | None, pts: np.ndarray, colour, pid: int = 0) -> None:
    p = _fixed(pts)
    cv2.fillPoly(img, [p], tuple(float(c) for c in np.clip(colour, 0, 255)), cv2.LINE_AA, _SHIFT)
    if ids is not None:
        cv2.fillPoly(ids, [p], int(pid), cv2.LINE_8, _SHIFT)


def _capsule(a: np.ndarray, b: np.ndarray, ra: float, rb: float) -> np.ndarray:
    pts = np.concatenate([a + max(ra, 0.3) * _UNIT_CIRCLE, b + max(rb, 0.3) * _UNIT_CIRCLE])
    return cv2.convexHull(pts.astype(np.float32))[:, 0].astype(np.float64)


def _ellipse(c: np.ndarray, ax: float, ay: float, angle: float = 0.0, n: int = 18) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x, y = ax * np.cos(t), ay * np.sin(t)
    ca, sa = np.cos(angle), np.sin(angle)
    return np.stack([c[0] + x * ca - y * sa, c[1] + x * sa + y * ca], axis=1)


def _draw_limb(img, ids, pid, d, light2):
    a, b, ra, rb, colour = d["a"], d["b"], d["ra"], d["rb"], d["colour"]
    _fill(img, ids, _capsule(a, b, ra, rb), colour * 0.62, pid)
    axis = b - a
    normal = np.array([-axis[1], axis[0]]) / max(float(np.linalg.norm(axis)), 1e-6)
    if np.dot(normal, light2) < 0:
        normal = -normal
    _fill(
        img,
        None,
        _capsule(a + 0.2 * ra * normal, b + 0.2 * rb * normal, 0.72 * ra, 0.72 * rb),
        colour,
    )
    if "bands" in d:
        _draw_bands(img, a, b, ra, rb, *d["bands"])
    hi = np.minimum(colour * 1.2 + 25, 255)
    _fill(
        img, None, _capsule(a + 0.5 * ra * normal, b + 0.5 * rb * normal, 0.22 * ra, 0.22 * rb), hi
    )


def _draw_bands(img, a, b, ra, rb, side: int, colour) -> None:
    """The left/right marker: bands slanted 45 degrees to the segment, one way on the left
    limbs and the mirror way on the right ones (a left- and a right-handed helix).

    The slant is measured from the segment's axis, so it is the same whichever end the
    axis starts from and under any rotation, and a horizontal flip turns left bands into
    right ones: the cue agrees with the keypoint labels after flip augmentation too.
    """
    axis = b - a
    length = float(np.linalg.norm(axis))
    if length < 1e-6:
        return
    e = axis / length
    n0 = np.array([-e[1], e[0]])  # never flipped: the slant's sign must not depend on light
    w = 0.85 * min(ra, rb)
    period = max(2.2 * 0.5 * (ra + rb), 3.0)
    width = max(0.42 * period, 1.0)
    # Bands placed symmetrically about the middle: the same set from either end.
    reach = 0.5 * length - 0.5 * width - w
    if reach < 0:
        return
    k = int(reach // period)
    corners = [(-0.5 * width, -w), (0.5 * width, -w), (0.5 * width, w), (-0.5 * width, w)]
    for t in 0.5 * length + period * np.arange(-k, k + 1):
        c = a + t * e
        pts = np.array([c + (dt + side * v) * e + v * n0 for dt, v in corners])
        _fill(img, None, pts, colour)


def _draw_torso(img, ids, pid, d, light2):
    hull = d["hull"]
    _fill(img, ids, hull, d["shirt"] * 0.66, pid)
    c = hull.mean(0)
    size = float(np.ptp(hull, axis=0).max())
    _fill(img, None, c + (hull - c) * 0.84 + 0.05 * size * light2, d["shirt"])
    pelvis = d["pelvis"]
    pc = pelvis.mean(0)
    _fill(img, None, pelvis, d["trousers"] * 0.7)
    _fill(img, None, pc + (pelvis - pc) * 0.85 + 0.03 * size * light2, d["trousers"])
    if d["logo"] is not None:
        centre, r = d["logo"]
        _fill(img, None, _ellipse(centre, r, r, 0.0, 12), 255 - d["shirt"])


def _draw_head(img, ids, pid, d):
    H, W = img.shape[:2]
    cx, cy = d["centre"]
    radii = d["radii"]
    R = float(radii.max()) + 2.0
    x0, x1 = max(int(np.floor(cx - R)), 0), min(int(np.ceil(cx + R)), W - 1)
    y0, y1 = max(int(np.floor(cy - R)), 0), min(int(np.ceil(cy + R)), H - 1)
    if x0 <= x1 and y0 <= y1:
        M = d["M"]
        A = M @ np.diag(1.0 / radii**2) @ M.T
        X, Y = np.meshgrid(np.arange(x0, x1 + 1) - cx, np.arange(y0, y1 + 1) - cy)
        a = A[2, 2]
        b = A[0, 2] * X + A[1, 2] * Y
        q = A[0, 0] * X * X + 2 * A[0, 1] * X * Y + A[1, 1] * Y * Y
        Q = (a * q - b * b) / a  # the silhouette: Q <= 1
        rho = np.sqrt(np.maximum(Q, 0))
        alpha = np.clip((1.0 - rho) * float(radii.min()) + 0.5, 0.0, 1.0)
        Z = (-b - np.sqrt(np.maximum(a * (1.0 - Q), 0))) / a
        n = np.stack([X, Y, Z], -1) @ A.T
        n /= np.linalg.norm(n, axis=-1, keepdims=True) + 1e-9
        shade = 0.5 + 0.55 * np.clip(n @ d["light"], 0, 1)
        colour = np.broadcast_to(d["skin"], n.shape)
        if d["hair"] is not None:
            hair = (n @ (M @ d["hair_dir"])) > d["hair_cut"]
            colour = np.where(hair[..., None], d["hair"], colour)
        colour = np.clip(colour * shade[..., None], 0, 255)
        patch = img[y0 : y1 + 1, x0 : x1 + 1].astype(np.float64)
        al = alpha[..., None]
        img[y0 : y1 + 1, x0 : x1 + 1] = np.round(patch * (1 - al) + colour * al).astype(np.uint8)
        ids[y0 : y1 + 1, x0 : x1 + 1][alpha >= 0.5] = pid
    # Face features (image only; the pixels stay the head's).
    rw = float(radii[0])
    dark = np.array([30.0, 25.0, 25.0])
    for eye in d["eyes"]:
        if rw >= 6:
            _fill(img, None, _ellipse(eye, 0.2 * rw, 0.13 * rw), np.array([235.0, 235.0, 235.0]))
        _fill(img, None, _ellipse(eye, max(0.1 * rw, 0.6), max(0.1 * rw, 0.6), 0.0, 10), dark)
    if d["nose"] is not None:
        r = max(0.11 * rw, 0.6)
        _fill(img, ids, _ellipse(d["nose"], r, r, 0.0, 10), d["skin"] * 0.72, pid)
    if d["mouth"] is not None and rw >= 5:
        a, b = d["mouth"]
        _fill(img, None, _capsule(a, b, 0.05 * rw, 0.05 * rw), np.array([60.0, 50.0, 150.0]))


def _draw_person(img: np.ndarray, ids: np.ndarray, person: _Person, p: int, light2: np.ndarray):
    for part in sorted(person.parts, key=lambda q: (-q.depth, q.index)):
        pid = p * _PART_SLOTS + part.index
        if part.kind == "limb":
            _draw_limb(img, ids, pid, part.data, light2)
        elif part.kind == "torso":
            _draw_torso(img, ids, pid, part.data, light2)
        elif part.kind == "head":
            _draw_head(img, ids, pid, part.data)
        else:
            e = part.data
            _fill(img, ids, _ellipse(e["centre"], e["axes"][0], e["axes"][1]), e["colour"], pid)


# --------------------------------------------------------------------------- backgrounds


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


# --------------------------------------------------------------------------- one image


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

    # Camera effects: slight blur, sensor noise, exposure.
    if rng.random() < 0.4:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 0.8))
    noise = rng.standard_normal((H, W), dtype=np.float32) * rng.uniform(1.5, 5.0)
    gain, bias = rng.uniform(0.85, 1.15), rng.uniform(-15, 15)
    img = (
        np.clip(img.astype(np.float32) * gain + bias + noise[..., None], 0, 255)
        .round()
        .astype(np.uint8)
    )

    out = SyntheticImage(image_id, f"{image_id:012d}.jpg", split, img, ids, people=count)
    for p, person in enumerate(people):
        lo = p * _PART_SLOTS
        mask = (ids >= lo) & (ids < lo + _PART_SLOTS)
        area = int(mask.sum())
        if area < MIN_AREA:
            continue
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
            "id": image_id * 100 + len(out.annotations),
        }
        out.annotations.append(ann)
        out.masks.append(mask)
    return out


# --------------------------------------------------------------------------- detections


def _detections(
    seed: int, index: int, image_id: int, anns: list[dict], H: int, W: int
) -> list[dict]:
    """Detector-like person boxes for one val image, from its ground truth with jitter."""
    rng = _rng(seed, _DETECTION_STREAM, index)
    dets = []
    for ann in anns:
        x, y, w, h = ann["bbox"]
        small = np.exp(-ann["area"] / 1500.0)
        p_miss = 0.03 + 0.25 * small + (0.1 if ann["num_keypoints"] < 5 else 0.0)
        if rng.random() < p_miss:
            continue
        cx = x + w / 2 + rng.normal(0, 0.03) * w
        cy = y + h / 2 + rng.normal(0, 0.03) * h
        w2, h2 = w * np.exp(rng.normal(0.02, 0.05)), h * np.exp(rng.normal(0.02, 0.05))
        x0, y0 = max(cx - w2 / 2, 0.0), max(cy - h2 / 2, 0.0)
        x1, y1 = min(cx + w2 / 2, float(W)), min(cy + h2 / 2, float(H))
        if x1 - x0 < 1 or y1 - y0 < 1:
            continue
        if rng.random() < 0.06 + 0.3 * small:
            score = rng.uniform(0.2, 0.6)
        else:
            score = 0.6 + 0.4 * rng.beta(4.0, 1.3)
        dets.append((score, [x0, y0, x1 - x0, y1 - y0]))
    for _ in range(int(rng.poisson(0.3))):  # false positives
        h = rng.uniform(0.12, 0.6) * H
        w = h * rng.uniform(0.3, 0.8)
        x0, y0 = rng.uniform(0, max(W - w, 1.0)), rng.uniform(0, max(H - h, 1.0))
        dets.append((rng.uniform(0.03, 0.45), [x0, y0, min(w, W - x0), min(h, H - y0)]))
    dets.sort(key=lambda d: -d[0])
    return [
        {
            "image_id": image_id,
            "category_id": 1,
            "bbox": [round(float(v), 2) for v in box],
            "score": round(float(score), 5),
        }
        for score, box in dets
    ]


# --------------------------------------------------------------------------- dataset


def _render_and_write(args: tuple) -> tuple[dict, list[dict], int]:
    seed, split, index, image_size, image_dir, difficulty = args
    cv2.setNumThreads(1)
    r = render_synthetic_image(seed, split, index, image_size, difficulty)
    path = Path(image_dir) / r.file_name
    if not cv2.imwrite(str(path), r.image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
        raise OSError(f"could not write {path}")
    H, W = r.image.shape[:2]
    entry = {
        "license": 1,
        "file_name": r.file_name,
        "coco_url": "",
        "height": H,
        "width": W,
        "date_captured": "",
        "flickr_url": "",
        "id": r.image_id,
    }
    return entry, r.annotations, r.people


def _dataset_json(split: str, seed: int, image_size, images: list, annotations: list) -> dict:
    spec = load_keypoint_spec("coco")
    if tuple(spec.keypoints) != _COCO_NAMES:
        raise RuntimeError(
            "the built-in coco keypoint spec no longer lists COCO's 17 keypoints in order"
        )
    return {
        "info": {
            "description": f"psapose synthetic COCO-keypoint dataset ({split})",
            "url": "",
            "version": str(GENERATOR_VERSION),
            "year": 2017,
            "contributor": "psapose.data.synthetic",
            "date_created": "",
            "seed": int(seed),
            "split": split,
            "image_size": [int(image_size[0]), int(image_size[1])],
        },
        "licenses": [{"url": "https://opensource.org/licenses/MIT", "id": 1, "name": "MIT"}],
        "images": images,
        "annotations": annotations,
        "categories": [spec.coco_category()],
    }


def _write_json(path: Path, data: Any) -> None:
    # Bytes, not text: no platform newline translation, so the files are identical everywhere.
    path.write_bytes((json.dumps(data, separators=(",", ":"), ensure_ascii=True) + "\n").encode())


def _owned_paths(out: Path) -> list[Path]:
    return [
        out / "annotations" / "person_keypoints_train2017.json",
        out / "annotations" / "person_keypoints_val2017.json",
        out / "person_detection_results" / DETECTION_FILE,
    ]


def generate_synthetic_coco(
    out_dir: str | os.PathLike,
    images: int = 500,
    val_images: int | None = None,
    seed: int = 0,
    image_size: Sequence[int] = DEFAULT_IMAGE_SIZE,
    *,
    difficulty: str = "standard",
    force: bool = False,
    workers: int = 1,
) -> dict[str, Any]:
    """Write the synthetic dataset under ``out_dir`` in the official COCO layout.

    Args:
        images: training images; ``val_images`` defaults to ``max(1, images // 4)``.
        seed: a non-negative integer; the same arguments give byte-identical files.
        image_size: (H, W) of every image.
        force: write into a non-empty ``out_dir``, replacing the dataset files
            (the three JSON files and the ``.jpg`` files of the two image folders);
            without it a non-empty ``out_dir`` raises ``FileExistsError``.
        workers: processes rendering images, used from 64 images on (the output
            does not depend on it).

    Returns:
        A summary: per split images, people, labelled/visible/occluded keypoint
        counts and file paths, the detection count, totals and the time taken.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    val_images = max(1, images // 4) if val_images is None else val_images
    counts = {"train2017": int(images), "val2017": int(val_images)}
    for split, n in counts.items():
        if not 0 <= n <= _MAX_IMAGES:
            raise ValueError(f"{split}: image count {n} out of range [0, {_MAX_IMAGES}]")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    difficulty_preset(difficulty)  # fail before writing anything
    image_size = tuple(int(v) for v in image_size)
    if len(image_size) != 2 or min(image_size) < 32:
        raise ValueError(f"image_size must be (H, W) with both at least 32, got {image_size}")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise FileExistsError(
                f"{out} is not empty; choose a new directory or pass force=True (--force) to overwrite"
            )
        for path in _owned_paths(out):
            path.unlink(missing_ok=True)
        for split in SPLITS:
            folder = out / "images" / split
            if folder.is_dir():
                for jpg in folder.glob("*.jpg"):
                    jpg.unlink()
    for sub in ("annotations", "person_detection_results", *(f"images/{s}" for s in SPLITS)):
        (out / sub).mkdir(parents=True, exist_ok=True)

    summary: dict[str, Any] = {
        "out_dir": str(out),
        "seed": int(seed),
        "image_size": list(image_size),
        "difficulty": difficulty,
    }
    splits: dict[str, Any] = {}
    detections: list[dict] = []
    pool = (
        ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))
        if workers > 1 and sum(counts.values()) >= _MIN_POOL_IMAGES
        else None
    )
    try:
        for split in SPLITS:
            image_dir = out / "images" / split
            jobs = [
                (int(seed), split, i, image_size, str(image_dir), difficulty)
                for i in range(counts[split])
            ]
            if pool is None:
                results = [_render_and_write(job) for job in jobs]
            else:
                results = list(pool.map(_render_and_write, jobs, chunksize=8))
            entries = [r[0] for r in results]
            anns = [a for r in results for a in r[1]]
            vis = np.array([a["keypoints"][2::3] for a in anns], dtype=np.int64).reshape(-1, 17)
            ann_file = out / "annotations" / f"person_keypoints_{split}.json"
            _write_json(ann_file, _dataset_json(split, seed, image_size, entries, anns))
            splits[split] = {
                "images": len(entries),
                "people_drawn": int(sum(r[2] for r in results)),
                "people": len(anns),
                "people_with_keypoints": int((vis > 0).any(1).sum()),
                "keypoints_labelled": int((vis > 0).sum()),
                "keypoints_visible": int((vis == 2).sum()),
                "keypoints_occluded": int((vis == 1).sum()),
                "annotation_file": str(ann_file),
                "image_dir": str(image_dir),
            }
            if split == "val2017":
                H, W = image_size
                for i, r in enumerate(results):
                    detections += _detections(int(seed), i, r[0]["id"], r[1], H, W)
    finally:
        if pool is not None:
            pool.shutdown()
    det_file = out / "person_detection_results" / DETECTION_FILE
    _write_json(det_file, detections)
    labelled = sum(s["keypoints_labelled"] for s in splits.values())
    occluded = sum(s["keypoints_occluded"] for s in splits.values())
    summary.update(
        splits=splits,
        detection_file=str(det_file),
        detections=len(detections),
        images=sum(s["images"] for s in splits.values()),
        people=sum(s["people"] for s in splits.values()),
        keypoints_labelled=labelled,
        fraction_occluded=occluded / max(labelled, 1),
        seconds=time.perf_counter() - t0,
    )
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m psapose.data.synthetic",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"""\
Write a synthetic COCO-keypoint dataset in the official COCO layout:

  OUT/annotations/person_keypoints_train2017.json, person_keypoints_val2017.json
  OUT/images/train2017/000000000001.jpg ...   (ids 1, 2, ...)
  OUT/images/val2017/000001000001.jpg ...     (ids 1000001, 1000002, ...)
  OUT/person_detection_results/{DETECTION_FILE}   (detector-like val boxes)

Each image shows 1-4 articulated people carrying the 17 COCO keypoints, in
random poses and views, on textured backgrounds, with occluding objects.
Visibility flags are exact: 2 visible, 1 covered (occluder, another person,
self-occlusion), 0 outside the image. Left and right limbs carry mirror-image
slanted bands, so the sides are distinguishable, also after flip augmentation.
Image i depends only on (seed, split, i, image size): the same arguments give
byte-identical files.""",
        epilog="example: python -m psapose.data.synthetic data/synthetic --images 500 --seed 0",
    )
    parser.add_argument(
        "out", metavar="OUT", help="output directory (created; must be empty unless --force)"
    )
    parser.add_argument(
        "--images", type=int, default=500, metavar="N", help="training images (default 500)"
    )
    parser.add_argument(
        "--val-images",
        type=int,
        default=None,
        metavar="M",
        help="validation images (default max(1, N // 4))",
    )
    parser.add_argument(
        "--seed", type=int, default=0, metavar="S", help="random seed, >= 0 (default 0)"
    )
    parser.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        default=list(DEFAULT_IMAGE_SIZE),
        metavar=("H", "W"),
        help="image height and width in pixels (default 256 320)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        metavar="K",
        help="rendering processes; the output does not depend on it (default min(4, CPUs))",
    )
    parser.add_argument(
        "--difficulty",
        choices=sorted(DIFFICULTIES),
        default="standard",
        help="standard: up to 4 people, truncation, close-ups, occluders; easy: 1-3 larger "
        "people inside the image (the quick start's)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="write into a non-empty OUT, replacing the dataset's JSON files and JPEGs",
    )
    args = parser.parse_args(argv)
    if args.images < 0 or (args.val_images is not None and args.val_images < 0):
        parser.error("image counts must be >= 0")
    if args.seed < 0:
        parser.error("--seed must be >= 0")
    if min(args.image_size) < 32:
        parser.error("--image-size: both sides must be at least 32")
    try:
        s = generate_synthetic_coco(
            args.out,
            images=args.images,
            val_images=args.val_images,
            seed=args.seed,
            image_size=args.image_size,
            difficulty=args.difficulty,
            force=args.force,
            workers=max(1, args.workers),
        )
    except FileExistsError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    tr, va = s["splits"]["train2017"], s["splits"]["val2017"]
    print(
        f"synthetic COCO keypoints: {tr['images']} train + {va['images']} val images, "
        f"{s['people']} people, {s['keypoints_labelled']} keypoints labelled "
        f"({100 * s['fraction_occluded']:.1f}% occluded), {s['detections']} val detections, "
        f"seed {s['seed']}, {s['image_size'][0]}x{s['image_size'][1]}, "
        f"{s['seconds']:.1f} s -> {s['out_dir']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
