"""The benchmarks of ``psapose benchmark`` (``python tools/benchmark.py``), one module per part.

``data`` (the data pipeline beside JPEG decoding), ``eval`` (evaluation's fast path beside
the per-instance reference), ``model`` (training and inference images/s per backbone x
attention) and ``train`` (the quick start's training speed beside busy processes); each
module's ``register(subparsers)`` adds its sub-command (psapose/commands/benchmark.py).
"""
