#!/usr/bin/env python
"""Train (and evaluate) a pose model from the Hydra config.

The same as ``psapose train``; the code and its help (``--help``):
psapose/commands/train.py.
"""

from psapose.commands.train import main

if __name__ == "__main__":
    raise SystemExit(main())
