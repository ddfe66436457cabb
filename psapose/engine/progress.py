"""A progress line for loops over batches: rate and ETA."""

from __future__ import annotations

import logging
import sys
import time

__all__ = ["Progress"]

log = logging.getLogger("psapose")


class Progress:
    """Rate and ETA: a live line on a terminal, periodic log lines otherwise."""

    def __init__(self, total: int, label: str, every: int = 20, enabled: bool = True) -> None:
        self.total, self.label, self.every, self.enabled = total, label, every, enabled
        self.count, self.steps, self.start = 0, 0, time.perf_counter()
        self.tty = enabled and sys.stderr.isatty()
        self.extra = ""

    def update(self, items: int, extra: str = "") -> None:
        self.count += items
        self.steps += 1
        self.extra = extra
        if not self.enabled:
            return
        if self.tty:
            sys.stderr.write("\r" + self.line())
            sys.stderr.flush()
        elif self.steps % self.every == 0:
            log.info(self.line())

    def line(self) -> str:
        elapsed = time.perf_counter() - self.start
        rate = self.count / max(elapsed, 1e-9)
        eta = (self.total - self.steps) * elapsed / max(self.steps, 1)
        return (
            f"{self.label} {self.steps}/{self.total} {rate:.1f} img/s "
            f"eta {eta:.0f}s {self.extra}".rstrip()
        )

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\r" + self.line() + "\n")
