"""A progress line for loops over batches (rate and ETA), and the trainer's line per epoch."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from typing import Any

__all__ = ["Progress", "epoch_line"]

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


def epoch_line(
    record: Mapping[str, Any],
    stats: Mapping[str, float] | None,
    epochs: int,
    best_metric: str,
    counters: Any,
) -> str:
    """``epoch 3/46 loss 1.2e-03 AP 0.4 (2 skipped samples)``: the epoch's loss, its AP and
    the metric that picks best.pth when evaluated, and the fault counts that are not zero
    (``counters``: :class:`~psapose.engine.faults.FaultCounts`, whose keys the record holds)."""
    faults = ", ".join(
        f"{record[k]} {k.replace('_', ' ')}" for k in counters.counters if record.get(k)
    )
    shown = [k for k in dict.fromkeys(("AP", best_metric)) if stats and k in stats]
    scores = "".join(f" {k} {stats[k]:.4f}" for k in shown)
    return (
        f"epoch {record['epoch']}/{epochs} loss {record['loss']:.4e}{scores}"
        f"{f' ({faults})' if faults else ''}"
    )
