"""The attention spec: which block each residual block gets, built from the ``attention``
config group (:class:`AttentionSpec`, :func:`as_attention_spec`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

from torch import nn

from .global_context import GlobalContext
from .psa import PSA_LAYOUTS, PSA_VARIANTS, PolarizedSelfAttention, _check_choice
from .squeeze_excite import SqueezeExcitation

__all__ = ["ATTENTION_KINDS", "AttentionSpec", "as_attention_spec"]

ATTENTION_KINDS = ("none", "psa", "se", "gc")


@dataclass(frozen=True)
class AttentionSpec:
    """What attention block to put in each residual block.

    Args:
        kind: ``none``, ``psa``, ``se`` or ``gc``.
        layout: PSA layout, ``parallel`` or ``sequential``.
        variant: PSA variant, ``official`` (DeLightCMU/PSA code, checkpoint
            compatible) or ``paper`` (the paper's equations).
        reduction: channel reduction ratio of the SE and GC bottlenecks.
    """

    kind: str = "psa"
    layout: str = "parallel"
    variant: str = "official"
    reduction: int = 16

    def __post_init__(self) -> None:
        _check_choice("attention.kind", self.kind, ATTENTION_KINDS)
        _check_choice("attention.layout", self.layout, PSA_LAYOUTS)
        _check_choice("attention.variant", self.variant, PSA_VARIANTS)
        if not isinstance(self.reduction, int) or self.reduction < 1:
            raise ValueError(
                f"attention.reduction must be a positive integer, got {self.reduction!r}"
            )

    @classmethod
    def from_name(cls, name: str, **overrides: object) -> AttentionSpec:
        """``none``, ``psa_parallel``, ``psa_sequential``, ``se`` or ``gc``."""
        names = {
            "none": {"kind": "none"},
            "psa_parallel": {"kind": "psa", "layout": "parallel"},
            "psa_sequential": {"kind": "psa", "layout": "sequential"},
            "se": {"kind": "se"},
            "gc": {"kind": "gc"},
        }
        if name not in names:
            raise ValueError(f"unknown attention {name!r}; choose one of {sorted(names)}")
        return cls(**{**names[name], **overrides})

    @property
    def name(self) -> str:
        return f"psa_{self.layout}" if self.kind == "psa" else self.kind

    def build(self, channels: int) -> nn.Module | None:
        """The block for a feature map with ``channels`` channels (``None`` for ``none``)."""
        if self.kind == "none":
            return None
        if self.kind == "psa":
            return PolarizedSelfAttention(channels, layout=self.layout, variant=self.variant)
        if self.kind == "se":
            return SqueezeExcitation(channels, reduction=self.reduction)
        return GlobalContext(channels, reduction=self.reduction)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def as_attention_spec(attention: AttentionSpec | Mapping | str | None) -> AttentionSpec:
    """Accept a spec, a mapping of its fields, a name such as ``psa_parallel``, or ``None``."""
    if attention is None:
        return AttentionSpec(kind="none")
    if isinstance(attention, AttentionSpec):
        return attention
    if isinstance(attention, str):
        return AttentionSpec.from_name(attention)
    if isinstance(attention, Mapping):
        fields = {k: v for k, v in attention.items() if k != "_target_"}
        unknown = set(fields) - set(AttentionSpec.__dataclass_fields__)
        if unknown:
            raise ValueError(
                f"unknown attention key(s) {sorted(unknown)}; allowed: {sorted(AttentionSpec.__dataclass_fields__)}"
            )
        return AttentionSpec(**fields)
    raise TypeError(
        f"attention must be an AttentionSpec, a mapping, a name or None, got {type(attention).__name__}"
    )
