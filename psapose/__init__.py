"""psapose: Polarized Self-Attention for top-down human pose estimation."""

__version__ = "0.1.0"
