"""Hydra configuration: composing configs outside a Hydra app, and building models from them.

Models are plain ``nn.Module`` classes named by ``_target_`` and built with
Hydra's ``instantiate``. Before that, :func:`build_model` checks every key of
the ``model`` node against the constructor's signature, so a misspelt key stops
with its name and the allowed ones instead of a bare ``TypeError``.

No config value is ever run as code: ``_target_`` may only name a callable
under :data:`ALLOWED_TARGET_PREFIXES` (so a config cannot instantiate
``os.system`` or ``builtins.eval``), checked before anything is imported, and
no OmegaConf resolver that evaluates expressions is registered.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra import compose, initialize_config_dir
from hydra.utils import get_class, instantiate
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError
from torch import nn

from psapose.data.transforms import Augmentation

__all__ = [
    "ALLOWED_TARGET_PREFIXES",
    "CONFIG_DIR",
    "ConfigError",
    "build_model",
    "compose_config",
    "input_size",
    "validate_config",
]

CONFIG_DIR = Path(
    os.environ.get("PSAPOSE_CONFIG_DIR", Path(__file__).resolve().parents[1] / "configs")
)


# Module prefixes a ``_target_`` may name: the project's own classes only.
ALLOWED_TARGET_PREFIXES = ("psapose.",)


class ConfigError(ValueError):
    """A configuration value that cannot work, named by its full key."""


def compose_config(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """The composed config, as ``tools/*.py`` would see it with these command-line overrides."""
    if not CONFIG_DIR.is_dir():
        raise ConfigError(f"config directory {CONFIG_DIR} not found; set PSAPOSE_CONFIG_DIR")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose(config_name=config_name, overrides=list(overrides))


def check_targets_allowed(node: Any, full_key: str = "") -> None:
    """Every ``_target_`` under ``node`` (dicts and lists, any depth) names an allowed callable.

    Runs before any import or instantiation: a config can only build psapose classes.
    """
    if OmegaConf.is_dict(node):
        items = [(str(k), node._get_node(k)) for k in node.keys()]  # no interpolation resolving
    elif OmegaConf.is_list(node):
        items = [(str(i), node._get_node(i)) for i in range(len(node))]
    else:
        return
    for key, child in items:
        child_key = f"{full_key}.{key}" if full_key else key
        if key in ("_target_", "_partial_target_"):
            value = child._value() if hasattr(child, "_value") else child
            if not (isinstance(value, str) and value.startswith(ALLOWED_TARGET_PREFIXES)):
                raise ConfigError(
                    f"{child_key}={value!r} is not allowed: _target_ must name a class under "
                    f"{', '.join(ALLOWED_TARGET_PREFIXES)}"
                )
        elif OmegaConf.is_config(child):
            check_targets_allowed(child, child_key)


def _check_target_keys(node: DictConfig, full_key: str) -> None:
    target = node.get("_target_")
    if target is None:
        raise ConfigError(f"{full_key} has no _target_ naming the class to build")
    check_targets_allowed(node, full_key)
    try:
        cls = get_class(target)
    except Exception as err:  # hydra raises a plain ImportError/ValueError mix here
        raise ConfigError(f"{full_key}._target_: cannot import {target!r}: {err}") from err
    params = inspect.signature(cls).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    allowed = [name for name in params if name != "self"]
    unknown = [k for k in node if not str(k).startswith("_") and k not in allowed]
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(f'{full_key}.{k}' for k in unknown)} for {target}; allowed: {', '.join(allowed)}"
        )
    for key in node:
        value = node[key]
        if isinstance(value, DictConfig) and "_target_" in value:
            _check_target_keys(value, f"{full_key}.{key}")


def build_model(cfg: DictConfig) -> nn.Module:
    """Instantiate ``cfg.model`` (with its attention spec), after checking its keys."""
    if "model" not in cfg:
        raise ConfigError("config has no 'model' node")
    _check_target_keys(cfg.model, "model")
    try:
        return instantiate(cfg.model)
    except Exception as err:
        # instantiate wraps constructor errors (our ValueErrors name the key) in its own exception.
        cause = err.__cause__ or err
        raise ConfigError(f"model ({cfg.model._target_}): {cause}") from err


def input_size(cfg: DictConfig) -> tuple[int, int]:
    """``cfg.input_size`` as (height, width), checked."""
    size = (
        OmegaConf.to_container(cfg.input_size)
        if OmegaConf.is_config(cfg.input_size)
        else cfg.input_size
    )
    if not (
        isinstance(size, (list, tuple))
        and len(size) == 2
        and all(isinstance(v, int) and v > 0 for v in size)
    ):
        raise ConfigError(
            f"input_size must be [height, width] with positive integers, got {size!r}"
        )
    if size[0] % 32 or size[1] % 32:
        # HRNet's lowest branch is at 1/32; other sizes break the fusion's exact 2x upsampling.
        raise ConfigError(f"input_size {list(size)}: height and width must be multiples of 32")
    return int(size[0]), int(size[1])


# ----------------------------------------------------------------------------- typed schema
# Everything but the `_target_` nodes (model, attention, codec: checked against their
# constructors) is checked against these dataclasses at start: an unknown key or a
# value of the wrong type stops with its full key named.


@dataclass
class _Split:
    ann_file: str = MISSING
    image_dir: str = MISSING
    det_file: Optional[str] = None  # noqa: UP045 (OmegaConf needs Optional)
    use_gt_boxes: bool = False
    det_score_threshold: float = 0.0


@dataclass
class _Data:
    root: str = MISSING
    keypoints: str = "coco"
    color: str = "rgb"
    box_padding: float = 1.25
    category_id: Optional[int] = None  # noqa: UP045
    train: _Split = field(default_factory=_Split)
    val: _Split = field(default_factory=_Split)
    test_dev: _Split = field(default_factory=_Split)
    augment: Augmentation = field(default_factory=Augmentation)
    generate: Optional[dict[str, Any]] = None  # noqa: UP045
    max_bad_fraction: float = 0.01  # unreadable training samples tolerated, as a fraction


@dataclass
class _Schedule:
    epochs: int = 210
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    milestones: list[int] = field(default_factory=lambda: [170, 200])
    gamma: float = 0.1
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    grad_clip: Optional[float] = None  # noqa: UP045
    max_nonfinite_steps: int = 5  # consecutive NaN/inf losses skipped before the run stops


@dataclass
class _Eval:
    split: str = "val"
    interval: int = 1
    flip_test: bool = True
    batch_size: int = 64
    nms: str = "oks"
    nms_threshold: float = 0.9
    rescore_threshold: float = 0.2
    images: int = 8


@dataclass
class _Run:
    name: str = "psapose"
    num_keypoints: int = 17
    input_size: list[int] = field(default_factory=lambda: [256, 192])
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    channels_last: bool = True
    compile: bool = False
    sync_bn: bool = False
    deterministic: bool = False
    workers: int = 2
    log_interval: int = 20
    pretrained: Optional[str] = None  # noqa: UP045
    resume: Optional[str] = None  # noqa: UP045
    checkpoint: Optional[str] = None  # noqa: UP045
    output_dir: Optional[str] = None  # noqa: UP045
    data: _Data = field(default_factory=_Data)
    schedule: _Schedule = field(default_factory=_Schedule)
    eval: _Eval = field(default_factory=_Eval)


_TARGET_NODES = ("model", "attention", "codec")
_CHOICES = {
    "device": ("auto", "cpu", "cuda"),
    "precision": ("fp32", "bf16", "fp16"),
    "data.color": ("rgb", "bgr"),
    "schedule.optimizer": ("adam", "adamw", "sgd"),
    "eval.split": ("val", "test-dev"),
    "eval.nms": ("oks", "soft", "none"),
}


def validate_config(cfg: DictConfig) -> DictConfig:
    """Check a composed config against the schema; returns the typed config.

    Unknown keys, wrong types and values outside their choices raise
    :class:`ConfigError` naming the full key and what is allowed.
    """
    plain = OmegaConf.masked_copy(cfg, [k for k in cfg if k not in _TARGET_NODES and k != "hydra"])
    schema = OmegaConf.structured(_Run)
    # Augmentation is a frozen dataclass, which OmegaConf makes a read-only node.
    OmegaConf.set_readonly(schema.data.augment, False)
    try:
        typed = OmegaConf.merge(schema, plain)
    except ConfigKeyError as err:
        node = str(err.full_key).rsplit(".", 1)[0] if "." in str(err.full_key) else ""
        parent = OmegaConf.select(schema, node) if node else schema
        allowed = ", ".join(str(k) for k in parent) if OmegaConf.is_dict(parent) else ""
        raise ConfigError(f"unknown key {err.full_key!s}; allowed here: {allowed}") from None
    except ValidationError as err:
        raise ConfigError(f"{err.full_key}: {str(err.msg).splitlines()[0]}") from None
    for key, allowed in _CHOICES.items():
        value = OmegaConf.select(typed, key)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r}; allowed: {', '.join(allowed)}")
    checks = {
        "schedule.epochs": typed.schedule.epochs >= 1,
        "schedule.batch_size": typed.schedule.batch_size >= 1,
        "schedule.lr": typed.schedule.lr > 0,
        "schedule.warmup_ratio": 0 < typed.schedule.warmup_ratio <= 1,
        "eval.batch_size": typed.eval.batch_size >= 1,
        "eval.interval": typed.eval.interval >= 0,
        "workers": typed.workers >= 0,
        "data.box_padding": typed.data.box_padding > 0,
        "data.max_bad_fraction": 0 <= typed.data.max_bad_fraction <= 1,
        "schedule.max_nonfinite_steps": typed.schedule.max_nonfinite_steps >= 1,
    }
    for key, ok in checks.items():
        if not ok:
            raise ConfigError(f"{key}={OmegaConf.select(typed, key)!r} is out of range")
    if sorted(typed.schedule.milestones) != list(typed.schedule.milestones):
        raise ConfigError(
            f"schedule.milestones must increase, got {list(typed.schedule.milestones)}"
        )
    input_size(typed)
    check_targets_allowed(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]))
    for node in _TARGET_NODES:
        if node in cfg and OmegaConf.is_dict(cfg[node]) and "_target_" in cfg[node]:
            _check_target_keys(cfg[node], node)
    if "codec" in cfg and OmegaConf.is_dict(cfg.codec):
        _check_codec_values(cfg.codec)
    return typed


def _check_codec_values(node: DictConfig) -> None:
    """Build the codec once so that an impossible value (``sigma <= 0``) stops at start, named."""
    try:
        instantiate(node)
    except Exception as err:
        cause = err.__cause__ or err
        message = str(cause)
        # The codecs name the argument first ("sigma must be ..."): give its full key.
        name = message.split(" ", 1)[0]
        if name in node:
            raise ConfigError(f"codec.{message}") from None
        raise ConfigError(f"codec ({node.get('_target_')}): {message}") from None
