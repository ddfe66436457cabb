"""A synthetic person's skeleton: COCO keypoint indices, rotations, body proportions, a
random human-like pose and view, and the 3-D joints they give (the kinematics).

Everything here is in the body frame (x = the person's left, y = up, z = forward) or,
after :func:`_sample_view`, the camera frame (x right, y down, z away from the camera).
Each sampler draws from the image's generator in a fixed order: the synthetic data is a
pure function of the seed only as long as that order never changes.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

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


@dataclass(frozen=True)
class _Body:
    """Body proportions, in units of the standing height."""

    girth: float  # a width factor for the limbs, chest and hips
    sh_half: float  # half the shoulder width
    hip_half: float
    torso_len: float
    neck_len: float
    head_h: float
    head_r: np.ndarray  # the head ellipsoid's radii: (left-right, up-down, front-back)
    upper_arm: float
    forearm: float
    hand: float
    thigh: float
    shin: float
    foot: float

    @property
    def standing(self) -> float:
        """The standing height in these units (close to 1)."""
        return (
            self.thigh
            + self.shin
            + 0.025
            + self.torso_len
            + self.neck_len
            + 0.8 * self.head_h
            + self.head_h
        )


def _sample_body(rng: np.random.Generator) -> _Body:
    """Random body proportions."""
    u = functools.partial(_uniform, rng)
    girth = u(0.85, 1.3)
    sh_half, hip_half = u(0.095, 0.125), u(0.07, 0.09)
    torso_len, neck_len = u(0.27, 0.32), u(0.035, 0.05)
    head_h = u(0.058, 0.07)
    head_r = np.array([head_h * u(0.76, 0.86), head_h, head_h * u(0.85, 0.95)])
    upper_arm, forearm, hand = u(0.16, 0.19), u(0.14, 0.165), u(0.05, 0.065)
    thigh, shin, foot = u(0.23, 0.26), u(0.22, 0.25), u(0.065, 0.085)
    return _Body(
        girth, sh_half, hip_half, torso_len, neck_len, head_h, head_r,
        upper_arm, forearm, hand, thigh, shin, foot,
    )  # fmt: skip


def _sample_view(rng: np.random.Generator) -> np.ndarray:
    """A random view: the rotation from the body frame to the camera frame (x right, y down,
    z away from the camera), from the yaw about the vertical (0 = facing the camera, +90 =
    facing image right), a roll and the camera's pitch."""
    u = functools.partial(_uniform, rng)
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
    return (
        _rot((0, 0, 1), roll)
        @ _rot((1, 0, 0), cam_pitch)
        @ np.diag([1.0, -1.0, -1.0])
        @ _rot(_U, yaw)
    )


@dataclass
class _Skeleton:
    """A person's joints in the body frame, pelvis at the origin."""

    torso: np.ndarray  # the torso's rotation (pitch, roll, twist)
    head_rot: np.ndarray  # the head's rotation (the torso's, then the head's own)
    keypoints: np.ndarray  # (17, 3) the COCO keypoints
    normals: dict[int, np.ndarray]  # outward surface normals at the nose, eyes and ears
    # neck_base, neck_top, head (the head ellipsoid's centre), and per side s:
    # hand{s} (the hand's end), heel{s} and toe{s}
    points: dict[str, np.ndarray]


def _build_skeleton(rng: np.random.Generator, body: _Body, pose: dict[str, Any]) -> _Skeleton:
    """The joints of ``body`` in ``pose`` (draws the hands' bend, left then right)."""
    R_t = _rot(_L, pose["pitch"]) @ _rot(_F, pose["roll"]) @ _rot(_U, pose["twist"])
    hy, hp, hr = pose["head"]
    R_h = R_t @ _rot(_U, hy) @ _rot(_L, -hp) @ _rot(_F, hr)
    neck_base = R_t @ (body.torso_len * _U)
    neck_top = neck_base + body.neck_len * (R_t @ _rot(_L, 0.4 * pose["pitch"]) @ _U)
    head_c = neck_top + R_h @ np.array([0.0, 0.78 * body.head_h, 0.12 * body.head_r[2]])
    points: dict[str, np.ndarray] = {"neck_base": neck_base, "neck_top": neck_top, "head": head_c}
    kp3 = np.zeros((17, 3))
    normals = _face_keypoints(kp3, head_c, R_h, body.head_r)
    for s in (1, -1):
        kp3[_SHOULDER[s]], kp3[_ELBOW[s]], kp3[_WRIST[s]], points[f"hand{s}"] = _arm(
            rng, body, pose["arm"][s], R_t, neck_base, s
        )
        kp3[_HIP[s]], kp3[_KNEE[s]], kp3[_ANKLE[s]], points[f"heel{s}"], points[f"toe{s}"] = _leg(
            body, pose["leg"][s], s
        )
    return _Skeleton(R_t, R_h, kp3, normals, points)


def _face_keypoints(
    kp3: np.ndarray, head_c: np.ndarray, R_h: np.ndarray, head_r: np.ndarray
) -> dict[int, np.ndarray]:
    """Put the nose, eyes and ears on the head ellipsoid into ``kp3``; their outward normals."""
    kp3[_NOSE] = head_c + R_h @ (1.06 * _ellipsoid_surface(np.array([0, -0.08, 1.0]), head_r))
    normals = {_NOSE: R_h @ _unit(np.array([0, -0.08, 1.0]))}
    for s in (1, -1):
        d_eye = np.array([0.42 * s, 0.16, 0.9])
        kp3[_EYE[s]] = head_c + R_h @ _ellipsoid_surface(d_eye, head_r)
        normals[_EYE[s]] = R_h @ _unit(d_eye)
        d_ear = np.array([1.0 * s, 0.02, -0.05])
        kp3[_EAR[s]] = head_c + R_h @ _ellipsoid_surface(d_ear, head_r)
        normals[_EAR[s]] = R_h @ _unit(d_ear)
    return normals


def _arm(
    rng: np.random.Generator,
    body: _Body,
    angles: dict[str, float],
    R_t: np.ndarray,
    neck_base: np.ndarray,
    side: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Shoulder, elbow, wrist and the hand's end of one arm (draws the hand's bend)."""
    sho = neck_base + R_t @ np.array([side * body.sh_half, -0.03, 0.0])
    d1 = _limb_dir(angles["a"], angles["b"], side)
    # The elbow (and the wrist) bend towards this direction.
    pref = angles["f"] * _F + angles["up"] * _U - angles["in"] * side * _L
    d2 = _bend(d1, pref, angles["e"], _F)
    elb = sho + body.upper_arm * (R_t @ d1)
    wri = elb + body.forearm * (R_t @ d2)
    d3 = _bend(d2, pref, _uniform(rng, 0, 25), _F)
    return sho, elb, wri, wri + body.hand * (R_t @ d3)


def _leg(
    body: _Body, angles: dict[str, float], side: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hip, knee, ankle, heel and toe of one leg (the legs hang from the pelvis, not the torso)."""
    hip = side * body.hip_half * _L
    t1 = _limb_dir(angles["h"], angles["g"], side)
    t2 = _rot(_L, angles["k"]) @ t1
    knee = hip + body.thigh * t1
    ank = knee + body.shin * t2
    # The foot points forward, or down the shin's normal where the shin itself points forward.
    fwd = _F - np.dot(_F, t2) * t2
    fdir = _unit(fwd) if np.linalg.norm(fwd) > 0.2 else _unit(-_U - np.dot(-_U, t2) * t2)
    return hip, knee, ank, ank + 0.02 * t2 - 0.015 * fdir, ank + 0.02 * t2 + body.foot * fdir
