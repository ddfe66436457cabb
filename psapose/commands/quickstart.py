"""Quick start: train the small HRNet + PSA on the synthetic dataset on the CPU, then evaluate.

    python tools/quickstart.py                        # what `make quickstart` runs
    python tools/quickstart.py schedule.epochs=5      # any config override

Writes the synthetic dataset to data/synthetic on first use. Trains the
`experiment=quickstart` preset, evaluates on the synthetic val split (detector
boxes, flip test, OKS-NMS), and prints the AP table. The run directory in
runs/ receives the checkpoints, TensorBoard logs and predictions.png.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from psapose.cli import check_overrides, error_contract, log_into_output_dir
from psapose.config import CONFIG_DIR, input_size
from psapose.data.builder import ensure_generated
from psapose.engine.trainer import Trainer
from psapose.evaluation import format_table
from psapose.models import attention_blocks
from psapose.models.complexity import count_parameters, paper_convention_macs

log = logging.getLogger("quickstart")
START = time.perf_counter()


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base=None)
def task(cfg: DictConfig) -> None:
    """The Hydra task: the quick start with the composed config."""
    output_dir = Path(cfg.output_dir or HydraConfig.get().runtime.output_dir)
    # The same contract as tools/train.py: one line and exit 2 for bad input, 3 for a guard,
    # 4 for a full disk, 143 after SIGTERM with a resumable checkpoint (docs/reliability.md).
    with error_contract("quickstart", log.error):
        generated = ensure_generated(cfg.data)
        if generated:
            log.info(
                "synthetic dataset written to %s in %.1f s", cfg.data.root, generated["seconds"]
            )
        trainer = Trainer(cfg, output_dir)
        _describe(trainer)
        result = trainer.fit()
    stats = result["stats"]
    wall = time.perf_counter() - START
    if stats:
        print(f"\nsynthetic val AP ({cfg.eval.split}, detector boxes, flip test):")
        print(format_table(stats))
    print(f"\ntrained and evaluated in {wall:.0f} s (training {result['seconds']:.0f} s)")
    print(f"run directory: {output_dir}")
    print(f"  predictions: {output_dir / 'predictions.png'}")
    print(f"  checkpoints: {output_dir / 'checkpoints'}")
    print(f"  TensorBoard: tensorboard --logdir {output_dir / 'tb'}")


def _describe(trainer: Trainer) -> None:
    model = trainer.raw_model
    size = input_size(trainer.cfg)
    log.info(
        "model %s + %s: %s parameters, %.3f GFLOPs at %dx%d, attention in %d blocks; "
        "%d training people, %d val boxes, %d epochs",
        type(model).__name__, trainer.cfg.attention.kind if "kind" in trainer.cfg.attention else "",
        f"{count_parameters(model):,}", paper_convention_macs(model, size) / 2**30, *size,
        len(attention_blocks(model)), len(trainer.train_set),
        len(trainer.val_set) if trainer.val_set is not None else 0, trainer.cfg.schedule.epochs,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """`python tools/quickstart.py ARGS` and `psapose quickstart ARGS` (default: the command line)."""
    args = sys.argv[1:] if argv is None else list(argv)
    # The quick-start preset unless the command line picks another experiment.
    if not any(arg.startswith(("experiment=", "+experiment=")) for arg in args):
        args.insert(0, "experiment=quickstart")
    # Hydra's own errors (unknown key or option) as one line and exit 2, before Hydra runs.
    check_overrides("quickstart", args)
    sys.argv[1:] = log_into_output_dir(args)  # train.log beside the checkpoints
    task()
