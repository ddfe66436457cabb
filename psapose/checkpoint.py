"""Loading weights safely: pose checkpoints, ImageNet backbones, URLs.

Every file is read with ``torch.load(..., weights_only=True)``: tensors and
plain containers only, never pickled code. Checkpoints from the official HRNet
pose code (plain state dicts, or training checkpoints with a ``state_dict``
entry and ``module.`` prefixes) and from psapose load alike.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

__all__ = [
    "CheckpointError",
    "LoadReport",
    "UnsafeCheckpointError",
    "load_checkpoint_file",
    "load_pose_checkpoint",
    "load_pretrained_backbone",
    "load_state_dict_file",
    "resolve_checkpoint",
    "state_checksum",
    "verify_checksum",
    "with_checksum",
]

log = logging.getLogger(__name__)

# Containers in which training scripts nest the model's weights, most specific first.
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "module", "best_state_dict")
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,})\.")
_URL_SCHEMES = ("http", "https", "file")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read, is unsafe, or does not fit the model."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint that holds pickled Python objects (code could run on load): refused."""


# What the weights-only unpickler says when a file asks for code rather than data
# (a global, a class to build, a function to call); anything else it says is corruption.
_UNSAFE_CONTENT = re.compile(
    r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) (?P<name>\S+)"
    r"|Can only (?:build|create new object)[^\n]*"
    r"|Trying to call reduce for unrecognized function[^\n]*"
)


def default_cache_dir() -> Path:
    """Where downloaded weights are kept: ``$PSAPOSE_CACHE`` or ``~/.cache/psapose/checkpoints``."""
    root = os.environ.get("PSAPOSE_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "psapose" / "checkpoints"


def resolve_checkpoint(
    path_or_url: str | os.PathLike, cache_dir: str | os.PathLike | None = None
) -> Path:
    """A local path for ``path_or_url``, downloading ``http(s)://`` and ``file://``
    URLs into the cache once. A file name carrying a hash (``resnet50-19c8e357.pth``)
    is checked against the SHA-256 of the download, as torchvision does."""
    text = os.fspath(path_or_url)
    scheme = urlparse(text).scheme
    if scheme not in _URL_SCHEMES:
        path = Path(text).expanduser()
        if not path.is_file():
            raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
        return path
    name = Path(urlparse(text).path).name
    if not name:
        raise CheckpointError(f"checkpoint URL {text} does not end in a file name")
    target_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = target_dir / name
    if not target.is_file():
        target_dir.mkdir(parents=True, exist_ok=True)
        match = _HASH_IN_NAME.search(name)
        log.info("downloading %s to %s", text, target)
        try:
            # Writes to a temporary file and renames it: no half-written cache entries.
            torch.hub.download_url_to_file(
                text, str(target), hash_prefix=match.group(1) if match else None
            )
        except (OSError, RuntimeError) as err:
            raise CheckpointError(f"could not download checkpoint {text}: {err}") from err
    return target


def load_state_dict_file(path_or_url: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The model weights stored in a checkpoint file, on the CPU.

    Unwraps ``{"state_dict": ...}``-style training checkpoints and removes a
    ``module.`` prefix left by (Distributed)DataParallel.
    """
    path = resolve_checkpoint(path_or_url)
    return extract_state_dict(load_checkpoint_file(path), source=str(path))


def load_checkpoint_file(path: str | os.PathLike) -> object:
    """``torch.load(path, weights_only=True)`` on the CPU, with the failures told apart.

    Raises :class:`UnsafeCheckpointError` when the file needs pickled code (a
    custom class, ``functools.partial``, ...) and :class:`CheckpointError` for
    anything else that keeps it from loading: missing, truncated, corrupt or
    junk bytes (whatever exception ``torch.load`` raises on them). A psapose
    checkpoint's stored checksum is verified (:func:`verify_checksum`).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found (or not a file)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        unsafe = _UNSAFE_CONTENT.search(text)
        if unsafe is None:
            raise CheckpointError(
                f"{path}: not a readable PyTorch checkpoint (corrupt pickle data): "
                f"{_first_line(err)}"
            ) from err
        needs = unsafe.group("name") or unsafe.group(0)
        raise UnsafeCheckpointError(
            f"{path}: refused to load: the file holds pickled Python objects, not just tensors "
            f"(it needs {needs}). psapose loads checkpoints with weights_only=True only; re-save "
            "the weights in a trusted environment with torch.save(model.state_dict(), path)."
        ) from err
    except Exception as err:  # junk bytes reach torch.load's internals: Key/Index/Memory errors too
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): "
            f"{type(err).__name__}: {_first_line(err)}"
        ) from err
    verify_checksum(state, path)
    return state


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


# --------------------------------------------------------------------------- checksums
# torch.save's zip records carry CRCs that torch.load never checks: a flipped byte inside a
# tensor loads silently. psapose checkpoints therefore carry their own digest of everything
# in them (tensor bytes, dtypes, shapes, keys and plain values), checked on every load.
CHECKSUM_KEY = "checksum"
_CHECKSUM_ALGORITHM = "blake2b-128"


def state_checksum(state: Mapping) -> dict[str, str]:
    """The digest stored under ``state["checksum"]``: all of ``state`` except that entry."""
    digest = hashlib.blake2b(digest_size=16)
    _hash_value(digest, {k: v for k, v in state.items() if k != CHECKSUM_KEY})
    return {"algorithm": _CHECKSUM_ALGORITHM, "digest": digest.hexdigest()}


def with_checksum(state: dict) -> dict:
    """``state`` plus its checksum entry (a new dict; the values are not copied)."""
    return {
        **{k: v for k, v in state.items() if k != CHECKSUM_KEY},
        CHECKSUM_KEY: state_checksum(state),
    }


def verify_checksum(state: object, path: str | os.PathLike) -> bool:
    """Check a loaded checkpoint against its stored checksum.

    Returns False when there is none (official checkpoints, plain state dicts, psapose
    checkpoints written before checksums); raises :class:`CheckpointError` on a mismatch.
    """
    if not isinstance(state, Mapping) or CHECKSUM_KEY not in state:
        return False
    stored = state[CHECKSUM_KEY]
    if not (
        isinstance(stored, Mapping)
        and stored.get("algorithm") == _CHECKSUM_ALGORITHM
        and isinstance(stored.get("digest"), str)
    ):
        raise CheckpointError(f"{path}: field 'checksum' is malformed ({stored!r:.80})")
    try:
        actual = state_checksum(state)["digest"]
    except Exception as err:  # an unhashable structure is a corrupt file, not a crash
        raise CheckpointError(f"{path}: cannot verify the checksum: {_first_line(err)}") from err
    if actual != stored["digest"]:
        raise CheckpointError(
            f"{path}: checksum mismatch (stored {stored['digest']}, contents {actual}): "
            "the file was changed or damaged after it was written"
        )
    return True


def _hash_value(digest: Any, value: object) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, Mapping):
        digest.update(f"D{len(value)}".encode())
        for key in sorted(value, key=repr):
            digest.update(repr(key).encode())
            _hash_value(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"{type(value).__name__[0]}{len(value)}".encode())
        for item in value:
            _hash_value(digest, item)
    elif value is None or isinstance(value, (bool, int, float, str, bytes, complex)):
        digest.update(f"{type(value).__name__}:{value!r};".encode())
    elif isinstance(value, (torch.dtype, torch.device, torch.Size)):
        digest.update(f"{type(value).__name__}:{value};".encode())
    else:
        raise TypeError(f"cannot checksum a {type(value).__name__}")


def extract_state_dict(obj: object, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensor mapping inside a loaded checkpoint object."""
    for _ in range(3):  # at most a few levels of nesting
        if not isinstance(obj, Mapping):
            break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        nested = next((obj[k] for k in _STATE_DICT_KEYS if isinstance(obj.get(k), Mapping)), None)
        if nested is None:
            break
        obj = nested
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(
            f"{source}: no state dict found (expected a mapping of parameter names to tensors)"
        )
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"{source}: entries {bad[:5]} are not tensors; expected a state dict or one of the keys {list(_STATE_DICT_KEYS)}"
        )
    state = {str(k): v for k, v in obj.items()}
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


@dataclass
class LoadReport:
    """What a load did (or would do): which tensors match, and which do not."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the model, not in the file
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the model
    # in the file, deliberately skipped (e.g. an ImageNet classifier)
    ignored: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    applied: bool = False  # whether the matching tensors were copied into the model

    @property
    def missing_outside_attention(self) -> list[str]:
        return [k for k in self.missing if ".deattn." not in k]

    def summary(self, max_groups: int = 12) -> str:
        done = (
            f"loaded {len(self.loaded)} tensors"
            if self.applied
            else f"{len(self.loaded)} tensors match"
        )
        lines = [f"{self.source}: {done}"]
        attention_missing = len(self.missing) - len(self.missing_outside_attention)
        if attention_missing:
            keep = ", which keep their initialisation" if self.applied else ""
            lines.append(
                f"  {attention_missing} attention-block tensors (deattn) are not in the file{keep}"
            )
        for title, keys in (
            ("missing from the file", self.missing_outside_attention),
            ("in the file but not in the model", self.unexpected),
            ("skipped (not part of the backbone)", self.ignored),
        ):
            if keys:
                lines.append(f"  {len(keys)} {title}:")
                lines += [f"    {line}" for line in group_keys(keys, max_groups)]
        if self.mismatched:
            lines.append(f"  {len(self.mismatched)} with a different shape:")
            lines += [
                f"    {k}: file {list(a)} vs model {list(b)}"
                for k, a, b in self.mismatched[:max_groups]
            ]
            if len(self.mismatched) > max_groups:
                lines.append(f"    ... and {len(self.mismatched) - max_groups} more")
        return "\n".join(lines)


def group_keys(keys: Iterable[str], max_groups: int = 12) -> list[str]:
    """Tensor counts per module, at the deepest module level that still fits in
    ``max_groups`` lines (``stage4.2.fuse_layers.1.0 (5 tensors)``), so a report of
    hundreds of keys stays readable and still says where they are."""
    modules = [k.rsplit(".", 1)[0] if "." in k else k for k in keys]
    depth = max(len(m.split(".")) for m in modules)
    while True:
        counts = Counter(".".join(m.split(".")[:depth]) for m in modules)
        if len(counts) <= max_groups or depth == 1:
            break
        depth -= 1
    lines = [f"{name} ({n} tensor{'s' if n > 1 else ''})" for name, n in sorted(counts.items())]
    if len(lines) > max_groups:
        lines = lines[:max_groups] + [f"... and {len(lines) - max_groups} more modules"]
    return lines


def _model_name(model: nn.Module) -> str:
    return type(model).__name__


def _compare(
    model_state: Mapping[str, torch.Tensor],
    file_state: Mapping[str, torch.Tensor],
    report: LoadReport,
):
    for key, value in file_state.items():
        if key not in model_state:
            report.unexpected.append(key)
        elif tuple(model_state[key].shape) != tuple(value.shape):
            report.mismatched.append((key, tuple(value.shape), tuple(model_state[key].shape)))
        else:
            report.loaded.append(key)
    report.missing = [k for k in model_state if k not in file_state]


def load_pose_checkpoint(
    model: nn.Module, path_or_url: str | os.PathLike, strict: bool = True
) -> LoadReport:
    """Load a whole-model checkpoint (psapose, or the official HRNet pose code's).

    With ``strict`` every tensor must match by name and shape, otherwise a
    :class:`CheckpointError` lists what differs. Without it, matching tensors
    load and the report says what did not.
    """
    state = load_state_dict_file(path_or_url)
    report = LoadReport(source=os.fspath(path_or_url))
    _compare(model.state_dict(), state, report)
    if report.mismatched or (strict and (report.missing or report.unexpected)):
        raise CheckpointError(
            f"{report.source} does not match {_model_name(model)}"
            f"{' (strict load)' if strict else ''}:\n{report.summary()}"
        )
    model.load_state_dict({k: state[k] for k in report.loaded}, strict=False)
    report.applied = True
    log.info(report.summary())
    return report


def load_pretrained_backbone(
    model: nn.Module, path_or_url: str | os.PathLike, prefixes: Iterable[str] | None = None
) -> LoadReport:
    """Initialise the backbone from ImageNet weights (HRNet classification or
    torchvision ResNet checkpoints).

    Only tensors under the model's ``backbone_prefixes`` are taken; the rest of
    the file (classifier, HRNet's classification head) is reported as skipped.
    The head and attention blocks keep their initialisation. A backbone tensor
    of the wrong shape (say, W48 weights for a W32 model) is an error.
    """
    prefixes = tuple(prefixes if prefixes is not None else getattr(model, "backbone_prefixes", ()))
    if not prefixes:
        raise CheckpointError(f"{_model_name(model)} declares no backbone_prefixes; pass prefixes=")
    state = load_state_dict_file(path_or_url)
    source = os.fspath(path_or_url)

    def in_backbone(key: str) -> bool:
        return key.split(".", 1)[0] in prefixes

    backbone_state = {k: v for k, v in state.items() if in_backbone(k)}
    report = LoadReport(source=source, ignored=[k for k in state if k not in backbone_state])
    model_state = {k: v for k, v in model.state_dict().items() if in_backbone(k)}
    _compare(model_state, backbone_state, report)
    if report.mismatched:
        raise CheckpointError(
            f"{source}: backbone tensors do not fit {_model_name(model)}:\n{report.summary()}"
        )
    if not report.loaded:
        raise CheckpointError(
            f"{source}: no backbone tensor matches {_model_name(model)} (prefixes {list(prefixes)}); "
            "is it a checkpoint of the same architecture?"
        )
    model.load_state_dict({k: state[k] for k in report.loaded}, strict=False)
    report.applied = True
    log.info(report.summary())
    return report
