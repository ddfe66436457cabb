"""A training run folder as the source of an evaluation: its config, its best checkpoint.

``tools/test.py run=RUN_DIR`` evaluates exactly what was trained: the run's
resolved ``config.yaml`` (read as untrusted data, :func:`load_stored_config`)
and ``checkpoints/best.pth`` (``latest.pth`` when the run never evaluated), with
only the command line's own overrides on top. Without it every training
override has to be repeated, and a forgotten ``input_size`` silently evaluates
at another size.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from psapose.config import ConfigError, load_stored_config

__all__ = ["RUN_GROUPS", "config_from_run", "run_checkpoint"]

log = logging.getLogger("psapose")

# Config groups a command line may swap on top of a run's config (whole nodes).
RUN_GROUPS = ("model", "attention", "codec", "data", "schedule")
# Keys that describe what was trained: changing them against the checkpoint deserves a warning.
_MODEL_KEYS = ("model", "attention", "codec", "input_size")
# Keys of the evaluation command itself, never taken from the run.
_OWN_KEYS = ("run", "checkpoint", "output_dir", "resume")


def run_checkpoint(run_dir: Path, checkpoint: str | None = None) -> Path:
    """``best.pth`` of a run (``latest.pth`` if it has none), or the named file."""
    folder = Path(run_dir) / "checkpoints"
    if checkpoint:
        path = Path(checkpoint)
        return path if path.is_absolute() or path.exists() else folder / checkpoint
    for name in ("best.pth", "latest.pth"):
        if (folder / name).is_file():
            return folder / name
    raise ConfigError(f"run={run_dir}: no checkpoints/best.pth or latest.pth; did the run train?")


def _parsed(overrides: Sequence[str]) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(list(overrides))


def config_from_run(
    run_dir: str | Path, composed: DictConfig, overrides: Sequence[str]
) -> tuple[DictConfig, list[str]]:
    """The run's config with the command line's ``overrides`` applied (values taken from the
    ``composed`` config Hydra built from them), and warnings for changes against the weights.

    Group overrides (``data=coco``) replace the whole node; key overrides replace the key
    and every value the composed config derives from it (``codec.input_size`` follows
    ``input_size``). ``experiment=`` cannot be combined with a run.
    """
    run = Path(run_dir)
    config_file = run / "config.yaml"
    if not config_file.is_file():
        raise ConfigError(f"run={run}: no config.yaml; is it a psapose training run folder?")
    stored = load_stored_config(config_file)
    cfg = OmegaConf.create(OmegaConf.to_container(stored))
    changed: list[str] = []
    for override in _parsed(overrides):
        key = override.key_or_group.lstrip("+~")
        if key.startswith("hydra") or key in _OWN_KEYS:
            continue
        if key == "experiment":
            raise ConfigError(
                "run= evaluates the run's own config; experiment= cannot be combined with it "
                "(give single keys or groups on top instead)"
            )
        if override.is_delete():
            raise ConfigError(f"~{key}: deleting keys is not supported with run=")
        if key in RUN_GROUPS:
            _copy(composed, cfg, key)
            if key == "attention" and "attention" in cfg.get("model", {}):
                _copy(composed, cfg, "model.attention")
        else:
            _copy(composed, cfg, key)
            for derived in _derived_from(composed, key):
                _copy(composed, cfg, derived)
        changed.append(key)
    warnings = []
    for key in _MODEL_KEYS:
        before, after = OmegaConf.select(stored, key), OmegaConf.select(cfg, key)
        if _plain(before) != _plain(after):
            warnings.append(
                f"{key} differs from the run it was trained with ({_short(before)} -> "
                f"{_short(after)}): the checkpoint may not load, or evaluate another model"
            )
    return cfg, warnings


def _copy(source: DictConfig, target: DictConfig, key: str) -> None:
    value = OmegaConf.select(source, key, throw_on_missing=False)
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    OmegaConf.update(target, key, value, merge=False, force_add=True)


def _derived_from(composed: DictConfig, key: str, prefix: str = "") -> list[str]:
    """Keys whose raw value in ``composed`` is the interpolation ``${key}``."""
    found = []
    node = OmegaConf.select(composed, prefix) if prefix else composed
    if not OmegaConf.is_dict(node):
        return found
    for child in node.keys():
        path = f"{prefix}.{child}" if prefix else str(child)
        raw = node._get_node(child)
        if OmegaConf.is_dict(raw):
            found += _derived_from(composed, key, path)
        elif raw is not None and raw._is_interpolation() and raw._value() == f"${{{key}}}":
            found.append(path)
    return found


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _short(value: Any) -> str:
    plain = _plain(value)
    if isinstance(plain, dict):
        plain = {k: v for k, v in plain.items() if k in ("_target_", "kind", "layout", "width")}
    text = str(plain)
    return text if len(text) <= 80 else text[:77] + "..."
