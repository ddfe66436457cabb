#!/usr/bin/env python
"""Render what each PSA block attends to (spatial and channel attention), for a trained run.

The same as ``psapose attention-maps``; the code and its help (``--help``):
psapose/commands/attention_maps.py.
"""

from psapose.commands.attention_maps import main

if __name__ == "__main__":
    raise SystemExit(main())
