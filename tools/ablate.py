#!/usr/bin/env python
"""Train every variant of a sweep the same way, then compare AP, parameters, GFLOPs and speed.

The same as ``psapose ablate``; the code and its help (``--help``):
psapose/commands/ablate.py.
"""

from psapose.commands.ablate import main

if __name__ == "__main__":
    raise SystemExit(main())
