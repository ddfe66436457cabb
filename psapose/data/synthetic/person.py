"""One synthetic person, ready to draw: size and place in the image, clothes and colours,
the parts to draw (limbs, torso, head, ears) and which parts show each keypoint; and the
difficulty presets that set how big, how many and how cut the people are.

:func:`_build_person` draws from the image's generator in a fixed order (body, pose,
view, hands, size and place, clothes, logo, hair): keep that order, or the synthetic data
for a seed changes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

from .pose import (
    _ANKLE,
    _EAR,
    _ELBOW,
    _EYE,
    _F,
    _HIP,
    _KNEE,
    _L,
    _NOSE,
    _SHOULDER,
    _U,
    _WRIST,
    _Body,
    _build_skeleton,
    _ellipsoid_surface,
    _sample_body,
    _sample_pose,
    _sample_view,
    _Skeleton,
    _uniform,
    _unit,
)

# Body parts of one person; a pixel of person p showing part k has id p * _PART_SLOTS + k.
_TORSO, _NECK, _HEAD = 0, 1, 2
_EAR_PART = {1: 3, -1: 4}
_UPPER_ARM, _FOREARM, _HAND = {1: 5, -1: 6}, {1: 7, -1: 8}, {1: 9, -1: 10}
_THIGH, _SHIN, _FOOT = {1: 11, -1: 12}, {1: 13, -1: 14}, {1: 15, -1: 16}
_PART_SLOTS = 32

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
    level: Difficulty,
) -> _Person:
    """Sample a person (body, pose, view, size, place, clothes) and list its parts to draw."""
    body = _sample_body(rng)
    pose = _sample_pose(rng)
    view = _sample_view(rng)
    skeleton = _build_skeleton(rng, body, pose)
    cam_kp = skeleton.keypoints @ view.T

    # Size and place: ``scale`` pixels per body unit.
    closeup, frac = _sample_size(rng, main, level)
    scale = frac * H / body.standing
    lo, hi = _figure_extent(cam_kp, skeleton, view, body.head_r, scale)
    centre = _sample_centre(rng, lo, hi, H, W, main, closeup, placed, level)
    offset = centre - (lo + hi) / 2
    box = np.concatenate([lo + offset, hi + offset])
    projection = _Projection(view, scale, offset)
    kp2 = projection.to_px(cam_kp)

    clothes = _sample_clothes(rng)
    parts = _limb_parts(projection, body, skeleton, clothes)
    parts.append(_torso_part(rng, projection, body, skeleton.torso, clothes))
    facing = {k: float((view @ v)[2]) for k, v in skeleton.normals.items()}
    parts += _head_parts(rng, projection, body, skeleton, clothes, light, kp2, facing)
    owners = _keypoint_owners(facing, view, skeleton.torso)
    return _Person(kp2, owners, parts, box, frac * H)


@dataclass(frozen=True)
class _Projection:
    """Camera frame -> image pixels: orthographic, ``scale`` pixels per body unit, then
    ``offset``; ``view`` is the body frame -> camera frame rotation."""

    view: np.ndarray
    scale: float
    offset: np.ndarray

    def to_px(self, p_cam: np.ndarray) -> np.ndarray:
        return p_cam[..., :2] * self.scale + self.offset


def _sample_size(rng: np.random.Generator, main: bool, level: Difficulty) -> tuple[bool, float]:
    """Whether the person is a close-up (main people only: larger than the image, cut at the
    bottom edge, upper body only), and its standing height as a fraction of the image's."""
    closeup = main and rng.random() < level.closeup_prob
    if closeup:
        frac = _uniform(rng, 0.9, 1.5)
    else:
        lo, hi = level.other_size
        frac = (
            _uniform(rng, *level.main_size) if main else lo + (hi - lo) * float(rng.random()) ** 1.3
        )
    return closeup, frac


def _figure_extent(
    cam_kp: np.ndarray, skeleton: _Skeleton, view: np.ndarray, head_r: np.ndarray, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """The drawn figure's top-left and bottom-right corners in pixels, before placing it:
    the keypoints and skeleton points, the top of the head and a margin."""
    cam_pts = {k: view @ v for k, v in skeleton.points.items()}
    head_px = head_r * scale
    xy = np.concatenate([cam_kp[:, :2], np.array([p[:2] for p in cam_pts.values()])]) * scale
    top = cam_pts["head"][:2] * scale - head_px.max()
    lo = np.minimum(xy.min(0), top)
    hi = xy.max(0) + np.array([0.03, 0.03]) * scale
    return lo, hi


def _sample_centre(
    rng: np.random.Generator,
    lo: np.ndarray,
    hi: np.ndarray,
    H: int,
    W: int,
    main: bool,
    closeup: bool,
    placed: list[_Person],
    level: Difficulty,
) -> np.ndarray:
    """The centre of the figure's box in the image: inside it, or crossing a border
    (some extra people), or next to someone already placed so that the two overlap."""
    u = functools.partial(_uniform, rng)
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
    return centre


@dataclass(frozen=True)
class _Clothes:
    """A person's colours (BGR) and what the clothes cover."""

    skin: np.ndarray
    shirt: np.ndarray
    trousers: np.ndarray
    shoes: np.ndarray
    hair: np.ndarray
    sleeves: int  # 0 long, 1 short, 2 none
    shorts: bool


def _sample_clothes(rng: np.random.Generator) -> _Clothes:
    skin = _SKIN[int(rng.integers(len(_SKIN)))] * _uniform(rng, 0.9, 1.1)
    shirt = _random_colour(rng, (40, 256), (50, 256))
    trousers = (
        _random_colour(rng, (0, 200), (30, 200))
        if rng.random() < 0.7
        else _random_colour(rng, (100, 256), (60, 256))
    )
    shoes = _random_colour(rng, (0, 120), (20, 110))
    hair = _HAIR[int(rng.integers(len(_HAIR)))] * _uniform(rng, 0.85, 1.15)
    sleeves = rng.choice(3, p=[0.5, 0.35, 0.15])  # long, short, none
    shorts = rng.random() < 0.25
    return _Clothes(skin, shirt, trousers, shoes, hair, sleeves, shorts)


def _band_colour(base: np.ndarray) -> np.ndarray:
    """The left/right bands' colour on a limb of colour ``base``: light on dark, dark on light."""
    lum = 0.114 * base[0] + 0.587 * base[1] + 0.299 * base[2]
    return np.array([245.0, 245.0, 240.0]) if lum < 135 else np.array([25.0, 20.0, 30.0])


def _limb_part(
    projection: _Projection,
    girth: float,
    index: int,
    a3: np.ndarray,
    b3: np.ndarray,
    ra: float,
    rb: float,
    colour: np.ndarray,
    bias: float = 0.0,
    side: int = 0,
) -> _Part:
    """A tapered limb segment from ``a3`` to ``b3`` (body frame) with end radii ``ra`` and
    ``rb``; its depth is its middle's plus ``bias``. ``side`` (+1 left, -1 right) gives it the
    slanted left/right bands."""
    view, scale = projection.view, projection.scale
    pa, pb = projection.to_px(view @ a3), projection.to_px(view @ b3)
    z = 0.5 * ((view @ a3)[2] + (view @ b3)[2]) + bias
    data = {
        "a": pa,
        "b": pb,
        "ra": ra * scale * girth,
        "rb": rb * scale * girth,
        "colour": colour,
    }
    if side:
        data["bands"] = (side, _band_colour(colour))
    return _Part(z, index, "limb", data)


def _limb_parts(
    projection: _Projection, body: _Body, skeleton: _Skeleton, clothes: _Clothes
) -> list[_Part]:
    """Arms, hands, legs and feet (left then right), then the neck."""
    limb = functools.partial(_limb_part, projection, body.girth)
    kp3, pts, skin = skeleton.keypoints, skeleton.points, clothes.skin
    parts = []
    for s in (1, -1):
        upper_c = clothes.shirt if clothes.sleeves < 2 else skin
        fore_c = clothes.shirt if clothes.sleeves == 0 else skin
        shin_c = skin if clothes.shorts else clothes.trousers
        parts += [
            limb(_UPPER_ARM[s], kp3[_SHOULDER[s]], kp3[_ELBOW[s]], 0.031, 0.024, upper_c, 0.0, s),
            limb(_FOREARM[s], kp3[_ELBOW[s]], kp3[_WRIST[s]], 0.023, 0.017, fore_c, -0.001, s),
            limb(_HAND[s], kp3[_WRIST[s]], pts[f"hand{s}"], 0.019, 0.017, skin, -0.003),
            limb(_THIGH[s], kp3[_HIP[s]], kp3[_KNEE[s]], 0.05, 0.036, clothes.trousers, 0.03, s),
            limb(_SHIN[s], kp3[_KNEE[s]], kp3[_ANKLE[s]], 0.034, 0.024, shin_c, 0.029, s),
            limb(_FOOT[s], pts[f"heel{s}"], pts[f"toe{s}"], 0.022, 0.018, clothes.shoes, 0.028),
        ]
    neck_base, neck_top = pts["neck_base"], pts["neck_top"]
    R_t = skeleton.torso
    parts.append(
        limb(_NECK, neck_base - 0.02 * (R_t @ _U), neck_top, 0.027, 0.025, skin * 0.92, 0.05)
    )
    return parts


def _torso_part(
    rng: np.random.Generator,
    projection: _Projection,
    body: _Body,
    R_t: np.ndarray,
    clothes: _Clothes,
) -> _Part:
    """The torso: convex hull of a box-like chest/waist/hip point set, hips in trousers, and
    sometimes a logo on the chest when the chest faces the camera (a draw only then)."""
    view, to_px = projection.view, projection.to_px
    girth, sh_half, hip_half, torso_len = body.girth, body.sh_half, body.hip_half, body.torso_len
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
        logo = (
            to_px(view @ (R_t @ np.array([0.0, torso_len - 0.12, d_chest]))),
            0.035 * projection.scale,
        )
    torso_z = float(np.mean(cam_t[:, 2])) + 0.015
    shirt, trousers = clothes.shirt, clothes.trousers
    return _Part(
        torso_z,
        _TORSO,
        "torso",
        {"hull": hull, "pelvis": hull_p, "shirt": shirt, "trousers": trousers, "logo": logo},
    )


def _head_parts(
    rng: np.random.Generator,
    projection: _Projection,
    body: _Body,
    skeleton: _Skeleton,
    clothes: _Clothes,
    light: np.ndarray,
    kp2: np.ndarray,
    facing: dict[int, float],
) -> list[_Part]:
    """The head, a shaded ellipsoid with hair and face features, and the ears on the sides
    that face the camera. ``facing``: the camera-depth component of each face keypoint's
    normal (draws the hair: its direction, whether there is any, where it ends)."""
    u = functools.partial(_uniform, rng)
    view, to_px, scale = projection.view, projection.to_px, projection.scale
    head_c, R_h, head_r = skeleton.points["head"], skeleton.head_rot, body.head_r
    M_head = view @ R_h
    head_cam = view @ head_c
    hair_dir = _unit(np.array([u(-0.1, 0.1), 0.6, -0.8]))
    head_data = {
        "centre": to_px(head_cam),
        "M": M_head,
        "radii": head_r * scale,
        "skin": clothes.skin,
        "hair": clothes.hair if rng.random() < 0.92 else None,
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
    parts = [_Part(head_z, _HEAD, "head", head_data)]
    for s in (1, -1):
        if facing[_EAR[s]] < _EAR_FACING:
            ear = {
                "centre": kp2[_EAR[s]],
                "axes": (0.2 * head_r[0] * scale, 0.32 * head_r[1] * scale),
                "colour": clothes.skin * 0.85,
            }
            parts.append(_Part(head_z - 1e-4, _EAR_PART[s], "ear", ear))
    return parts


def _keypoint_owners(facing: dict[int, float], view: np.ndarray, R_t: np.ndarray) -> list[set[int]]:
    """Which parts show each keypoint (a facing test first where a surface can turn away)."""
    torso_axis_z = (view @ (R_t @ _L))[2]
    pelvis_axis_z = (view @ _L)[2]
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
    return owners
