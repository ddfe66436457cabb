"""From a config to a running model: the run setup, the device, and what this machine can run.

:func:`run_setup` is the one way from a validated config to what a run needs
besides weights: the keypoint spec, the codec, the input size, the colour order,
the device and the precision, frozen in a :class:`RunSetup`. The trainer, the
inference API (:class:`~psapose.api.PoseEstimator`), the dry run and the tools all
start from it. Its :meth:`RunSetup.inference_config` is the plain-data part that
every checkpoint carries (timm's ``pretrained_cfg``), so that loading for
inference needs no Hydra composition: :func:`spec_from_inference_config` and
:func:`codec_from_inference_config` rebuild spec and codec from it.

:func:`check_runtime` runs at start (training, evaluation, the dry run) and turns
every combination that would fail later, or run absurdly slowly, into a
:class:`~psapose.config.ConfigError` that says what to use instead (exit 2).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from psapose.config import ConfigError, allowed_targets, input_size, validate_config
from psapose.data.builder import build_keypoint_spec
from psapose.data.keypoint_spec import KeypointSpec, KeypointSpecError

__all__ = [
    "ESTIMATOR_OPTIONS",
    "INFERENCE_CONFIG_VERSION",
    "RunSetup",
    "check_runtime",
    "codec_from_inference_config",
    "prepare_config",
    "resolve_device",
    "resolve_device_type",
    "run_setup",
    "spec_from_inference_config",
]

INFERENCE_CONFIG_VERSION = 1
# The PoseEstimator keyword arguments a run implies (and an inference config carries), each
# a RunSetup field of the same name.
ESTIMATOR_OPTIONS = (
    "color",
    "flip_test",
    "batch_size",
    "precision",
    "channels_last",
    "box_padding",
)


# ----------------------------------------------------------------------------- device
def _requested_device(device: str | torch.device) -> torch.device:
    # ``auto``: CUDA when there is one. Nothing is checked here (see resolve_device).
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_device_type(device: str) -> str:
    """``cpu`` or ``cuda`` for a config's ``device`` (``auto``: CUDA when there is one)."""
    return _requested_device(str(device)).type


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` (CUDA when available), or the named device, checked."""
    resolved = _requested_device(device)
    if str(device) != "auto" and resolved.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {resolved} requested but CUDA is not available")
    return resolved


# ----------------------------------------------------------------------------- config -> setup
def prepare_config(cfg: DictConfig) -> tuple[DictConfig, Any, Any]:
    """Validate, then tie the model to the data and codec: keypoint count and channels per keypoint.

    Returns the config, the keypoint spec and the codec.
    """
    validate_config(cfg)
    spec = build_keypoint_spec(cfg.data)
    codec = instantiate(cfg.codec)
    with open_dict(cfg):
        cfg.num_keypoints = spec.num_keypoints
        if "channels_per_keypoint" in cfg.model:
            cfg.model.channels_per_keypoint = codec.channels_per_keypoint
    return cfg, spec, codec


@dataclass(frozen=True)
class RunSetup:
    """What a validated config means for a run, besides the weights.

    ``cfg`` is the prepared config (keypoint count and channels tied to the data
    and codec); ``device`` is the device asked for (``auto`` resolved, nothing
    checked: :func:`check_runtime` does that).
    """

    cfg: DictConfig
    spec: KeypointSpec
    codec: Any
    input_size: tuple[int, int]
    color: str
    box_padding: float
    device: torch.device
    precision: str
    channels_last: bool
    flip_test: bool
    batch_size: int  # evaluation and inference

    def estimator_options(self) -> dict[str, Any]:
        """The :class:`~psapose.api.PoseEstimator` keyword arguments this run implies."""
        return {name: getattr(self, name) for name in ESTIMATOR_OPTIONS}

    def inference_config(self) -> dict[str, Any]:
        """What inference needs besides the weights, as plain data (stored in every checkpoint).

        The model's config subtree (built through the allow-listed path), the codec's
        class and arguments, the keypoint spec, the input size and the estimator options.
        """
        codec_args = OmegaConf.to_container(self.cfg.codec, resolve=True)
        codec_cls = type(self.codec)
        return {
            "version": INFERENCE_CONFIG_VERSION,
            "model": OmegaConf.to_container(self.cfg.model, resolve=True),
            "codec": {
                "name": f"{codec_cls.__module__}.{codec_cls.__qualname__}",
                "args": {k: v for k, v in codec_args.items() if not str(k).startswith("_")},
            },
            "keypoints": _plain(dataclasses.asdict(self.spec)),
            "input_size": list(self.input_size),
            **self.estimator_options(),
        }


def run_setup(cfg: DictConfig) -> RunSetup:
    """The frozen run setup of a composed config (validated and prepared here)."""
    cfg, spec, codec = prepare_config(cfg)
    return RunSetup(
        cfg=cfg,
        spec=spec,
        codec=codec,
        input_size=input_size(cfg),
        color=str(cfg.data.color),
        box_padding=float(cfg.data.box_padding),
        device=_requested_device(str(cfg.device)),
        precision=str(cfg.precision),
        channels_last=bool(cfg.channels_last),
        flip_test=bool(cfg.eval.flip_test),
        batch_size=int(cfg.eval.batch_size),
    )


def _plain(value: Any) -> Any:
    # Tuples become lists, numbers stay exact: JSON types only, as a checkpoint stores them.
    return json.loads(json.dumps(value))


# ----------------------------------------------------------------------------- from plain data
def spec_from_inference_config(inference: Mapping[str, Any], source: str) -> KeypointSpec:
    """The keypoint spec stored in an inference config, checked as a spec file is."""
    try:
        return KeypointSpec.from_dict(dict(inference["keypoints"]), source=f"{source} keypoints")
    except (KeyError, TypeError, KeypointSpecError) as err:
        raise ConfigError(f"{source}: inference config: unusable keypoint spec: {err}") from None


def codec_from_inference_config(inference: Mapping[str, Any], source: str) -> Any:
    """The codec an inference config names, built only if its class is an allowed codec."""
    node = inference.get("codec")
    name = node.get("name") if isinstance(node, Mapping) else None
    args = node.get("args") if isinstance(node, Mapping) else None
    classes = {f"{c.__module__}.{c.__qualname__}": c for c in allowed_targets("codec")}
    if name not in classes or not isinstance(args, Mapping):
        raise ConfigError(
            f"{source}: inference config: codec {name!r} is not allowed: it is not one of the "
            f"codec classes psapose builds (allowed: {', '.join(sorted(classes))})"
        )
    try:
        return classes[name](**args)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{source}: inference config: codec {name}: {err}") from None


# ----------------------------------------------------------------------------- machine checks
def _cxx_compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def check_runtime(cfg: object) -> str:
    """Check device, precision, SyncBatchNorm and ``torch.compile`` against this machine.

    Returns the device type the run will use. ``cfg`` is a composed (or validated) config.
    """
    device = str(cfg.device)
    kind = resolve_device_type(device)
    build = f"torch {torch.__version__}"
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device={device}: no CUDA device is available here ({build}"
            f"{', a CPU-only build' if torch.version.cuda is None else ''}); use device=cpu "
            "or device=auto"
        )
    if cfg.sync_bn and kind != "cuda":
        raise ConfigError(
            "sync_bn=true needs CUDA (SyncBatchNorm has no CPU kernel): leave it false on "
            "the CPU; to normalise like several processes in one, see micro_batches"
        )
    if cfg.precision == "fp16" and kind == "cpu":
        raise ConfigError(
            "precision=fp16 on the CPU has no fast kernels (measured 60x slower than fp32): "
            "use precision=bf16 (fast on CPUs with AVX-512 BF16 or AMX) or fp32"
        )
    if cfg.compile:
        from torch import _dynamo

        if not _dynamo.is_dynamo_supported():
            raise ConfigError(
                f"compile=true: torch.compile is not supported with Python "
                f"{sys.version.split()[0]} and {build}; set compile=false"
            )
        if kind == "cpu" and _cxx_compiler() is None:
            raise ConfigError(
                "compile=true on the CPU needs a C++ compiler (g++ or clang++) for "
                "TorchInductor, and none is on PATH: install one or set compile=false"
            )
    micro = int(cfg.get("micro_batches", 1) or 1)
    batch = int(cfg.schedule.batch_size)
    if micro > batch:
        raise ConfigError(
            f"micro_batches={micro} is more than schedule.batch_size={batch}: each "
            "micro-batch needs at least one sample"
        )
    return kind
