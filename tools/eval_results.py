#!/usr/bin/env python
"""Score a COCO keypoint results file against a ground truth with pycocotools.

The same as ``psapose eval-results``; the code and its help (``--help``):
psapose/commands/eval_results.py.
"""

from psapose.commands.eval_results import main

if __name__ == "__main__":
    raise SystemExit(main())
