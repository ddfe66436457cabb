#!/usr/bin/env python
"""Benchmarks, each measured beside its own reference in the same run.

The same as ``psapose benchmark``; the code and its help (``--help``):
psapose/commands/benchmark.py.
"""

from psapose.commands.benchmark import main

if __name__ == "__main__":
    raise SystemExit(main())
