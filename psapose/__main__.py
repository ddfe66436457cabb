"""``python -m psapose COMMAND ARGS``: the ``psapose`` command (psapose/commands)."""

from psapose.commands import main

if __name__ == "__main__":
    raise SystemExit(main())
