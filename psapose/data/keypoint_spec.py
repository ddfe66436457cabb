"""Dataset descriptions as data: keypoint names, flip pairs, skeleton, OKS sigmas, loss weights.

A dataset is described by a small YAML file (see ``keypoint_specs/coco.yaml``).
Every joint reference is a name, checked at load, so a user's own dataset with
any number of keypoints needs only its own YAML and no code change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import yaml

__all__ = ["BUILTIN_SPECS", "KeypointSpec", "KeypointSpecError", "load_keypoint_spec"]

BUILTIN_SPECS = Path(__file__).resolve().parent / "keypoint_specs"

_REQUIRED = ("keypoints",)
_OPTIONAL = (
    "name",
    "flip_pairs",
    "skeleton",
    "upper_body",
    "lower_body",
    "sigmas",
    "joint_weights",
)


class KeypointSpecError(ValueError):
    """A keypoint description that cannot be used, with the file and the field named."""


@dataclass(frozen=True)
class KeypointSpec:
    """Everything about a keypoint set that is not image data.

    Attributes:
        name: short dataset name.
        keypoints: keypoint names; their order is the channel order of the model.
        flip_pairs: index pairs swapped by a horizontal flip.
        skeleton: index pairs drawn as limbs.
        upper_body / lower_body: index groups for half-body augmentation.
        sigmas: per-keypoint OKS constants (COCO's definition).
        joint_weights: per-keypoint loss weights.
    """

    name: str
    keypoints: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...] = ()
    skeleton: tuple[tuple[int, int], ...] = ()
    upper_body: tuple[int, ...] = ()
    lower_body: tuple[int, ...] = ()
    sigmas: tuple[float, ...] = field(default=())
    joint_weights: tuple[float, ...] = field(default=())

    def __post_init__(self) -> None:
        k = len(self.keypoints)
        # Defaults that depend on the keypoint count: uniform OKS sigma and loss weight.
        if not self.sigmas:
            object.__setattr__(self, "sigmas", (0.05,) * k)
        if not self.joint_weights:
            object.__setattr__(self, "joint_weights", (1.0,) * k)

    @property
    def num_keypoints(self) -> int:
        return len(self.keypoints)

    @cached_property
    def flip_indices(self) -> np.ndarray:
        """``flip_indices[k]`` is the keypoint that ``k`` becomes under a horizontal flip."""
        idx = np.arange(self.num_keypoints)
        for a, b in self.flip_pairs:
            idx[a], idx[b] = b, a
        return idx

    @cached_property
    def sigmas_array(self) -> np.ndarray:
        return np.asarray(self.sigmas, dtype=np.float64)

    @cached_property
    def joint_weights_array(self) -> np.ndarray:
        return np.asarray(self.joint_weights, dtype=np.float32)

    def side(self, index: int) -> str:
        """'left', 'right' or 'center', from the flip pairs (the first of a pair is 'left')."""
        for a, b in self.flip_pairs:
            if index == a:
                return "left"
            if index == b:
                return "right"
        return "center"

    def coco_category(self, category_id: int = 1, supercategory: str = "person") -> dict:
        """The COCO ``categories`` entry for this keypoint set (skeleton 1-based, as COCO writes it)."""
        return {
            "id": category_id,
            "name": supercategory if self.name == "coco" else self.name,
            "supercategory": supercategory,
            "keypoints": list(self.keypoints),
            "skeleton": [[a + 1, b + 1] for a, b in self.skeleton],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> KeypointSpec:
        """Validate a parsed YAML mapping; errors name ``source`` and the field."""
        if not isinstance(data, dict):
            raise KeypointSpecError(f"{source}: expected a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_REQUIRED) - set(_OPTIONAL))
        if unknown:
            raise KeypointSpecError(
                f"{source}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(_REQUIRED + _OPTIONAL)}"
            )
        names = data.get("keypoints")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise KeypointSpecError(
                f"{source}: field 'keypoints' must be a non-empty list of names"
            )
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise KeypointSpecError(f"{source}: field 'keypoints' repeats {', '.join(dup)}")
        index = {n: i for i, n in enumerate(names)}

        def joint(value: Any, where: str) -> int:
            if isinstance(value, str):
                if value not in index:
                    raise KeypointSpecError(
                        f"{source}: field '{where}' names unknown keypoint {value!r}; known: {', '.join(names)}"
                    )
                return index[value]
            if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
                return value
            raise KeypointSpecError(
                f"{source}: field '{where}' has {value!r}; expected a keypoint name or an index below {len(names)}"
            )

        def pairs(key: str) -> tuple[tuple[int, int], ...]:
            raw = data.get(key) or []
            if not isinstance(raw, list):
                raise KeypointSpecError(f"{source}: field '{key}' must be a list of pairs")
            out = []
            for i, pair in enumerate(raw):
                if not isinstance(pair, list | tuple) or len(pair) != 2:
                    raise KeypointSpecError(
                        f"{source}: field '{key}[{i}]' must be a pair, got {pair!r}"
                    )
                a, b = joint(pair[0], f"{key}[{i}]"), joint(pair[1], f"{key}[{i}]")
                if a == b:
                    raise KeypointSpecError(
                        f"{source}: field '{key}[{i}]' pairs a keypoint with itself"
                    )
                out.append((a, b))
            return tuple(out)

        def group(key: str) -> tuple[int, ...]:
            raw = data.get(key) or []
            if not isinstance(raw, list):
                raise KeypointSpecError(f"{source}: field '{key}' must be a list of keypoints")
            return tuple(joint(v, f"{key}[{i}]") for i, v in enumerate(raw))

        def numbers(key: str, positive: bool) -> tuple[float, ...]:
            raw = data.get(key)
            if raw is None:
                return ()
            if not isinstance(raw, list) or len(raw) != len(names):
                got = len(raw) if isinstance(raw, list) else type(raw).__name__
                raise KeypointSpecError(
                    f"{source}: field '{key}' must list one number per keypoint ({len(names)}), got {got}"
                )
            values = []
            for i, v in enumerate(raw):
                if isinstance(v, bool) or not isinstance(v, int | float) or not np.isfinite(v):
                    raise KeypointSpecError(f"{source}: field '{key}[{i}]' is {v!r}, not a number")
                if positive and v <= 0 or v < 0:
                    rule = "> 0" if positive else ">= 0"
                    raise KeypointSpecError(f"{source}: field '{key}[{i}]' is {v}; must be {rule}")
                values.append(float(v))
            return tuple(values)

        flip_pairs = pairs("flip_pairs")
        seen: dict[int, int] = {}
        for i, (a, b) in enumerate(flip_pairs):
            for j in (a, b):
                if j in seen:
                    raise KeypointSpecError(
                        f"{source}: field 'flip_pairs[{i}]': keypoint {names[j]!r} already in flip_pairs[{seen[j]}]"
                    )
                seen[j] = i
        return cls(
            name=str(data.get("name") or Path(source).stem),
            keypoints=tuple(names),
            flip_pairs=flip_pairs,
            skeleton=pairs("skeleton"),
            upper_body=group("upper_body"),
            lower_body=group("lower_body"),
            sigmas=numbers("sigmas", positive=True),
            joint_weights=numbers("joint_weights", positive=False),
        )


def load_keypoint_spec(name_or_path: str | Path) -> KeypointSpec:
    """A built-in spec by name (``coco``) or a YAML file by path."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = BUILTIN_SPECS / f"{name_or_path}.yaml"
        if not path.is_file():
            builtin = sorted(p.stem for p in BUILTIN_SPECS.glob("*.yaml"))
            raise KeypointSpecError(
                f"no built-in keypoint spec {str(name_or_path)!r}; built in: {', '.join(builtin)}; or give a YAML path"
            )
    if not path.is_file():
        raise KeypointSpecError(f"keypoint spec file {path} not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise KeypointSpecError(f"{path}: not valid YAML: {err}") from err
    return KeypointSpec.from_dict(data, source=str(path))
