#!/usr/bin/env python
"""Quick start: train the small HRNet + PSA on the synthetic data on the CPU, then evaluate.

The same as ``psapose quickstart``; the code and its help (``--help``):
psapose/commands/quickstart.py.
"""

from psapose.commands.quickstart import main

if __name__ == "__main__":
    raise SystemExit(main())
