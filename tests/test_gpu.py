"""The GPU path.

* ``gpu``-marked tests (``pytest -m gpu`` on a machine with a GPU; ``tools/gpu_check.sh``
  runs them): every attention kind on CUDA against the CPU, the fast PSA against the
  reference under bf16 and fp16 autocast, a training step with ``compile=true``, flip
  averaging and decoding on the device against the CPU for every codec, OKS-NMS and the
  val2017-sized evaluation on the device. ``PSAPOSE_GPU_TEST_DEVICE=cpu`` runs them against
  the CPU itself (a dry run: it proves they run, it compares nothing).
* CPU tests of what that path relies on: the torch OKS-NMS equals the NumPy one, and the
  driver of ``tools/gpu_check.sh`` runs in its CPU-small mode.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import build, deterministic_input, deterministic_weights
from test_evaluation import random_people

import psapose.evaluation.nms as nms_module
from psapose.codecs import (
    DarkHeatmap,
    MSRAHeatmap,
    UDPCombined,
    UDPHeatmap,
    average_flip,
    flip_keypoints,
)
from psapose.data import load_keypoint_spec
from psapose.evaluation import keypoint_results, nms_per_image, oks_matrix
from psapose.evaluation.device import keypoint_results_on_device
from psapose.models import PolarizedSelfAttention

ROOT = Path(__file__).resolve().parents[1]
DEVICE = os.environ.get("PSAPOSE_GPU_TEST_DEVICE", "cuda")
DRY_RUN = DEVICE == "cpu"
needs_device = pytest.mark.skipif(
    not DRY_RUN and not torch.cuda.is_available(), reason="needs a CUDA device"
)
cuda_only = pytest.mark.skipif(DRY_RUN, reason="dry run on the CPU: too heavy there")

# Every attention kind and PSA variant (name, variant).
ATTENTION_KINDS = [
    ("none", None),
    ("se", None),
    ("gc", None),
    ("psa_parallel", "official"),
    ("psa_parallel", "paper"),
    ("psa_sequential", "official"),
    ("psa_sequential", "paper"),
]


@pytest.fixture
def exact_float32() -> Iterator[None]:
    """No TF32 on the device: its 10-bit products would dominate every comparison."""
    matmul, cudnn = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.set_float32_matmul_precision(matmul)
    torch.backends.cudnn.allow_tf32 = cudnn


def _output_and_grads(
    model: torch.nn.Module, x: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = model(x)
    (out.float() * weights).sum().backward()
    return out.detach().float().cpu(), [p.grad.float().cpu() for p in model.parameters()]


# ----------------------------------------------------------------------------- on the device
@pytest.mark.gpu
@needs_device
@pytest.mark.parametrize(("attention", "variant"), ATTENTION_KINDS)
def test_attention_kinds_match_cpu(attention: str, variant: str | None, exact_float32) -> None:
    """Inference output, training output and every gradient: the device equals the CPU."""
    model = build("quickstart", attention, variant).to(memory_format=torch.channels_last)
    model.load_state_dict(deterministic_weights(model.state_dict()))
    x = deterministic_input((2, 3, 128, 96)).contiguous(memory_format=torch.channels_last)
    model.eval()
    with torch.no_grad():
        reference = model(x)
        out = model.to(DEVICE)(x.to(DEVICE)).cpu()
    assert (out - reference).abs().max() <= 1e-4 * reference.abs().max()
    # Training mode: batch statistics and the backward of every block, fast PSA included.
    weights = torch.linspace(-1, 1, reference.numel()).view_as(reference)
    model.train()
    cpu_out, cpu_grads = _output_and_grads(model.cpu(), x, weights)
    dev_out, dev_grads = _output_and_grads(model.to(DEVICE), x.to(DEVICE), weights.to(DEVICE))
    # Batch statistics and gradients are sums over every pixel, which cuDNN orders otherwise
    # than the CPU: float32 rounding of such sums, amplified by the BatchNorm divisions, stays
    # far below these bounds; a wrong kernel or layout is off by the values' own size.
    assert (dev_out - cpu_out).abs().max() <= 1e-3 * cpu_out.abs().max()
    scale = max(g.abs().max() for g in cpu_grads)
    for dev_grad, cpu_grad in zip(dev_grads, cpu_grads, strict=True):
        assert (dev_grad - cpu_grad).abs().max() <= 1e-3 * scale
    flat_dev = torch.cat([g.flatten() for g in dev_grads])
    flat_cpu = torch.cat([g.flatten() for g in cpu_grads])
    assert (flat_dev - flat_cpu).norm() <= 1e-4 * flat_cpu.norm()


def _randomised_psa(layout: str, variant: str, channels: int = 32) -> PolarizedSelfAttention:
    """A PSA block whose attention maps vary strongly (weights ``2 / sqrt(fan_in)``)."""
    block = PolarizedSelfAttention(channels, layout, variant)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in block.parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 1
            p.copy_(torch.randn(p.shape, generator=g) * 2.0 / fan_in**0.5)
    return block


@pytest.mark.gpu
@needs_device
@pytest.mark.parametrize(
    ("dtype", "out_tol", "grad_tol"), [(torch.bfloat16, 0.03, 0.1), (torch.float16, 0.01, 0.05)]
)
@pytest.mark.parametrize("variant", ["official", "paper"])
@pytest.mark.parametrize("layout", ["parallel", "sequential"])
def test_fast_psa_matches_reference_under_autocast(
    layout: str, variant: str, dtype: torch.dtype, out_tol: float, grad_tol: float, exact_float32
) -> None:
    """Both PSA paths under autocast stay within the dtype's rounding of the float32 truth,
    keep the autocast dtype and channels-last, and agree with each other as closely."""
    block = _randomised_psa(layout, variant).to(DEVICE)
    x = torch.randn(4, 32, 24, 18, generator=torch.Generator().manual_seed(1))
    x = x.contiguous(memory_format=torch.channels_last).to(DEVICE)
    weights = torch.linspace(-1, 1, x.numel(), device=DEVICE).view_as(x)
    block.fast = False
    truth, truth_grads = _output_and_grads(block, x, weights)
    results = {}
    for fast in (False, True):
        block.fast = fast
        block.zero_grad(set_to_none=True)
        x_low = x.to(dtype).requires_grad_(True)  # as a low-precision conv output would be
        with torch.autocast(torch.device(DEVICE).type, dtype=dtype):
            out = block(x_low)
        (out.float() * weights).sum().backward()
        assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
        grads = [x_low.grad.float().cpu()] + [p.grad.float().cpu() for p in block.parameters()]
        out = out.detach().float().cpu()
        assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)
        assert (out - truth).abs().max() < out_tol * truth.abs().max()
        for grad, exact in zip(grads[1:], truth_grads, strict=True):
            assert (grad - exact).abs().max() < grad_tol * exact.abs().max()
        results[fast] = out
    assert (results[True] - results[False]).abs().max() < out_tol * truth.abs().max()


@pytest.mark.gpu
@needs_device
@pytest.mark.parametrize(
    "model_name", ["quickstart", pytest.param("hrnet_w32", marks=cuda_only),
                   pytest.param("resnet50", marks=cuda_only)]
)  # fmt: skip
@pytest.mark.parametrize("attention", ["psa_parallel", "psa_sequential"])
def test_bf16_autocast_channels_last_training_step_is_finite(
    model_name: str, attention: str
) -> None:
    torch.manual_seed(0)
    model = build(model_name, attention).to(DEVICE).to(memory_format=torch.channels_last).train()
    x = torch.randn(4, 3, 256, 192, device=DEVICE).contiguous(memory_format=torch.channels_last)
    with torch.autocast(torch.device(DEVICE).type, dtype=torch.bfloat16):
        out = model(x)
    assert out.shape == (4, 17, 64, 48)
    out.float().square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.gpu
@needs_device
@cuda_only
def test_training_step_with_compile(tmp_path: Path) -> None:
    """``compile=true``: the trainer's compiled model trains (finite losses, weights move)
    and computes the eager model's function (same weights, same batch, bf16 autocast)."""
    from psapose.config import compose_config
    from psapose.data.normalize import normalize_images
    from psapose.data.synthetic import generate_synthetic_coco
    from psapose.engine.inference import autocast
    from psapose.engine.trainer import Trainer

    generate_synthetic_coco(tmp_path / "data", images=8, val_images=2, difficulty="easy")
    cfg = compose_config(
        [
            "experiment=quickstart", f"device={DEVICE}", "compile=true", "precision=bf16",
            f"data.root={tmp_path / 'data'}", "schedule.batch_size=8", "workers=0",
        ]
    )  # fmt: skip
    trainer = Trainer(cfg, tmp_path / "run")
    batch = next(iter(trainer.loader))
    before = [p.detach().clone() for p in trainer.raw_model.parameters()]
    losses = [trainer.train_step(batch) for _ in range(2)]
    assert all(np.isfinite(losses)), losses
    moved = [not torch.equal(b, p) for b, p in zip(before, trainer.raw_model.parameters(), strict=True)]  # fmt: skip
    assert sum(moved) > 0.9 * len(moved)
    images = normalize_images(batch["image"], device=trainer.device, channels_last=True)
    with autocast(trainer.device, "bf16"):
        compiled = trainer.model(images).float()
        eager = trainer.raw_model(images).float()
    assert trainer.model is not trainer.raw_model
    assert (compiled - eager).abs().max() <= 0.05 * eager.abs().max()


def _heatmap_pair(
    codec, flip: list[int], n: int = 48, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A model-like pair (heatmaps, heatmaps of the mirrored image) of random keypoints, and
    the keypoints: each codec's own targets (discs and offsets for UDPCombined) of the
    keypoints moved by ~2 px, times a random amplitude, a weaker wrong peak and noise."""
    g = torch.Generator().manual_seed(seed)
    h, w = codec.input_size
    margin = torch.tensor([w - 17.0, h - 17.0])
    keypoints = 8 + torch.rand(n, 17, 2, generator=g) * margin
    visible = torch.ones(n, 17)
    maps = []
    for mirrored in (False, True):
        moved = keypoints + torch.randn(n, 17, 2, generator=g) * 2.0
        if mirrored:
            moved, _ = flip_keypoints(moved, visible, flip, w)
        target, _ = codec.encode(moved, visible)
        distractor, _ = codec.encode(moved[:, torch.randperm(17, generator=g)], visible)
        # Amplitude and wrong peak on the class maps only (UDPCombined's offsets stay metric).
        peaks = torch.zeros(target.shape[1], dtype=torch.bool)
        peaks[:: codec.channels_per_keypoint] = True
        amplitude = 0.6 + 0.4 * torch.rand(n, target.shape[1], 1, 1, generator=g)
        amplitude = torch.where(peaks[:, None, None], amplitude, 1.0)
        wrong = torch.where(peaks[:, None, None], 0.3 * distractor, 0.0)
        noise = torch.randn(target.shape, generator=g) * 0.02
        maps.append(target * amplitude + wrong + noise)
    return maps[0], maps[1], keypoints


CODECS = {
    "msra": lambda: MSRAHeatmap(input_size=(256, 192)),
    "dark": lambda: DarkHeatmap(input_size=(256, 192)),
    "udp": lambda: UDPHeatmap(input_size=(256, 192)),
    "udp_combined": lambda: UDPCombined(input_size=(256, 192)),
}


@pytest.mark.gpu
@needs_device
@pytest.mark.parametrize("name", sorted(CODECS))
def test_flip_and_decode_on_device_match_cpu(name: str, exact_float32) -> None:
    """The evaluation path on the device (``average_flip`` then ``codec.decode``, as
    ``predict`` runs them after the model) gives the CPU's keypoints and scores."""
    codec = CODECS[name]()
    flip = load_keypoint_spec("coco").flip_indices
    heatmaps, flipped, truth = _heatmap_pair(codec, flip)
    averaged = average_flip(heatmaps, flipped, flip, codec)
    on_device = average_flip(heatmaps.to(DEVICE), flipped.to(DEVICE), flip, codec)
    assert on_device.device.type == torch.device(DEVICE).type
    assert torch.equal(on_device.cpu(), averaged)  # one add and one halving: exact in IEEE
    keypoints, scores = codec.decode(averaged)
    dev_keypoints, dev_scores = codec.decode(on_device)
    assert dev_keypoints.device.type == torch.device(DEVICE).type  # decoded where it ran
    # Real peaks, not noise: the decoded keypoints sit within a few pixels of the truth.
    assert (keypoints - truth).norm(dim=-1).median() < 4.0
    # Argmax and values read at it are exact; the DARK steps and UDPCombined's blurred maxima
    # go through float32 blurs whose sums the device orders differently (~1e-7 relative).
    assert (dev_keypoints.cpu() - keypoints).abs().max() < 1e-3
    assert (dev_scores.cpu() - scores).abs().max() <= 1e-5 * scores.abs().max()


@pytest.mark.gpu
@needs_device
def test_oks_nms_on_device_matches_numpy() -> None:
    rng = np.random.default_rng(21)
    for dtype in (np.float64, np.float32):
        kps, scores, areas = random_people(rng, 3000, size=150.0, dtype=dtype)
        image_ids = rng.integers(0, 150, len(kps))
        expected = nms_per_image(image_ids, kps, scores, areas, None, 0.9)
        kept = nms_per_image(image_ids, kps, scores, areas, None, 0.9, device=DEVICE)
        assert kept.tolist() == expected.tolist()
        assert 0 < len(kept) < len(kps)


@pytest.mark.gpu
@needs_device
def test_evaluation_on_device_matches_the_per_instance_reference() -> None:
    """``tools/benchmark.py eval --device``: heatmaps, flip, decode and OKS-NMS on the device
    give HRNet's per-instance loop's people, order and AP table."""
    import psapose.benchmarks.eval as bench_eval

    parser = argparse.ArgumentParser()
    bench_eval.register(parser.add_subparsers(dest="part"))
    args = parser.parse_args(["eval", "--images", "40", "--chunk", "256", "--device", DEVICE])
    result = bench_eval.run_eval(args)
    assert result["device"].startswith(torch.device(DEVICE).type)
    assert result["nms_device"] == ("numpy" if DRY_RUN else str(torch.device(DEVICE)))
    assert result["reference_boxes"] == result["boxes"] > 500
    assert result["same_results"]["same_people_and_order"]
    assert result["max_keypoint_diff_px"] < 1e-3
    assert result["same_ap"] and 0.3 < result["stats"]["AP"] < 1


# ----------------------------------------------------------------------------- on the CPU
@pytest.mark.parametrize("threshold", [0.9, 0.5])
@pytest.mark.parametrize("vis", [None, 0.3])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_torch_oks_nms_equals_numpy(dtype, vis, threshold) -> None:
    """The batched torch path keeps the NumPy path's people in its order, ties included
    (``random_people`` draws scores from six values)."""
    rng = np.random.default_rng(5)
    kps, scores, areas = random_people(rng, 900, size=150.0, dtype=dtype)
    image_ids = rng.choice([7, 3, 1000, 42, 5, 99, 8, 13, 77, 64], len(kps))
    expected = nms_per_image(image_ids, kps, scores, areas, None, threshold, visibility_threshold=vis)  # fmt: skip
    kept = nms_per_image(
        image_ids, kps, scores, areas, None, threshold, visibility_threshold=vis, device="cpu"
    )
    assert kept.dtype == expected.dtype and kept.tolist() == expected.tolist()
    assert 0 < len(kept) < len(kps)


def test_torch_oks_nms_decides_near_threshold_pairs_as_numpy() -> None:
    """An OKS exactly at the threshold is kept (``<=``) and one ulp above it suppressed: the
    torch path recomputes such pairs with NumPy's arithmetic instead of trusting its own."""
    rng = np.random.default_rng(3)
    kps, _, areas = random_people(rng, 2, dup_frac=0.0)
    kps[1, :, :2] = kps[0, :, :2] + rng.normal(0, 3.0, (17, 2))
    scores = np.array([0.9, 0.8])
    oks = oks_matrix(kps[:1], areas[:1], kps[1:], areas[1:])[0, 0]
    assert 0.3 < oks < 0.99
    for threshold, kept in ((oks, [0, 1]), (np.nextafter(oks, 0.0), [0])):
        ids = np.zeros(2, dtype=int)
        assert nms_per_image(ids, kps, scores, areas, None, threshold).tolist() == kept
        assert nms_per_image(ids, kps, scores, areas, None, threshold, device="cpu").tolist() == kept  # fmt: skip


def test_torch_oks_nms_edge_cases(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(9)
    kps, scores, areas = random_people(rng, 300, size=150.0)
    ids = rng.integers(0, 4, 300)
    expected = nms_per_image(ids, kps, scores, areas).tolist()
    # One image per batch and one row per block: every split of the work gives the same.
    monkeypatch.setattr(nms_module, "_DEVICE_BLOCK_ELEMENTS", 17)
    assert nms_per_image(ids, kps, scores, areas, device="cpu").tolist() == expected
    monkeypatch.undo()
    empty = nms_per_image(np.zeros(0), np.zeros((0, 17, 3)), np.zeros(0), np.zeros(0), device="cpu")
    assert empty.tolist() == []
    singles = nms_per_image(np.arange(5), kps[:5], scores[:5], areas[:5], device="cpu")
    assert singles.tolist() == [0, 1, 2, 3, 4]
    # All identical and tied: NumPy's argsort order decides (the reference keeps the last).
    same = np.repeat(kps[:1], 5, axis=0)
    two_images = np.array([1, 1, 1, 2, 2])
    assert nms_per_image(two_images, same, np.ones(5), np.ones(5), device="cpu").tolist() == [2, 4]
    # NaN keypoints suppress (``not <=``) and NaN scores sort first, as in NumPy.
    odd = kps[:40].copy()
    odd[3, 0, 0] = np.nan
    odd_scores = scores[:40].copy()
    odd_scores[[5, 9]] = np.nan
    odd_ids = np.repeat([4, 2], 20)
    assert (
        nms_per_image(odd_ids, odd, odd_scores, areas[:40], device="cpu").tolist()
        == nms_per_image(odd_ids, odd, odd_scores, areas[:40]).tolist()
    )
    # Soft NMS stays in NumPy whatever the device.
    soft = nms_per_image(ids, kps, scores, areas, soft=True)
    assert nms_per_image(ids, kps, scores, areas, soft=True, device="cpu").tolist() == soft.tolist()


@pytest.mark.parametrize("nms", ["oks", "soft", "none"])
def test_keypoint_results_on_device_equal_keypoint_results(nms: str) -> None:
    rng = np.random.default_rng(17)
    kps, _, areas = random_people(rng, 500, size=150.0, dtype=np.float32)
    keypoint_scores = rng.uniform(0, 1, (500, 17)).astype(np.float32)
    box_scores = rng.uniform(0.1, 1, 500)
    ids = rng.choice([11, 3, 500, 42], 500)
    args = (ids, kps[..., :2], keypoint_scores, box_scores, areas)
    expected = keypoint_results(*args, nms=nms)
    assert keypoint_results_on_device(*args, nms=nms, device="cpu") == expected
    if nms == "oks":
        assert len(expected) < 500


def test_gpu_check_runs_in_cpu_small_mode(tmp_path: Path) -> None:
    """The driver of ``tools/gpu_check.sh`` at tiny sizes on the CPU: every part finishes
    ``ok`` and leaves real figures in the JSON (the GPU run fills the same fields). Kept
    short: one gpu test in the pytest part, no compiled rows (``--cpu-small`` has both)."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "tools/gpu_check.py", "--device", "cpu", "--small", "--out", str(out),
         "--skip-compile", "--pytest-k", "oks_nms_on_device", "--budget", "400"],
        cwd=ROOT, capture_output=True, text=True, timeout=500, check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    report = json.loads((out / "gpu_check.json").read_text())
    parts = ["env", "pytest", "step", "loop", "e2e", "eval"]
    assert list(report["parts"]) == parts, proc.stdout[-3000:]
    for name, part in report["parts"].items():
        assert part["status"] == "ok", (name, part["error"], proc.stdout[-3000:])
        assert 0 < part["seconds"] <= part["limit_s"] + 1  # the limit is rounded
    assert proc.returncode == 0
    assert (out / "gpu_check.log").read_text().count("\n===== ") == len(parts)
    assert report["precision"] == "fp32"  # bf16 is emulated on the CPU
    env = report["parts"]["env"]["result"]
    assert env["torch"] == torch.__version__ and env["cores"] >= 1
    tests = report["parts"]["pytest"]["result"]
    assert tests["dry_run_on_cpu"] and tests["passed"] == tests["tests"] == 1
    step = report["parts"]["step"]["result"]
    rows = {(r["attention"], r["batch"]): r for r in step["rows"]}
    assert len(rows) == len(step["rows"]) == 6 and not step["skipped"]
    for (_, batch), row in rows.items():
        assert row["images_per_s"] > 0 and row["steps"] >= 3 and row["peak_rss_mib"] > 0
        assert row["images_per_s"] == pytest.approx(batch / row["step_ms_median"] * 1e3, rel=1e-2)
        assert row["ratio_to_none"] == pytest.approx(
            row["step_ms_median"] / rows[("none", batch)]["step_ms_median"], rel=1e-2
        )
    loop = report["parts"]["loop"]["result"]
    for key in ("loop_images_per_s", "step_alone_images_per_s", "loader_alone_images_per_s",
                "per_worker_samples_per_s", "workers_needed_for_step"):  # fmt: skip
        assert loop[key] > 0, key
    assert loop["loop_to_step_ratio"] == pytest.approx(
        loop["loop_images_per_s"] / loop["step_alone_images_per_s"], rel=2e-2
    )
    assert loop["trainer_loader"]["num_workers"] == loop["workers"] == 1
    assert loop["batch"] == step["best_eager_batch"]
    e2e = report["parts"]["e2e"]["result"]
    assert e2e["epochs"] == 1 and set(e2e["stats"]) >= {"AP", "AP50", "AR"}
    assert all(0 <= v <= 1 for v in e2e["stats"].values())
    ev = report["parts"]["eval"]["result"]
    assert ev["device"] == "cpu" and ev["same_ap"] and ev["fast_total_s"] > 0
    goals = report["goals"]
    best = max(r["images_per_s"] for r in step["rows"] if r["attention"] == "psa_parallel")
    assert goals["psa_parallel_step_images_per_s"]["value"] == best
    assert goals["psa_parallel_step_images_per_s"]["met"] is False  # a CPU is no H100
    assert goals["loop_to_step_ratio"]["value"] == loop["loop_to_step_ratio"]
