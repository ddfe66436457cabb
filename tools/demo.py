#!/usr/bin/env python
"""Draw estimated poses on an image, a folder of images or a video, and write COCO results.

The same as ``psapose demo``; the code and its help (``--help``):
psapose/commands/demo.py.
"""

from psapose.commands.demo import main

if __name__ == "__main__":
    raise SystemExit(main())
