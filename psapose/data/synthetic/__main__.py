"""``python -m psapose.data.synthetic OUT --images N --seed S``: see :func:`.writer.main`."""

import sys

from .writer import main

if __name__ == "__main__":
    sys.exit(main())
