"""Hydra configuration: composing configs outside a Hydra app, and building models from them.

Models are plain ``nn.Module`` classes named by ``_target_`` and built with
Hydra's ``instantiate``. Before that, :func:`build_model` checks every key of
the ``model`` node against the constructor's signature, so a misspelt key stops
with its name and the allowed ones instead of a bare ``TypeError``.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

__all__ = ["CONFIG_DIR", "ConfigError", "build_model", "compose_config", "input_size"]

CONFIG_DIR = Path(
    os.environ.get("PSAPOSE_CONFIG_DIR", Path(__file__).resolve().parents[1] / "configs")
)


class ConfigError(ValueError):
    """A configuration value that cannot work, named by its full key."""


def compose_config(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """The composed config, as ``tools/*.py`` would see it with these command-line overrides."""
    if not CONFIG_DIR.is_dir():
        raise ConfigError(f"config directory {CONFIG_DIR} not found; set PSAPOSE_CONFIG_DIR")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose(config_name=config_name, overrides=list(overrides))


def _check_target_keys(node: DictConfig, full_key: str) -> None:
    target = node.get("_target_")
    if target is None:
        raise ConfigError(f"{full_key} has no _target_ naming the class to build")
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
