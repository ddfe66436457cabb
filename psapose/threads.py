"""CPU threads on a shared machine: how many, and re-chosen as the load changes.

Measured on 2 cores (issue 14): the quick start trains at ~95 img/s quiet with 2
intra-op threads, but at 15-21 img/s beside *one* other busy process, while 1
thread gives 60 img/s there. Every parallel op waits for its slowest thread,
and a thread sharing its core with another process is descheduled for whole
time slices; OpenMP threads that spin while they wait make it worse. So:

* the cores psapose may use are those of its CPU affinity, capped by a cgroup CPU
  quota (containers, Slurm, Kubernetes limits): :func:`usable_cores`;
* the main process's intra-op threads are the usable cores minus what *other*
  processes keep busy on them, measured from ``/proc/stat`` against this
  process's and its DataLoader workers' own CPU time, and re-chosen every few
  seconds (:class:`ThreadPolicy`); a ``threads=N`` setting (or ``OMP_NUM_THREADS``)
  fixes the number, and ``deterministic=true`` keeps the process's own count (a
  fixed count keeps float reductions bit-reproducible, and an exact resume needs
  the same count as the run it continues);
* OpenCV runs without a thread pool of its own, in the main process and the
  DataLoader workers it forks (:func:`single_threaded_opencv`; PyTorch runs each
  worker with one torch thread);
* OpenMP keeps its own wait policy (spinning briefly, then sleeping). Measured
  (docs/benchmarks.md, 2026-12-07): forcing ``OMP_WAIT_POLICY=PASSIVE`` cost 9% on
  a quiet machine and 16% beside a busy process, where the thread count has already
  dropped to one; the re-choice of the thread count is what earns the gain under
  load. A user's ``OMP_WAIT_POLICY`` is left alone and logged.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

__all__ = [
    "ThreadPolicy",
    "resolve_workers",
    "single_threaded_opencv",
    "busy_cores_of_others",
    "cgroup_quota",
    "usable_cores",
]

log = logging.getLogger("psapose")


def _affinity() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return set(range(os.cpu_count() or 1))


def cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by a cgroup quota (v2 ``cpu.max``, v1 ``cfs_quota_us``), or None."""
    v2 = root / "cpu.max"
    try:
        if v2.is_file():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        base = root / "cpu"
        quota = int((base / "cpu.cfs_quota_us").read_text())
        period = int((base / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def usable_cores() -> int:
    """The cores this process may run on: its affinity, capped by a cgroup CPU quota."""
    cores = len(_affinity())
    quota = cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota + 0.01)))
    return max(1, cores)


def resolve_workers(requested: int | None) -> int:
    """DataLoader workers: ``requested`` if given, else one core's worth less than the usable
    cores (the main process needs one), at most 8; none on a single core."""
    if requested is not None:
        return int(requested)
    return max(0, min(8, usable_cores() - 1))


def single_threaded_opencv() -> None:
    """OpenCV without its own thread pool, in this process and the workers it forks.

    Its pool would compete with torch's threads for the same cores, and a pool that ran
    before a fork can deadlock a DataLoader worker that touches it (seen here: a worker
    hung in ``cv2.setNumThreads``). Set in the main process, before workers start, so
    they inherit it; PyTorch already runs each worker with one torch thread.
    """
    import cv2

    cv2.setNumThreads(1)


# ----------------------------------------------------------------------------- load
_CLOCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_busy(cpus: set[int]) -> tuple[float, float] | None:
    """(busy, total) clock ticks of ``cpus`` since boot, from ``/proc/stat``."""
    busy = total = 0.0
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        values = [float(v) for v in fields]
        idle = values[3] + (values[4] if len(values) > 4 else 0.0)  # idle + iowait
        # user..steal; guest time is already inside user and nice.
        all_time = sum(values[:8]) if len(values) >= 8 else sum(values)
        busy += all_time - idle
        total += all_time
    return busy, total


def _process_ticks(pid: int | str) -> float:
    """utime + stime of a process (all its threads), in clock ticks."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return float(fields[11]) + float(fields[12])


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return out


class _LoadSampler:
    """Cores kept busy since the previous sample by *other* processes on ``cpus``, and by
    this process's own children (its DataLoader workers)."""

    def __init__(self, cpus: set[int]) -> None:
        self.cpus = cpus
        self.last = self._read()
        self.workers = 0.0  # cores the children kept busy in the last interval

    def _read(self) -> tuple[float, float, float, float] | None:
        system = _cpu_busy(self.cpus)
        if system is None:
            return None
        pid = os.getpid()
        children = sum(_process_ticks(c) for c in _children(pid))
        return system[0], system[1], _process_ticks(pid) + children, children

    def sample(self) -> float | None:
        now = self._read()
        before, self.last = self.last, now
        if now is None or before is None or now[1] <= before[1]:
            return None
        busy, total, ours, children = (a - b for a, b in zip(now, before, strict=True))
        # Ticks are per CPU: total / cores is the wall time of the interval in ticks.
        wall = max(total / max(len(self.cpus), 1), 1e-9)
        # A child that exited in between makes its ticks vanish: never below zero.
        self.workers = max(0.0, children / wall)
        return max(0.0, (busy - ours) / wall)


def busy_cores_of_others(seconds: float = 0.5) -> float | None:
    """How many of this process's usable cores other processes keep busy (measured over
    ``seconds``); None where ``/proc`` is not available."""
    sampler = _LoadSampler(_affinity())
    time.sleep(seconds)
    return sampler.sample()


class ThreadPolicy:
    """Chooses the main process's intra-op thread count and re-chooses it as load changes.

    Args:
        requested: ``threads=`` from the config; fixes the count (no adaptation).
        fixed: keep the first choice (``deterministic=true``: a fixed thread count keeps
            float reductions bit-reproducible).
        interval: seconds between re-choices.
    """

    def __init__(
        self, requested: int | None = None, fixed: bool = False, interval: float = 5.0
    ) -> None:
        self.cores = usable_cores()
        if requested is None and os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():
            requested = int(os.environ["OMP_NUM_THREADS"])  # the user's own setting wins
        self.requested = requested
        self.fixed = fixed
        self.adaptive = requested is None and not fixed
        self.interval = interval
        self.sampler = _LoadSampler(_affinity())
        self.threads = 0
        self.previous: int | None = None
        self._next = 0.0

    def _target(self, others: float | None, workers: float = 0.0) -> int:
        if self.requested is not None:
            return int(self.requested)
        if others is None:
            return self.cores
        # Cores left by the other processes and by our own DataLoader workers (a thread
        # sharing a core with a worker stalls every op as one sharing it with a stranger),
        # rounded generously: a core busy 30% of the time is still mostly ours.
        return max(1, min(self.cores, math.floor(self.cores - others - workers + 0.5)))

    def start(self, label: str = "training") -> int:
        """Set the first thread count (load measured over half a second) and log the choice."""
        import torch

        single_threaded_opencv()
        self.previous = torch.get_num_threads()
        others = busy_cores_of_others(0.5) if self.adaptive else None
        if self.fixed and self.requested is None:
            self.threads = self.previous  # keep what the process runs with: reproducible
        else:
            self.threads = self._target(others)
        torch.set_num_threads(self.threads)
        self.sampler = _LoadSampler(self.sampler.cpus)
        self._next = time.monotonic() + self.interval
        why = (
            f"threads={self.requested}"
            if self.requested is not None
            else f"{self.cores} usable cores"
            + (f", {others:.1f} kept busy by other processes" if others else "")
            + ("" if self.adaptive else "; kept fixed: deterministic=true")
        )
        log.info(
            "%s: %d intra-op thread%s (%s; OMP_WAIT_POLICY=%s)",
            label, self.threads, "" if self.threads == 1 else "s", why,
            os.environ.get("OMP_WAIT_POLICY", "unset"),
        )  # fmt: skip
        return self.threads

    def restore(self) -> None:
        """Put back the thread count the process had before :meth:`start`."""
        if self.previous is not None:
            import torch

            torch.set_num_threads(self.previous)

    def step(self) -> int:
        """Re-choose at most every ``interval`` seconds; cheap to call every step."""
        if not self.adaptive or time.monotonic() < self._next:
            return self.threads
        self._next = time.monotonic() + self.interval
        others = self.sampler.sample()
        target = self._target(others, self.sampler.workers)
        if target != self.threads:
            import torch

            log.info("load changed: %d -> %d intra-op threads", self.threads, target)
            self.threads = target
            torch.set_num_threads(target)
        return self.threads
