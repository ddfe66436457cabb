"""Attention blocks that sit inside residual blocks, behind one interface.

Every block maps ``[N, C, H, W] -> [N, C, H, W]``. Which block is used, and how,
is described by an :class:`AttentionSpec` (built from the ``attention`` config
group); the backbones call ``spec.build(channels)`` once per residual block and
store the result as the submodule ``deattn`` (the official PSA naming).

Blocks:

* :class:`PolarizedSelfAttention` (PSA, Liu et al. 2021), layouts ``parallel``
  and ``sequential``, variants ``paper`` and ``official``;
* :class:`SqueezeExcitation` (Hu et al. 2018) and :class:`GlobalContext`
  (Cao et al. 2019), the channel-attention peers of the paper's Table 1.

The package holds one file per block, as timm's ``layers``: :mod:`.psa` (and its fast
path, :mod:`.psa_fast`), :mod:`.squeeze_excite`, :mod:`.global_context`, and
:mod:`.spec` (the spec that builds them); every public name is imported from here.
"""

from .global_context import GlobalContext
from .psa import PSA_LAYOUTS, PSA_VARIANTS, PolarizedSelfAttention, reference_psa, set_fast_psa
from .spec import ATTENTION_KINDS, AttentionSpec, as_attention_spec
from .squeeze_excite import SqueezeExcitation

__all__ = [
    "ATTENTION_KINDS",
    "PSA_LAYOUTS",
    "PSA_VARIANTS",
    "AttentionSpec",
    "GlobalContext",
    "PolarizedSelfAttention",
    "SqueezeExcitation",
    "as_attention_spec",
    "reference_psa",
    "set_fast_psa",
]
