#!/usr/bin/env python
"""One prepared GPU check (run through tools/gpu_check.sh; see its header).

The same as ``psapose gpu-check``; the code and its help (``--help``):
psapose/commands/gpu_check.py.
"""

from psapose.commands.gpu_check import main

if __name__ == "__main__":
    raise SystemExit(main())
