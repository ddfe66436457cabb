"""Hydra configuration: composing configs outside a Hydra app, and building models from them.

Models are plain ``nn.Module`` classes named by ``_target_`` and built with
Hydra's ``instantiate``. Before that, :func:`build_model` checks every key of
the ``model`` node against the constructor's signature, so a misspelt key stops
with its name and the allowed ones instead of a bare ``TypeError``.

No config value is ever run as code: a ``_target_`` may only stand at ``model``,
``model.attention``, ``attention`` or ``codec``, must name a module under
``psapose.``, and must resolve to one of the classes allowed there
(:func:`allowed_targets`), all checked before anything is instantiated. No
OmegaConf resolver that evaluates expressions is registered, and configs read
back from checkpoints and run folders (:func:`load_stored_config`) may hold no
interpolation at all.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra import compose, initialize_config_dir
from hydra.utils import get_object, instantiate
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError
from torch import nn

from psapose.data.transforms import COLORS, Augmentation

__all__ = [
    "ALLOWED_TARGET_PREFIXES",
    "CONFIG_DIR",
    "ConfigError",
    "allowed_targets",
    "build_model",
    "check_targets_allowed",
    "compose_config",
    "input_size",
    "load_stored_config",
    "register_target",
    "selection_metric",
    "validate_config",
]

CONFIG_DIR = Path(
    os.environ.get("PSAPOSE_CONFIG_DIR", Path(__file__).resolve().parents[1] / "configs")
)


# A ``_target_`` may only name a module under this package (nothing else is imported to
# resolve it), and what it resolves to must be one of the classes allowed in its place.
ALLOWED_TARGET_PREFIXES = ("psapose.",)

# Where a ``_target_`` may stand, and what it may build there. Extended only from Python
# (:func:`register_target`): configs are data and cannot widen their own allow-list.
_TARGET_PLACES = {
    "model": "model",
    "model.attention": "attention",
    "attention": "attention",
    "codec": "codec",
}
_EXTRA_TARGETS: dict[str, set[object]] = {"model": set(), "attention": set(), "codec": set()}


class ConfigError(ValueError):
    """A configuration value that cannot work, named by its full key."""


def allowed_targets(role: str) -> set[object]:
    """The classes a ``_target_`` may build in the ``model``, ``attention`` or ``codec`` place."""
    from psapose import codecs, models

    builtin = {
        "model": {models.PoseHRNet, models.PoseResNet},
        "attention": {
            models.AttentionSpec,
            models.PolarizedSelfAttention,
            models.SqueezeExcitation,
            models.GlobalContext,
        },
        "codec": {codecs.MSRAHeatmap, codecs.DarkHeatmap, codecs.UDPHeatmap, codecs.UDPCombined},
    }
    return builtin[role] | _EXTRA_TARGETS[role]


def register_target(role: str, cls: type) -> None:
    """Allow configs to build ``cls`` as a ``model``, ``attention`` or ``codec`` (your own class).

    Its ``_target_`` must still be importable; this is the only way to widen the allow-list.
    """
    if role not in _EXTRA_TARGETS:
        raise ValueError(f"role must be one of {', '.join(_EXTRA_TARGETS)}, got {role!r}")
    if not isinstance(cls, type):
        raise TypeError(f"register_target takes a class, got {cls!r}")
    _EXTRA_TARGETS[role].add(cls)


def compose_config(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """The composed config, as ``tools/*.py`` would see it with these command-line overrides."""
    if not CONFIG_DIR.is_dir():
        raise ConfigError(f"config directory {CONFIG_DIR} not found; set PSAPOSE_CONFIG_DIR")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose(config_name=config_name, overrides=list(overrides))


def _children(node: Any) -> list[tuple[str, Any]]:
    # _get_node: the raw child, so no interpolation is resolved while checking.
    if OmegaConf.is_dict(node):
        return [(str(k), node._get_node(k)) for k in node.keys()]
    if OmegaConf.is_list(node):
        return [(str(i), node._get_node(i)) for i in range(len(node))]
    return []


def _resolve_target(value: Any, full_key: str, role: str | None) -> object:
    """The object a ``_target_`` string names, checked against its place's allow-list."""
    if role is None:
        places = ", ".join(sorted(_TARGET_PLACES))
        raise ConfigError(
            f"{full_key}={value!r} is not allowed: a _target_ may only stand at {places}"
        )
    if not (isinstance(value, str) and value.startswith(ALLOWED_TARGET_PREFIXES)):
        raise ConfigError(
            f"{full_key}={value!r} is not allowed: _target_ must name a psapose {role} class"
        )
    try:
        obj = get_object(value)
    except Exception as err:  # hydra raises a plain ImportError/ValueError mix here
        raise ConfigError(f"{full_key}: cannot import {value!r}: {err}") from None
    allowed = allowed_targets(role)
    if not any(obj is cls for cls in allowed):
        names = ", ".join(sorted(f"{c.__module__}.{c.__qualname__}" for c in allowed))
        raise ConfigError(
            f"{full_key}={value!r} is not allowed: it is not one of the {role} classes psapose "
            "builds "
            f"(allowed: {names})"
        )
    return obj


def check_targets_allowed(node: Any, full_key: str = "") -> None:
    """Every ``_target_`` under ``node`` (dicts and lists, any depth) stands in an allowed place
    and resolves to a class allowed there (:func:`allowed_targets`), checked on the object,
    not the string, so ``psapose.some_module.Path.write_text`` is refused as ``os.system`` is.

    Runs before anything is instantiated: a config can only build psapose models, attention
    specs and codecs. ``full_key`` is where ``node`` sits in the whole config.
    """
    for key, child in _children(node):
        child_key = f"{full_key}.{key}" if full_key else key
        if key in ("_target_", "_partial_target_"):
            value = child._value() if hasattr(child, "_value") else child
            _resolve_target(value, child_key, _TARGET_PLACES.get(full_key))
        elif OmegaConf.is_config(child):
            check_targets_allowed(child, child_key)


def check_plain_data(node: Any, source: str, full_key: str = "") -> None:
    """A stored config (checkpoint, run folder) holds plain values only: no interpolation.

    psapose writes configs resolved, so a ``${...}`` in one was put there by hand; resolving
    it would run an OmegaConf resolver (environment variables, Hydra's) chosen by the file.
    """
    for key, child in _children(node):
        child_key = f"{full_key}.{key}" if full_key else key
        if OmegaConf.is_config(child):
            check_plain_data(child, source, child_key)
        elif child._is_interpolation():
            raise ConfigError(
                f"{source}: key {child_key} holds an interpolation ({child._value()!r}); "
                "a stored config must be plain data"
            )


def load_stored_config(source: Mapping | str | os.PathLike, name: str | None = None) -> DictConfig:
    """A config stored in a checkpoint (a mapping) or a run folder's ``config.yaml``, as
    untrusted data: plain values only, every ``_target_`` allowed, keys checked later by
    :func:`validate_config`. ``name`` labels the source in errors."""
    label = name or (os.fspath(source) if isinstance(source, (str, os.PathLike)) else "config")
    try:
        if isinstance(source, Mapping):
            cfg = OmegaConf.create(dict(source))
        else:
            cfg = OmegaConf.load(source)
    except Exception as err:  # YAML syntax, unsupported values
        raise ConfigError(f"{label}: not a readable config: {err}") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{label}: a config must be a mapping, got a list")
    check_plain_data(cfg, label)
    check_targets_allowed(cfg)
    return cfg


def _check_target_keys(node: DictConfig, full_key: str) -> None:
    target = node.get("_target_")
    if target is None:
        raise ConfigError(f"{full_key} has no _target_ naming the class to build")
    check_targets_allowed(node, full_key)
    cls = _resolve_target(target, f"{full_key}._target_", _TARGET_PLACES.get(full_key))
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
    root: Optional[str] = MISSING  # noqa: UP045 (null only to be named by data.required)
    keypoints: Optional[str] = "coco"  # noqa: UP045
    color: str = "rgb"
    box_padding: float = 1.25
    category_id: Optional[int] = None  # noqa: UP045
    train: _Split = field(default_factory=_Split)
    val: _Split = field(default_factory=_Split)
    test_dev: _Split = field(default_factory=_Split)
    augment: Augmentation = field(default_factory=Augmentation)
    generate: bool = False  # write the synthetic dataset at root (else only at data/synthetic)
    synthetic: Optional[dict[str, Any]] = None  # noqa: UP045 (generator options)
    max_bad_fraction: float = 0.01  # unreadable training samples tolerated, as a fraction
    metric: str = "AP"  # the evaluation number that picks best.pth for this data
    required: list[str] = field(default_factory=list)  # data keys that must be set (custom)
    layouts: Optional[dict[str, Any]] = None  # noqa: UP045 (known file layouts; see data/custom.yaml)


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
    metric: Optional[str] = None  # noqa: UP045 (picks best.pth; None: data.metric)


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
    workers: Optional[int] = None  # noqa: UP045 (DataLoader workers; None: from the cores)
    threads: Optional[int] = None  # noqa: UP045 (intra-op threads; None: chosen from the cores)
    micro_batches: int = 1  # gradient accumulation: each batch as N sub-batches (BN per sub-batch)
    dry_run: bool = False  # compose, check, build, count; train or evaluate nothing
    log_interval: int = 20
    pretrained: Optional[str] = None  # noqa: UP045
    resume: Optional[str] = None  # noqa: UP045
    checkpoint: Optional[str] = None  # noqa: UP045
    run: Optional[str] = None  # noqa: UP045 (tools/test.py: a training run folder)
    output_dir: Optional[str] = None  # noqa: UP045
    data: _Data = field(default_factory=_Data)
    schedule: _Schedule = field(default_factory=_Schedule)
    eval: _Eval = field(default_factory=_Eval)


_TARGET_NODES = ("model", "attention", "codec")
_CHOICES = {
    "device": ("auto", "cpu", "cuda"),
    "precision": ("fp32", "bf16", "fp16"),
    "data.color": COLORS,
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
        "workers": typed.workers is None or typed.workers >= 0,
        "micro_batches": typed.micro_batches >= 1,
        "threads": typed.threads is None or typed.threads >= 1,
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
    for key in typed.data.required:
        if key not in typed.data:
            raise ConfigError(f"data.required names {key!r}, which is not a data key")
        if typed.data[key] in (None, ""):
            raise ConfigError(
                f"data.{key} is required with this data config; set it on the command line "
                f"(data.{key}=...)"
            )
    metric = selection_metric(typed)
    if metric not in COCO_METRICS and not is_pixel_metric(metric):
        raise ConfigError(
            f"eval.metric={metric!r}; allowed: {', '.join(COCO_METRICS + pixel_metric_names())}"
        )
    if is_pixel_metric(metric) and typed.eval.split == "val" and not typed.data.val.use_gt_boxes:
        raise ConfigError(
            f"eval.metric={metric} compares each prediction with its ground truth, which needs "
            "ground-truth boxes: set data.val.use_gt_boxes=true (or eval.metric=AP)"
        )
    check_targets_allowed(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]))
    for node in _TARGET_NODES:
        if node in cfg and OmegaConf.is_dict(cfg[node]) and "_target_" in cfg[node]:
            _check_target_keys(cfg[node], node)
    if "codec" in cfg and OmegaConf.is_dict(cfg.codec):
        _check_codec_values(cfg.codec)
    return typed


COCO_METRICS = ("AP", "AP50", "AP75", "APM", "APL", "AR", "AR50", "AR75", "ARM", "ARL")


def pixel_metric_names() -> tuple[str, ...]:
    """The pixel metrics evaluation reports (EPE, EPE_median, RMSE, PCK@0.05, PCK@5px, ...)."""
    # The module, not the function of the same name the package exports.
    pm = importlib.import_module("psapose.evaluation.pixel_metrics")

    pck = [pm.pck_name(f) for f in pm.DEFAULT_PCK_FRACTIONS]
    pck += [pm.pck_name(n, pixels=True) for n in pm.DEFAULT_PCK_PIXELS]
    return ("EPE", "EPE_median", "RMSE", *pck)


def is_pixel_metric(name: str) -> bool:
    return name in pixel_metric_names()


def selection_metric(cfg: Any) -> str:
    """The evaluation number that picks ``best.pth``: ``eval.metric``, else ``data.metric``."""
    metric = OmegaConf.select(cfg, "eval.metric")
    return str(metric if metric else OmegaConf.select(cfg, "data.metric", default="AP"))


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
