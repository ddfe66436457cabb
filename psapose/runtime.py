"""What this machine can run: the device a config asks for, and combinations that cannot work.

:func:`check_runtime` runs at start (training, evaluation, the dry run) and turns
every combination that would fail later, or run absurdly slowly, into a
:class:`~psapose.config.ConfigError` that says what to use instead (exit 2).
"""

from __future__ import annotations

import os
import shutil
import sys

import torch

from psapose.config import ConfigError

__all__ = ["check_runtime", "resolve_device_type"]


def resolve_device_type(device: str) -> str:
    """``cpu`` or ``cuda`` for a config's ``device`` (``auto``: CUDA when there is one)."""
    if str(device) == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(str(device)).type


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
