"""Threads on a shared machine (issue 14): usable cores from affinity and cgroup quotas, the
load of other processes measured from /proc, the thread count chosen from it, and
single-threaded DataLoader workers. Speeds are in docs/benchmarks.md (tools/benchmark.py
train), not asserted here."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from psapose.threads import (
    ThreadPolicy,
    _children,
    _LoadSampler,
    busy_cores_of_others,
    cgroup_quota,
    resolve_workers,
    usable_cores,
)

needs_proc = pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="needs Linux /proc")


def test_cgroup_quotas_v1_and_v2_are_read(tmp_path):
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert cgroup_quota(v2) == 1.5
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cgroup_quota(v2) is None
    v1 = tmp_path / "v1" / "cpu"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_quota(tmp_path / "v1") == 3.0
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_quota(tmp_path / "v1") is None
    assert cgroup_quota(tmp_path / "absent") is None


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity")
def test_usable_cores_follow_the_cpu_affinity():
    code = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
        "from psapose.threads import usable_cores, resolve_workers\n"
        "print(usable_cores(), resolve_workers(None), resolve_workers(3))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "0", "3"]  # one core: no worker beside the main process
    assert usable_cores() == len(os.sched_getaffinity(0))
    assert resolve_workers(None) == max(0, min(8, usable_cores() - 1))


def test_the_thread_count_is_the_cores_left_by_others(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    policy = ThreadPolicy()
    policy.cores = 4
    assert [policy._target(x) for x in (None, 0.0, 0.4, 0.6, 1.0, 2.2, 3.9, 9.0)] == [
        4, 4, 4, 3, 3, 2, 1, 1,
    ]  # fmt: skip
    fixed = ThreadPolicy(requested=3)
    assert not fixed.adaptive and fixed._target(2.0) == 3
    assert policy._target(0.5, workers=0.3) == 3 and policy._target(0.5, workers=1.2) == 2
    assert not ThreadPolicy(fixed=True).adaptive
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert ThreadPolicy().requested == 3  # the user's own setting wins


@needs_proc
def test_a_busy_process_is_measured_and_leaves_this_one_fewer_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cpus = sorted(os.sched_getaffinity(0))
    threads = torch.get_num_threads()
    # A stranger, not our child: a child's ticks count as our own workers' (they are
    # measured apart), so the busy loop is started by a shell that exits at once.
    launcher = subprocess.run(
        ["sh", "-c", f"'{sys.executable}' -c 'while True: pass' >/dev/null 2>&1 & echo $!"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    busy = int(launcher.stdout.split()[0])
    try:
        assert busy not in _children(os.getpid())
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(busy, {cpus[0]})
        time.sleep(0.3)
        others = busy_cores_of_others(1.0)
        assert others is not None and others >= 0.6, others  # it keeps about one core busy
        policy = ThreadPolicy(interval=0.0)
        chosen = policy.start("test")
        assert chosen == torch.get_num_threads() <= max(1, len(cpus) - 1)
    finally:
        os.kill(busy, signal.SIGKILL)
        torch.set_num_threads(threads)


@needs_proc
def test_our_own_children_are_measured_as_workers_not_as_strangers():
    sampler = _LoadSampler(set(os.sched_getaffinity(0)))
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.0)
        others = sampler.sample()
        assert others is not None
        assert sampler.workers >= 0.5, sampler.workers  # the child: about one core
    finally:
        child.kill()
        child.wait()


class _FixedLoad:
    def __init__(self, others: float) -> None:
        self.others, self.workers = others, 0.0

    def sample(self) -> float:
        return self.others


def test_the_policy_re_chooses_as_the_load_changes(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    threads = torch.get_num_threads()
    policy = ThreadPolicy(interval=0.0)
    policy.cores, policy.threads = 2, 2
    try:
        policy.sampler = _FixedLoad(1.0)  # another process took a core
        assert policy.step() == torch.get_num_threads() == 1
        policy.sampler = _FixedLoad(0.1)  # and left
        assert policy.step() == torch.get_num_threads() == 2
        fixed = ThreadPolicy(requested=2, interval=0.0)
        fixed.threads, fixed.sampler = 2, _FixedLoad(5.0)
        assert fixed.step() == 2  # threads= is never changed
    finally:
        torch.set_num_threads(threads)


_WORKERS_AFTER_OPENCV_RAN = """
import cv2, numpy as np, torch
from torch.utils.data import DataLoader, Dataset
from psapose.engine.faults import init_worker
from psapose.threads import ThreadPolicy

class Counts(Dataset):
    def __len__(self):
        return 2
    def __getitem__(self, i):
        cv2.warpAffine(np.zeros((512, 512, 3), np.uint8), np.eye(2, 3), (512, 512))
        return torch.get_num_threads(), cv2.getNumThreads()

# The parent's OpenCV pool has run (as the trainer's drawing and the demo's crops do):
cv2.warpAffine(np.zeros((2048, 2048, 3), np.uint8), np.eye(2, 3), (2048, 2048))
ThreadPolicy(requested=2).start("test")
loader = DataLoader(Counts(), batch_size=None, num_workers=2, worker_init_fn=init_worker)
print([tuple(map(int, item)) for item in loader], cv2.getNumThreads())
"""


def test_workers_forked_after_opencv_ran_run_single_threaded_and_do_not_hang():
    out = subprocess.run(
        [sys.executable, "-c", _WORKERS_AFTER_OPENCV_RAN], capture_output=True, text=True,
        timeout=120, check=True,
    )  # fmt: skip
    assert out.stdout.split("]")[0] + "]" == "[(1, 1), (1, 1)]"
    assert out.stdout.strip().endswith("1"), "the main process's OpenCV is single-threaded too"


def test_the_train_benchmark_runs_quiet_and_beside_a_busy_process(tmp_path):
    import json

    proc = subprocess.run(
        [sys.executable, "tools/benchmark.py", "train", "--busy", "0", "1", "--epochs", "2",
         "--modes", "psapose", "--json", "--overrides", f"data.root={tmp_path / 'data'}",
         "data.generate=true", "data.synthetic.images=8", "data.synthetic.val_images=2",
         "schedule.batch_size=4", "input_size=[64,64]"],
        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    rows = {r["busy"]: r for r in result["rows"]}
    assert sorted(rows) == [0, 1] and all(r["images_per_s"] > 0 for r in rows.values())
    assert len(rows[1]["epoch_rates"]) == 2
    assert round(rows[1]["images_per_s"], 2) == rows[1]["epoch_rates"][1]  # the first not counted
    assert rows[1]["ratio_to_quiet"] == round(rows[1]["images_per_s"] / rows[0]["images_per_s"], 3)
    assert rows[0]["ratio_to_quiet"] == 1.0
