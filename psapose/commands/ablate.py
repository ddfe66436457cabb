"""Train every variant of a sweep the same way, then compare AP, parameters, GFLOPs and speed.

    python tools/ablate.py                                        # the default: see below
    python tools/ablate.py attention=none,psa_parallel,psa_sequential --seeds 3
    python tools/ablate.py model=hrnet_w32,resnet50 attention=none,psa_parallel --processes 2
    python tools/ablate.py experiment=hrnet_w32_psa_p_256x192 data.root=data/coco \\
        attention=none,psa_parallel,psa_sequential                # the paper's Table 2 on COCO

Overrides use Hydra's multirun grammar: ``key=a,b,c``, ``range(a,b)``, ``choice(...)``,
``glob(...)`` for config groups, for any key or group; several swept keys give their cross
product. Every variant is trained by ``tools/train.py`` with the same data, schedule and
seed (``seed=S`` sets the first seed; ``--seeds N`` trains seeds S..S+N-1) in its own folder
``OUT/<NN>-<values>/seed<S>/``, and evaluated by the run's final evaluation.

Without ``experiment=`` the quick-start preset is used (``experiment=quickstart``: the
synthetic data, the small HRNet at 128x96) on a 15-epoch schedule
(``schedule.epochs=15 schedule.milestones=[12,14]``; setting either key keeps the preset's
46 epochs instead), and without a sweep the three attention layouts are compared.
Measured on 2 quiet cores (docs/ablation.md): about 5 minutes per run, so 15 minutes for
the default and 30 for ``--seeds 2``; on the faster machine of the November benchmarks,
about a third of that.

Out (``--out``, default ``runs/ablation-<hash of the overrides>``, so the same command
finds its folder again): ``report.md``, ``report.json`` (one row per variant: the swept
values, AP and the other metrics of the final evaluation, parameters, GFLOPs in the
paper's convention, training img/s (median of the epochs' ``train/images_per_s``),
inference img/s (measured here, for every model alike), the change against the first
variant; with several seeds each seed's figures, mean and standard deviation) and
``ablation.png`` (AP against GFLOPs and against inference img/s).

Interrupted (Ctrl-C, SIGTERM), it stops the running trainings with a resumable
checkpoint; the same command again skips finished runs (``ablation_done.json``) and
resumes the others with ``resume=auto``. A failing run is reported as failed with its
exit code and log, and the others still run.

Exit codes: 0 all runs finished; 1 some failed (the report says which); 2 bad input;
130/143 interrupted by SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from psapose.ablation import (
    AblationError,
    AblationInterrupted,
    ablate,
    default_out_dir,
    plan_ablation,
    run_specs,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides; comma lists and range()/choice() sweep"
    )
    parser.add_argument("--seeds", type=int, default=1, help="seeds per variant (default 1)")
    parser.add_argument("--out", type=Path, default=None, help="output folder")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="trainings at a time (default 1: one after another)",
    )
    parser.add_argument("--infer-batch", type=int, default=32, help="inference timing batch")
    parser.add_argument("--infer-rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--infer-device", default="cpu", help="cpu, cuda, cuda:1 (default cpu)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads for inference timing"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the runs and their folders, train nothing"
    )
    # Options may come before, between or after the overrides.
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        for name in ("processes", "infer_batch", "infer_rounds"):
            if getattr(args, name) < 1:
                raise AblationError(f"--{name.replace('_', '-')} must be at least 1")
        if args.threads is not None and args.threads < 1:
            raise AblationError("--threads must be at least 1")
        plan = plan_ablation(args.overrides, args.seeds)
        out = args.out or default_out_dir(plan)
        if args.dry_run:
            for spec in run_specs(plan, out):
                print(f"{spec.variant.label} seed {spec.seed}: {spec.run_dir}")
                print("  " + shlex.join(spec.argv()[1:]))
            return 0
        print(f"ablation of {len(plan.variants)} variants x {len(plan.seeds)} seeds in {out}")
        command = shlex.join(
            ["python", "tools/ablate.py", *(argv if argv is not None else sys.argv[1:])]
        )
        report, paths = ablate(
            plan, out, args.processes, args.infer_batch, args.infer_rounds,
            args.infer_device, args.threads, command,
        )  # fmt: skip
    except AblationError as err:
        print(f"ablate.py: {err}", file=sys.stderr)
        return 2
    except AblationInterrupted as stop:
        print(
            f"ablate.py: {stop}; run the same command again to resume (finished runs are kept)",
            file=sys.stderr,
        )
        return stop.exit_code
    print(paths["md"].read_text())
    print(f"report: {paths['md']}, {paths['json']}, {paths['png']}")
    failed = [v["label"] for v in report["variants"] if v["status"] != "done"]
    if failed:
        print(f"ablate.py: runs failed in: {', '.join(failed)} (see report.md)", file=sys.stderr)
        return 1
    return 0
