"""tools/ablate.py: sweep parsing, training every variant, the report's numbers, resume, failures."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from psapose.ablation import (
    DEFAULT_SCHEDULE,
    DONE_FILE,
    LOG_FILE,
    AblationError,
    AblationInterrupted,
    Plan,
    RunOutcome,
    RunSpec,
    Variant,
    build_report,
    check_run_folders,
    default_out_dir,
    format_markdown,
    plan_ablation,
    plot_ablation,
    run_ablation,
    run_specs,
)
from psapose.config import build_model
from psapose.data.synthetic import generate_synthetic_coco
from psapose.models.complexity import paper_convention_macs

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- planning


def test_sweeps_give_the_cross_product_in_the_order_written():
    plan = plan_ablation(["model=hrnet_w32,resnet50", "schedule.epochs=3", "attention=none,se"])
    assert [v.label for v in plan.variants] == [
        "hrnet_w32 / none", "hrnet_w32 / se", "resnet50 / none", "resnet50 / se",
    ]  # fmt: skip
    assert plan.swept_keys == ["model", "attention"]
    assert plan.variants[2].overrides == (
        "experiment=quickstart", "model=resnet50", "schedule.epochs=3", "attention=none",
    )  # fmt: skip
    assert plan.variants[3].slug == "03-model-resnet50_attention-se"
    assert plan.seeds == [0]


def test_defaults_seeds_range_glob_and_quoting():
    plan = plan_ablation([])
    assert [v.overrides for v in plan.variants] == [
        ("experiment=quickstart", *DEFAULT_SCHEDULE, f"attention={a}")
        for a in ("none", "psa_parallel", "psa_sequential")
    ]
    # A schedule key of the user's keeps the preset's schedule, plus theirs.
    plan = plan_ablation(["schedule.epochs=30", "attention=none,se"])
    assert plan.variants[0].overrides == (
        "experiment=quickstart",
        "schedule.epochs=30",
        "attention=none",
    )
    plan = plan_ablation(["experiment=hrnet_w32_psa_p_256x192", "seed=4", "schedule.lr=range(1,3)"],
                         seeds=3)  # fmt: skip
    assert plan.seeds == [4, 5, 6]
    assert [v.sweep for v in plan.variants] == [{"schedule.lr": "1"}, {"schedule.lr": "2"}]
    assert plan.variants[0].overrides == ("experiment=hrnet_w32_psa_p_256x192", "schedule.lr=1")
    plan = plan_ablation(["attention=glob(psa_*)", "input_size=[128,96],[256,192]"])
    assert [v.label for v in plan.variants] == [
        "psa_parallel / [128,96]", "psa_parallel / [256,192]",
        "psa_sequential / [128,96]", "psa_sequential / [256,192]",
    ]  # fmt: skip
    # Seed-major order: the runs compared with each other are trained close in time.
    specs = run_specs(plan_ablation(["attention=none,se"], seeds=2), Path("/tmp/x"))
    assert [(s.variant.label, s.seed) for s in specs] == [
        ("none", 0),
        ("se", 0),
        ("none", 1),
        ("se", 1),
    ]
    assert specs[3].run_dir == Path("/tmp/x/01-attention-se/seed1")
    argv = RunSpec(specs[0].variant, 0, Path("/tmp/a b")).argv()
    assert argv[-3:] == ["output_dir='/tmp/a b'", "resume=auto", "hydra.run.dir='/tmp/a b/hydra'"]
    # The same overrides find the same folder whatever the seed count; others do not.
    a, b = plan_ablation(["attention=none,se"]), plan_ablation(["attention=none,se"], seeds=3)
    assert default_out_dir(a) == default_out_dir(b) != default_out_dir(plan_ablation([]))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["seed=0,1"], "repeat seeds with --seeds N"),
        (["output_dir=x"], "set by the ablation"),
        (["hydra.run.dir=x"], "set by the ablation"),
        (["attention=none", "attention=se"], "attention is given twice"),
        (["schedule.lr=interval(0,1)"], "only lists, range() and choice()"),
        (["attention=glob(nothing*)"], "matches no config"),
        (["attention=none,,"], "cannot parse 'attention=none,,'"),
    ],
)
def test_bad_overrides_are_named(overrides, message):
    with pytest.raises(AblationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan_ablation(overrides)


def _tool():
    return importlib.import_module("psapose.commands.ablate")


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    tool = _tool()
    for argv, message in [
        (["seed=1,2"], "--seeds"),
        (["--seeds", "0"], "at least 1"),
        (["--processes", "0"], "at least 1"),
        (["attention=none,nonexistent", "--out", str(tmp_path)], "variant nonexistent: "),
    ]:
        assert tool.main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())  # nothing trained


def test_a_folder_made_by_other_overrides_is_not_reused(tmp_path):
    spec = run_specs(plan_ablation(["attention=none,se"]), tmp_path)[0]
    spec.run_dir.mkdir(parents=True)
    (spec.run_dir / "ablation_run.json").write_text(json.dumps({"overrides": ["other=1"]}))
    with pytest.raises(AblationError, match="trained with other overrides"):
        check_run_folders([spec])


# ----------------------------------------------------------------------------- report arithmetic


def _outcome(variant: Variant, seed: int, ap: float | None, ips: float) -> RunOutcome:
    spec = RunSpec(variant, seed, Path(f"/runs/{variant.slug}/seed{seed}"))
    if ap is None:
        return RunOutcome(spec, "failed", 3, 1.0, error="exit code 3: guard")
    result = {
        "epochs": 2, "evaluated_epoch": 2,
        "stats": {"AP": ap, "AP50": ap + 0.1, "EPE": 10 * ap, "PCK@0.1": ap / 2, "PCK@5px": ap},
        "loss": 0.01 + seed, "train_images_per_s": ips, "train_images_per_s_epochs": [ips],
    }  # fmt: skip
    return RunOutcome(spec, "done", 0, 10.0, result)


def test_report_means_spreads_and_deltas_from_per_seed_figures():
    a = Variant(0, {"attention": "none"}, ("attention=none",))
    b = Variant(1, {"attention": "psa_parallel"}, ("attention=psa_parallel",))
    c = Variant(2, {"attention": "psa_sequential"}, ("attention=psa_sequential",))
    plan = Plan([a, b, c], [0, 1, 2], ["attention"], ["attention=none,psa_parallel,psa_sequential"])
    aps = {0: [0.50, 0.52, 0.47], 1: [0.55, 0.58, 0.54], 2: [0.51, None, 0.49]}
    outcomes = [_outcome(v, s, aps[v.index][s], 100.0 - 10 * v.index + s) for s in range(3) for v in plan.variants]  # fmt: skip
    complexity = {
        o.spec.run_dir: {
            "params": 1000 + 100 * o.spec.variant.index,
            "gflops": 2.0 + 0.5 * o.spec.variant.index,
            "true_gmacs": 1.0,
        }
        for o in outcomes  # fmt: skip
    }
    inference = {o.spec.run_dir: {"best": 50.0 + o.spec.seed, "median": 49.0, "rounds": [49.0]}
                 for o in outcomes if o.status == "done"}  # fmt: skip
    settings = {
        "command": "ablate", "created_local": "today", "processes": 1,
        "machine": {"processor": "cpu", "cpu_count": 2, "torch": "2", "load_average": None},
        "inference": {"batch_size": 4, "threads": 1, "device": "cpu", "rounds": 2},
    }  # fmt: skip
    report = build_report(plan, outcomes, complexity, inference, settings)
    none, par, seq = report["variants"]
    assert report["metrics"] == ["AP", "EPE", "PCK@0.1"]  # pixel metrics beside AP
    assert none["mean"]["AP"] == pytest.approx(statistics.fmean(aps[0]))
    assert none["mean"]["EPE"] == pytest.approx(10 * statistics.fmean(aps[0]))
    assert none["std"]["AP"] == pytest.approx(statistics.stdev(aps[0]))
    assert [r["AP"] for r in par["runs"]] == aps[1]
    assert par["delta"]["AP"] == pytest.approx(statistics.fmean(aps[1]) - statistics.fmean(aps[0]))
    se = (statistics.variance(aps[1]) / 3 + statistics.variance(aps[0]) / 3) ** 0.5
    assert par["delta"]["AP_se"] == pytest.approx(se)
    assert par["delta"]["params"] == 100 and par["delta"]["gflops_ratio"] == pytest.approx(1.25)
    assert par["mean"]["train_images_per_s"] == pytest.approx(91.0)
    assert par["delta"]["train_speed_ratio"] == pytest.approx(91.0 / 101.0)
    assert none["mean"]["infer_images_per_s"] == pytest.approx(51.0)
    # A failed seed: the variant is partial, its figures are those of the seeds that finished.
    assert seq["status"] == "partial" and seq["n"] == 2
    assert seq["mean"]["AP"] == pytest.approx(0.50) and seq["runs"][1]["status"] == "failed"
    assert seq["runs"][1]["exit_code"] == 3 and seq["runs"][1]["log"].endswith(LOG_FILE)
    md = format_markdown(report)
    assert f"{statistics.fmean(aps[1]):.4f} ± {statistics.stdev(aps[1]):.4f}" in md
    assert f"+{par['delta']['AP']:.4f} ± {se:.4f}" in md
    assert "psa_sequential (2 of 3 seeds)" in md and "exit code 3: guard" in md
    image = plot_ablation(report)
    assert image.shape == (440, 2 * 560 + 8, 3)
    for color in ((31, 119, 180), (214, 39, 40), (44, 160, 44)):  # one point per variant
        assert (image == color).all(axis=2).sum() > 20


# ----------------------------------------------------------------------------- signals


FAKE_TRAIN = """
import json, pathlib, signal, sys, time
out = pathlib.Path(next(a for a in sys.argv if a.startswith("output_dir=")).split("=", 1)[1])
def stop(signum, frame):
    (out / "signal.txt").write_text(str(signum))
    sys.exit(128 + signum)
signal.signal(signal.SIGINT, stop)
(out / "argv.json").write_text(json.dumps(sys.argv[1:]))
time.sleep(60)
"""


def test_sigint_is_passed_on_to_the_training_and_stops_the_ablation(tmp_path):
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    specs = run_specs(plan_ablation(["attention=none,se"]), tmp_path / "out")
    argv_file = specs[0].run_dir / "argv.json"

    def interrupt() -> None:
        deadline = time.monotonic() + 30
        while not argv_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    lines: list[str] = []
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(AblationInterrupted) as stopped:
        run_ablation(specs, processes=1, echo=lines.append, script=script)
    assert stopped.value.exit_code == 130
    assert (specs[0].run_dir / "signal.txt").read_text() == str(int(signal.SIGINT))
    argv = json.loads(argv_file.read_text())
    assert argv[:5] == ["experiment=quickstart", *DEFAULT_SCHEDULE, "attention=none", "seed=0"]
    assert f"output_dir={specs[0].run_dir}" in argv and "resume=auto" in argv
    assert not (specs[0].run_dir / DONE_FILE).exists() and not specs[1].run_dir.exists()
    assert "the next run of this command resumes it" in lines[-1]
    assert signal.getsignal(signal.SIGINT) is before  # put back


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic_coco(root, images=12, val_images=3, seed=1, difficulty="easy")
    return root


def _ablate(out: Path, root: Path) -> subprocess.CompletedProcess:
    # All three at once (start-up dominates): two train; the third cannot build: the official sequential
    # PSA needs 8 channels and model.width=4 gives its first branch 4.
    args = [
        "attention=none,psa_parallel,psa_sequential", "model.width=4", f"data.root={root}",
        "input_size=[64,64]", "schedule.batch_size=8", "schedule.epochs=2",
        "schedule.warmup_iters=2", "schedule.milestones=[1]", "eval.batch_size=16",
        "eval.images=0", "workers=0", "log_interval=1",
        "--out", str(out), "--processes", "3", "--infer-batch", "4", "--infer-rounds", "2",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "tools/ablate.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def _tb_rates(run_dir: Path) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rates: dict[int, float] = {}
    for path in sorted((run_dir / "tb").iterdir()):
        events = EventAccumulator(str(path))
        events.Reload()
        if "train/images_per_s" in events.Tags()["scalars"]:
            rates.update({e.step: e.value for e in events.Scalars("train/images_per_s")})
    return [rates[k] for k in sorted(rates)]


def test_ablation_end_to_end_report_resume_and_a_failing_variant(tmp_path, synthetic_root):
    out = tmp_path / "ablation"
    proc = _ablate(out, synthetic_root)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]  # one variant failed
    report = json.loads((out / "report.json").read_text())
    none, par, seq = report["variants"]
    assert [v["label"] for v in report["variants"]] == ["none", "psa_parallel", "psa_sequential"]
    assert [v["status"] for v in report["variants"]] == ["done", "done", "failed"]

    # The failure: exit code, log and reason recorded; no done marker, so a rerun retries it.
    failed = seq["runs"][0]
    assert failed["exit_code"] == 2 and "at least 8 channels" in failed["error"]
    assert "at least 8 channels" in Path(failed["log"]).read_text()
    assert not (Path(failed["run_dir"]) / DONE_FILE).exists()

    # Every figure equals what the run folder holds, read here independently.
    for variant in (none, par):
        row = variant["runs"][0]
        run_dir = Path(row["run_dir"])
        state = torch.load(run_dir / "checkpoints" / "latest.pth", weights_only=True)
        final = state["history"][-1]
        assert final["epoch"] == 2 and row["evaluated_epoch"] == 2
        assert row["AP"] == final["AP"] and row["loss"] == final["loss"]
        assert row["stats"] == {k: v for k, v in final.items()
                                if k not in ("epoch", "loss", "skipped_samples", "nonfinite_steps")}  # fmt: skip
        rates = _tb_rates(run_dir)
        assert len(rates) == 2 and row["train_images_per_s_epochs"] == pytest.approx(rates)
        assert row["train_images_per_s"] == pytest.approx(statistics.median(rates))
        cfg = OmegaConf.load(run_dir / "config.yaml")
        model = build_model(cfg)
        assert row["params"] == sum(p.numel() for p in model.parameters())
        assert row["gflops"] == pytest.approx(paper_convention_macs(model, (64, 64)) / 2**30)
        assert row["infer_images_per_s"] > 0 and len(row["infer_images_per_s_rounds"]) == 2
        assert row["infer_images_per_s"] == pytest.approx(max(row["infer_images_per_s_rounds"]))
        # One seed: the variant's figures are that seed's, without a spread.
        for key in ("AP", "params", "gflops", "train_images_per_s", "infer_images_per_s"):
            assert variant["mean"][key] == row[key] and variant["std"][key] is None
        done = json.loads((run_dir / DONE_FILE).read_text())
        assert done["result"]["stats"] == row["stats"] and done["exit_code"] == 0
    assert par["delta"]["AP"] == par["mean"]["AP"] - none["mean"]["AP"]
    assert par["delta"]["params"] == par["mean"]["params"] - none["mean"]["params"] > 0
    assert par["delta"]["gflops_ratio"] == pytest.approx(
        par["mean"]["gflops"] / none["mean"]["gflops"]
    )
    assert par["delta"]["infer_speed_ratio"] == pytest.approx(
        par["mean"]["infer_images_per_s"] / none["mean"]["infer_images_per_s"]
    )
    md = (out / "report.md").read_text()
    assert md == format_markdown(report)
    assert f"| psa_parallel | {par['mean']['AP']:.4f} | {par['delta']['AP']:+.4f} |" in md
    assert f"{par['mean']['params'] / 1e6:.3f}M" in md and failed["log"] in md
    png = cv2.imread(str(out / "ablation.png"))
    assert png.shape == (440, 2 * 560 + 8, 3)

    # Second invocation: the finished runs are not trained again; a run without its done
    # marker (as if stopped after training) resumes with resume=auto; the failure is retried.
    none_dir, par_dir = Path(none["runs"][0]["run_dir"]), Path(par["runs"][0]["run_dir"])
    (par_dir / DONE_FILE).unlink()
    none_log = (none_dir / LOG_FILE).read_text()
    none_ckpt = (none_dir / "checkpoints" / "latest.pth").stat().st_mtime_ns
    proc = _ablate(out, synthetic_root)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "none seed 0: done before" in proc.stdout
    assert (none_dir / LOG_FILE).read_text() == none_log
    assert (none_dir / "checkpoints" / "latest.pth").stat().st_mtime_ns == none_ckpt
    assert "resumed from" in (par_dir / LOG_FILE).read_text().split("\n=== ")[-1]
    assert (par_dir / DONE_FILE).exists()
    assert Path(failed["log"]).read_text().count("\n=== ") == 2
    again = json.loads((out / "report.json").read_text())
    for before, after in zip(report["variants"][:2], again["variants"][:2], strict=True):
        for key in ("AP", "loss", "params", "gflops", "train_images_per_s"):
            assert after["runs"][0][key] == before["runs"][0][key], key
    assert again["variants"][0]["runs"][0]["resumed_from_earlier_invocation"] is True
    assert again["variants"][1]["runs"][0]["resumed_from_earlier_invocation"] is False
    np.testing.assert_array_equal(
        torch.load(par_dir / "checkpoints" / "latest.pth", weights_only=True)["history"][-1]["AP"],
        par["runs"][0]["AP"],
    )
