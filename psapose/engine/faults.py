"""Faults a long run meets: stop signals, unreadable samples, non-finite losses.

:class:`FaultCounts` keeps a run's account of them (what was skipped, per run and
per epoch) and undoes a step whose loss is not finite.

**Stop signals.** Schedulers pre-empt a job by sending SIGTERM to its whole
process group (Slurm, ``timeout``, systemd, Kubernetes), and ``torchrun``
forwards the one it gets to its ranks, so a rank can see SIGTERM twice and its
DataLoader workers die of it at the same moment as the main process is told to
stop. Here:

* the first SIGTERM or SIGINT only sets a flag (:class:`StopSignals`) that the
  loop reads between steps; a repeated SIGTERM is the launcher's copy and is
  ignored; a SIGINT after the first signal (Ctrl-C pressed again) stops at once;
* once a stop is requested, a dying worker can no longer raise PyTorch's
  ``DataLoader worker ... killed by signal`` from whatever line the main process
  is on (its SIGCHLD check is suspended); the loader reports it at the next
  batch instead, where the loop (and evaluation) treat it as the end;
* workers ignore SIGINT (a terminal's Ctrl-C reaches the whole group; the main
  process decides), but not SIGTERM: Python's own exit terminates daemonic
  workers with SIGTERM and waits for them, so a worker ignoring it would hang
  every interrupted run at exit.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from psapose.data.types import Batch
from psapose.engine.distributed import barrier

if TYPE_CHECKING:
    from psapose.engine.trainer import Trainer

__all__ = [
    "BadSamples",
    "DataError",
    "FaultCounts",
    "NonFiniteLossError",
    "StopSignals",
    "TrainingError",
    "TrainingInterrupted",
    "batches_until_stopped",
    "init_worker",
    "stop_for_signal",
]

log = logging.getLogger("psapose")

_EXAMPLES = 5  # bad files named in the error that stops a run


class TrainingError(RuntimeError):
    """A fault that stops the run on purpose; the last good checkpoint is kept as it was."""


class DataError(TrainingError):
    """More unreadable training samples than ``data.max_bad_fraction`` allows."""


class NonFiniteLossError(TrainingError, FloatingPointError):
    """``schedule.max_nonfinite_steps`` NaN/inf losses in a row."""


class TrainingInterrupted(Exception):  # noqa: N818 (not an error: a requested stop)
    """SIGTERM or SIGINT stopped training after writing a resumable checkpoint."""

    def __init__(self, signum: int, checkpoint: Path, epoch: int, batch: int) -> None:
        name = signal.Signals(signum).name
        super().__init__(
            f"stopped by {name} at epoch {epoch + 1}, batch {batch}; "
            f"resumable checkpoint {checkpoint}"
        )
        self.signum, self.checkpoint, self.epoch, self.batch = signum, checkpoint, epoch, batch

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process stopped by a signal: 128 + its number."""
        return 128 + self.signum


def init_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: Ctrl-C is for the main process.

    A terminal's Ctrl-C reaches the whole process group; the main process turns it
    into a checkpoint and a clean stop, with its workers alive meanwhile. SIGTERM is
    left alone (see the module docstring): its death is handled in the main process.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def batches_until_stopped(
    batches: Iterable, stop_requested: Callable[[], bool], on_stop: Callable[[Exception], None]
) -> Iterator:
    """A loader's batches, ended cleanly when its workers died of a stop signal.

    A process-group SIGTERM kills the DataLoader workers as the main process is told to
    stop; the loader then fails at the next batch (a RuntimeError naming the dead worker,
    or a reset socket mid-transfer). Once a stop was requested that failure goes to
    ``on_stop`` (which may raise) and the batches end; before, it is raised as it is.
    """
    iterator = iter(batches)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except Exception as err:
            if not stop_requested():
                raise
            on_stop(err)
            return
        yield batch


def _torch_sigchld_handler() -> Any:
    """PyTorch's SIGCHLD check for dead DataLoader workers, installed now if it was not yet."""
    try:
        from torch.utils.data._utils import signal_handling

        signal_handling._set_SIGCHLD_handler()
    except (ImportError, AttributeError):  # another PyTorch layout: nothing to wrap
        pass
    return signal.getsignal(signal.SIGCHLD)


class StopSignals:
    """SIGTERM/SIGINT handling for a training loop (see the module docstring).

    Use as a context manager in the main thread; elsewhere it does nothing
    (handlers can only be installed there). ``signum`` holds the first signal.
    """

    watched = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self
        self._previous = {s: signal.getsignal(s) for s in self.watched}
        child = _torch_sigchld_handler()
        self._previous[signal.SIGCHLD] = child
        for s in self.watched:
            signal.signal(s, self._on_stop_signal)
        if callable(child):
            signal.signal(signal.SIGCHLD, self._child_handler(child))
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            if s == signal.SIGCHLD and self.signum is not None:
                # Workers of the stopped run may still be dying: their SIGCHLD must not
                # raise in the middle of the exit. The wrapper stays (it passes on again
                # only if no stop was requested).
                continue
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
            return
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            # Ctrl-C pressed again: the user wants out now. The last checkpoint is whole.
            self.__exit__()
            raise KeyboardInterrupt("second SIGINT")
        log.info("%s received again: already stopping", signal.Signals(signum).name)

    def _child_handler(self, check: Callable[[int, FrameType | None], Any]) -> Callable:
        def on_child(signum: int, frame: FrameType | None) -> None:
            # While stopping, workers may die with the rest of the process group; the
            # loader reports that at the next batch instead of at an arbitrary line.
            if self.signum is None:
                check(signum, frame)

        return on_child


class BadSamples:
    """Unreadable training samples, by dataset index: logged once, counted, capped.

    ``limit_fraction`` of ``total`` distinct samples may be unreadable before
    :meth:`add` raises :class:`DataError` naming example files.
    """

    def __init__(self, total: int, limit_fraction: float) -> None:
        self.total, self.limit_fraction = total, limit_fraction
        self.samples: dict[int, str] = {}  # dataset index -> reason (path named)

    def new_in(self, indices: list[int], reasons: list[str]) -> list[tuple[int, str]]:
        """The (index, reason) pairs not seen before."""
        return [(i, r) for i, r in zip(indices, reasons, strict=True) if i not in self.samples]

    def add(self, parts: list[list[tuple[int, str]]], announce: bool = True) -> None:
        """Merge newly seen unreadable samples (one list per rank); stop past the limit."""
        logged = set(self.samples.values())
        for part in parts:
            for index, reason in part:
                if index in self.samples:
                    continue
                self.samples[index] = reason
                if reason not in logged and announce:
                    log.warning("skipping an unreadable training sample: %s", reason)
                logged.add(reason)
        limit = self.limit_fraction * self.total
        if len(self.samples) > limit:
            examples = list(dict.fromkeys(self.samples.values()))[:_EXAMPLES]
            raise DataError(
                f"{len(self.samples)} of {self.total} training samples cannot be "
                f"read, more than data.max_bad_fraction={self.limit_fraction} allows "
                f"({limit:.1f}); for example:\n  "
                + "\n  ".join(examples)
                + "\nFix or remove these files, or raise data.max_bad_fraction."
            )

    def summary(self, skipped: int) -> str:
        files = len(set(self.samples.values()))
        return (
            f"{skipped} unreadable samples skipped "
            f"({len(self.samples)} distinct samples, {files} files)"
        )


class FaultCounts:
    """A run's fault accounting: skipped samples and non-finite steps, per run and per epoch.

    Also guards a step against a non-finite loss: the model's buffers (BatchNorm
    statistics) are snapshotted before each forward pass and put back when the
    step is skipped; ``max_nonfinite_steps`` skipped in a row raise
    :class:`NonFiniteLossError`.
    """

    def __init__(self, total_samples: int, max_bad_fraction: float, max_nonfinite: int) -> None:
        self.counters = {"skipped_samples": 0, "nonfinite_steps": 0}  # whole run
        self.epoch_counters = {"skipped_samples": 0, "nonfinite_steps": 0}
        self.bad = BadSamples(total_samples, max_bad_fraction)
        self.consecutive_nonfinite = 0
        self.max_nonfinite = max_nonfinite
        self._buffer_snapshot: list[torch.Tensor] | None = None

    def unreadable_in(self, batch: Batch) -> tuple[int, list[tuple[int, str]]]:
        """Rows of ``batch`` whose image could not be read, and those not seen before."""
        if "valid" not in batch:
            return 0, []
        rows = (~batch["valid"].bool()).nonzero().flatten().tolist()
        indices = [int(batch["index"][r]) for r in rows]
        return len(rows), self.bad.new_in(indices, [batch["error"][r] for r in rows])

    def count_skipped(self, rows: int) -> None:
        self.counters["skipped_samples"] += rows
        self.epoch_counters["skipped_samples"] += rows

    def snapshot_buffers(self, model: nn.Module) -> None:
        # BatchNorm statistics move in the forward pass: a NaN batch would poison them
        # even though its optimiser step is skipped, so they are put back from here.
        buffers = list(model.buffers())
        if self._buffer_snapshot is None:
            self._buffer_snapshot = [b.detach().clone() for b in buffers]
            return
        with torch.no_grad():
            for saved, live in zip(self._buffer_snapshot, buffers, strict=True):
                saved.copy_(live)

    def skip_nonfinite_step(
        self,
        loss: float,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        where: str,
        latest: Path,
        announce: bool,
    ) -> None:
        """Undo the step's effects, count it, and stop past ``max_nonfinite`` in a row."""
        optimizer.zero_grad(set_to_none=True)
        if self._buffer_snapshot is not None:
            with torch.no_grad():
                for saved, live in zip(self._buffer_snapshot, model.buffers(), strict=True):
                    live.copy_(saved)
        self.consecutive_nonfinite += 1
        self.counters["nonfinite_steps"] += 1
        self.epoch_counters["nonfinite_steps"] += 1
        limit = self.max_nonfinite
        if announce:
            log.warning(
                "non-finite loss %s at %s: step skipped (%d in a row; the run stops at %d)",
                loss, where, self.consecutive_nonfinite, limit,
            )  # fmt: skip
        if self.consecutive_nonfinite >= limit:
            raise NonFiniteLossError(
                f"{self.consecutive_nonfinite} non-finite losses in a row (the last {loss} at "
                f"{where}), schedule.max_nonfinite_steps={limit}: stopping. The last good "
                f"checkpoint is {latest if latest.is_file() else 'none (none was written yet)'}; "
                "lower schedule.lr, set schedule.grad_clip, or check the data, then resume=auto."
            )

    def end_epoch(self) -> dict[str, int]:
        """The finished epoch's counts; the next epoch's start at zero."""
        counts, self.epoch_counters = self.epoch_counters, dict.fromkeys(self.epoch_counters, 0)
        return counts

    def summary(self) -> str:
        """The run's faults in words ("" when there were none)."""
        parts = []
        if self.counters["skipped_samples"]:
            parts.append(self.bad.summary(self.counters["skipped_samples"]))
        if self.counters["nonfinite_steps"]:
            parts.append(f"{self.counters['nonfinite_steps']} non-finite loss steps skipped")
        return "; ".join(parts)


def stop_for_signal(trainer: Trainer, write: bool) -> None:
    """Stop a run for its agreed stop signal: checkpoint (``write``), say how to continue, raise
    :class:`TrainingInterrupted`."""
    signum = trainer.stop_signal or trainer.signals.signum or signal.SIGTERM
    path = trainer.save() if write else trainer.output_dir / "checkpoints" / "latest.pth"
    barrier()
    if trainer.dist.is_main:
        epochs = trainer.cfg.schedule.epochs
        where = (
            f"during the evaluation of epoch {trainer.epoch}/{epochs} (its "
            "training is saved; a resumed run evaluates it first)"
            if trainer.pending_eval
            else f"at epoch {trainer.epoch + 1}/{epochs}, batch "
            f"{trainer.batch_in_epoch}/{trainer.sampler.num_batches()}"
        )
        log.warning(
            "%s received: stopped %s (step %d); checkpoint %s. "
            "Continue with: tools/train.py <same overrides> output_dir=%s resume=auto",
            signal.Signals(signum).name, where, trainer.step, path, trainer.output_dir,
        )  # fmt: skip
    raise TrainingInterrupted(signum, path, trainer.epoch, trainer.batch_in_epoch)
