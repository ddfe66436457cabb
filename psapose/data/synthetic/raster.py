"""Drawing a synthetic person: anti-aliased fixed-point polygons, shaded capsules for the
limbs (with the left/right bands), the torso, a shaded ellipsoid head with hair and face
features, and the part map that records which body part each pixel shows."""

from __future__ import annotations

import cv2
import numpy as np

from .person import _PART_SLOTS, _Person

_SHIFT = 4  # fixed-point drawing: 1/16 pixel
_ONE = float(1 << _SHIFT)
_ANGLES = np.linspace(0, 2 * np.pi, 14, endpoint=False)
_UNIT_CIRCLE = np.stack([np.cos(_ANGLES), np.sin(_ANGLES)], axis=1)


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
