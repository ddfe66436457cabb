"""Training engine: loss, sampler, schedule, a real short run, exact resume, DDP vs one process."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from omegaconf import OmegaConf

from psapose.config import ConfigError, compose_config
from psapose.engine.components import lr_factor as _lr_factor
from psapose.engine.loss import CombinedTargetMSELoss, KeypointMSELoss
from psapose.engine.sampler import EpochSampler
from psapose.engine.trainer import Trainer
from tests.helpers import SHARED_DATA

COCO_MINI = SHARED_DATA / "coco_mini"
needs_coco_mini = pytest.mark.skipif(
    not COCO_MINI.is_dir(), reason=f"shared COCO subset not found at {COCO_MINI}"
)


def test_keypoint_mse_loss_is_hrnet_joints_mse_loss():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.rand(3, 5, 8, 6, generator=g), torch.rand(3, 5, 8, 6, generator=g)
    weight = (torch.rand(3, 5, generator=g) > 0.3).float()
    # HRNet JointsMSELoss: per joint 0.5 * MSE(pred * w, target * w), averaged over joints.
    ref = (
        sum(
            0.5
            * torch.nn.functional.mse_loss(
                pred[:, j].reshape(3, -1) * weight[:, j : j + 1],
                target[:, j].reshape(3, -1) * weight[:, j : j + 1],
            )
            for j in range(5)
        )
        / 5
    )
    torch.testing.assert_close(KeypointMSELoss()(pred, target, weight), ref)
    joint = torch.tensor([1.0, 1.0, 1.5, 1.2, 1.0])
    ref_weighted = KeypointMSELoss()(pred, target, weight * joint)
    torch.testing.assert_close(KeypointMSELoss(joint)(pred, target, weight), ref_weighted)


def test_combined_target_loss_is_mmpose_combined_target_mse_loss():
    g = torch.Generator().manual_seed(1)
    n, k, h, w = 2, 4, 8, 6
    pred, target = (
        torch.randn(n, 3 * k, h, w, generator=g),
        torch.randn(n, 3 * k, h, w, generator=g),
    )
    target[:, 0::3] = (target[:, 0::3] > 0).float()
    weight = (torch.rand(n, k, generator=g) > 0.3).float()
    # mmpose CombinedTargetMSELoss with use_target_weight and loss_weight 1.
    ref = 0.0
    p, t = pred.reshape(n, 3 * k, -1), target.reshape(n, 3 * k, -1)
    for j in range(k):
        wj = weight[:, j : j + 1]
        hp, hg = p[:, 3 * j], t[:, 3 * j]
        ref += 0.5 * torch.nn.functional.mse_loss(hp * wj, hg * wj)
        for a in (1, 2):
            ref += 0.5 * torch.nn.functional.mse_loss(
                hg * p[:, 3 * j + a] * wj, hg * t[:, 3 * j + a] * wj
            )
    torch.testing.assert_close(CombinedTargetMSELoss()(pred, target, weight), ref / k)


def test_sampler_shards_global_batches_and_repeats_per_epoch():
    one = EpochSampler(50, batch_size=8, shuffle=True, seed=3)
    ranks = [EpochSampler(50, 4, True, seed=3, rank=r, world_size=2) for r in range(2)]
    for s in [one, *ranks]:
        s.set_epoch(2)
    keys = list(one)
    assert len(keys) == len(one) == 48 and all(e == 2 for _, e in keys)
    shards = [list(s) for s in ranks]
    for b in range(6):  # global batch b = rank 0's chunk then rank 1's chunk
        assert (
            keys[8 * b : 8 * b + 8] == shards[0][4 * b : 4 * b + 4] + shards[1][4 * b : 4 * b + 4]
        )
    assert list(one) == keys
    one.set_epoch(3)
    assert [i for i, _ in one] != [i for i, _ in keys]
    evaluation = [
        EpochSampler(7, 2, False, rank=r, world_size=2, drop_last=False) for r in range(2)
    ]
    covered = [i for s in evaluation for i, _ in s]
    assert sorted(set(covered)) == list(range(7)) and len(covered) == 8


def test_learning_rate_warms_up_then_steps_down():
    sched = OmegaConf.create(
        {"gamma": 0.1, "milestones": [2, 4], "warmup_iters": 10, "warmup_ratio": 0.001}
    )
    assert _lr_factor(0, 0, sched) == pytest.approx(0.001)
    assert _lr_factor(5, 0, sched) == pytest.approx(0.001 * 0.5 + 0.5)
    assert _lr_factor(10, 1, sched) == 1.0
    assert _lr_factor(50, 2, sched) == pytest.approx(0.1)
    assert _lr_factor(90, 5, sched) == pytest.approx(0.01)


def _mini_overrides(tmp: Path, **extra: str) -> list[str]:
    base = {
        "experiment": "quickstart",
        "data": "coco",
        "data.root": str(COCO_MINI),
        "data.val.use_gt_boxes": "true",
        "schedule.batch_size": "16",
        "schedule.epochs": "2",
        "schedule.warmup_iters": "3",
        "schedule.milestones": "[1]",
        "eval.batch_size": "32",
        "eval.images": "2",
        "workers": "0",
        "threads": "1",  # a fixed count: bit-identical comparisons need the same reductions
        "log_interval": "2",
        "device": "cpu",
        "output_dir": str(tmp),
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def _params(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state["model"]


@needs_coco_mini
def test_short_real_run_checkpoints_and_evaluates(tmp_path):
    trainer = Trainer(
        compose_config(_mini_overrides(tmp_path, **{"schedule.epochs": "1"})), tmp_path
    )
    result = trainer.fit()
    assert len(result["history"]) == 1 and np.isfinite(result["history"][0]["loss"])
    stats = result["stats"]
    assert set(stats) >= {"AP", "AP50", "AP75", "APM", "APL", "AR"} and 0.0 <= stats["AP"] <= 1.0
    for name in ("latest.pth", "best.pth"):
        state = torch.load(tmp_path / "checkpoints" / name, map_location="cpu", weights_only=True)
        assert state["epoch"] == 1 and "optimizer" in state and "rng" in state
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "predictions.png").is_file()
    assert any((tmp_path / "tb").iterdir())
    assert not list((tmp_path / "checkpoints").glob(".*tmp*")), "no temporary files left behind"


@needs_coco_mini
def test_two_epochs_equal_one_epoch_resume_one_epoch(tmp_path):
    straight = tmp_path / "straight"
    Trainer(compose_config(_mini_overrides(straight)), straight).fit()
    split = tmp_path / "split"
    Trainer(compose_config(_mini_overrides(split, **{"schedule.epochs": "1"})), split).fit()
    resumed = Trainer(compose_config(_mini_overrides(split, resume="auto")), split)
    assert resumed.epoch == 1
    resumed.fit()
    a, b = _params(straight / "checkpoints/latest.pth"), _params(split / "checkpoints/latest.pth")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, overrides: list[str], out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )  # fmt: skip
    torch.set_num_threads(1)
    from psapose.engine.distributed import cleanup

    try:
        Trainer(compose_config(overrides), Path(out)).fit()
    finally:
        cleanup()


@needs_coco_mini
def test_ddp_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    """2 gloo processes x batch 8 == 1 process x batch 16 run as two chunks of 8.

    Without SyncBatchNorm (CUDA only) each rank normalises its own chunk; the one
    process does the same by running the two chunks separately and averaging
    their gradients, which is exactly what DDP computes.
    """
    common = {"schedule.epochs": "1", "eval.interval": "0", "data.val.ann_file": "missing.json"}
    ddp = tmp_path / "ddp"
    overrides = _mini_overrides(ddp, **common, **{"schedule.batch_size": "8"})
    mp.spawn(_ddp_worker, args=(2, _free_port(), overrides, str(ddp)), nprocs=2, join=True)
    single = tmp_path / "single"
    torch.set_num_threads(1)
    Trainer(compose_config(_mini_overrides(single, **common)), single, micro_batches=2).fit()
    a, b = _params(ddp / "checkpoints/latest.pth"), _params(single / "checkpoints/latest.pth")
    params = [
        k for k in a if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    ]
    worst = max((a[k] - b[k]).abs().max().item() for k in params)
    print(f"DDP vs one process: largest parameter difference {worst:.3e}")
    assert worst < 1e-5, worst


@needs_coco_mini
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_steps_train(tmp_path, precision, monkeypatch):
    cfg = compose_config(
        _mini_overrides(tmp_path, precision=precision, **{"schedule.grad_clip": "1.0"})
    )
    if precision == "fp16":
        # The tools refuse fp16 on the CPU (no fast kernels); the grad-scaler path itself
        # is device-independent and is exercised here, and on CUDA by tests/test_gpu.py.
        with pytest.raises(ConfigError, match="precision=fp16 on the CPU .* use precision=bf16"):
            Trainer(cfg, tmp_path)
        monkeypatch.setattr("psapose.engine.trainer.check_runtime", lambda cfg: "cpu")
    trainer = Trainer(cfg, tmp_path)
    assert trainer.scaler.is_enabled() == (precision == "fp16")
    before = {k: v.clone() for k, v in trainer.raw_model.state_dict().items()}
    batch = next(iter(trainer.loader))
    losses = [trainer.train_step(batch) for _ in range(2)]
    assert all(np.isfinite(losses))
    after = trainer.raw_model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if after[k].is_floating_point())
