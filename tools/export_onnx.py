#!/usr/bin/env python
"""Export a pose network to ONNX (dynamic batch) and check it against PyTorch with onnxruntime.

The same as ``psapose export``; the code and its help (``--help``):
psapose/commands/export_onnx.py.
"""

from psapose.commands.export_onnx import main

if __name__ == "__main__":
    raise SystemExit(main())
