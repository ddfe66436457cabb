#!/usr/bin/env python
"""Evaluate a checkpoint on val2017 (detector or ground-truth boxes) or write test-dev results.

The same as ``psapose test``; the code and its help (``--help``):
psapose/commands/test.py.
"""

from psapose.commands.test import main

if __name__ == "__main__":
    raise SystemExit(main())
