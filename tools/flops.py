#!/usr/bin/env python
"""Parameters and GFLOPs of every backbone x attention x input size, beside the paper's figures.

The same as ``psapose flops``; the code and its help (``--help``):
psapose/commands/flops.py.
"""

from psapose.commands.flops import main

if __name__ == "__main__":
    raise SystemExit(main())
