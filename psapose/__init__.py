"""psapose: Polarized Self-Attention for top-down human pose estimation."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["PoseEstimator", "Poses", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy, so that `import psapose` (and the data tools) do not pull in torch and the models.
    if name in ("PoseEstimator", "Poses"):
        from psapose import api

        return getattr(api, name)
    raise AttributeError(f"module 'psapose' has no attribute {name!r}")
