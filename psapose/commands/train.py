"""Train (and evaluate) a pose model from the Hydra config.

    python tools/train.py                                               # quick-start defaults
    python tools/train.py experiment=udp_psa_w48_256x192 data.root=data/coco
    python tools/train.py model=hrnet_w32 attention=psa_sequential codec=udp
    torchrun --nproc_per_node 8 tools/train.py experiment=hrnet_w32_psa_p_256x192 data.root=data/coco
    python tools/train.py ... resume=auto hydra.run.dir=runs/my_run     # continue a run

The run directory (Hydra's, or ``output_dir=``) receives the resolved config,
checkpoints, TensorBoard logs and a PNG of predictions.

Exit codes (docs/reliability.md):

* 0: trained to the end;
* 2: bad input found at start (config key or value, keypoint YAML, annotation
  file, unusable or unsafe resume checkpoint), named in the log;
* 3: stopped by a guard during training (too many unreadable images, too many
  non-finite losses in a row); the last good checkpoint is kept;
* 4: an output could not be written (disk full, quota, read-only); the previous
  checkpoint is kept;
* 128 + N (143 for SIGTERM, 130 for SIGINT): stopped by signal N after writing
  a resumable ``checkpoints/latest.pth``; run again with ``resume=auto``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from psapose.cli import check_overrides, error_contract, log_into_output_dir
from psapose.config import CONFIG_DIR
from psapose.engine.distributed import cleanup
from psapose.engine.dry_run import dry_run
from psapose.engine.trainer import Trainer
from psapose.evaluation import format_table

log = logging.getLogger("train")


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base=None)
def task(cfg: DictConfig) -> float:
    """The Hydra task: train with the composed config; the best AP."""
    output_dir = Path(cfg.output_dir or HydraConfig.get().runtime.output_dir)
    # Anticipated failures (docs/reliability.md) end with one line and their exit code:
    # 2 bad input at start, 3 a guard, 4 an unwritable output, 128 + N a stop signal.
    with error_contract("train", log.error):
        if cfg.dry_run:
            log.info("%s", dry_run(cfg, "train")["summary"])
            return 0.0
        try:
            trainer = Trainer(cfg, output_dir)
            result = trainer.fit()
        finally:
            cleanup()
    if trainer.dist.is_main:
        if result["stats"]:
            log.info("final %s AP table:\n%s", cfg.eval.split, format_table(result["stats"]))
        log.info(
            "done in %.0f s; best AP %.4f; run directory %s",
            result["seconds"], result["best_ap"], output_dir,
        )  # fmt: skip
    return float(result["best_ap"])


def main(argv: list[str] | None = None) -> None:
    """`python tools/train.py ARGS` and `psapose train ARGS` (default: the command line)."""
    args = sys.argv[1:] if argv is None else list(argv)
    # Hydra's own errors (unknown key or option) as one line and exit 2, before Hydra runs.
    check_overrides("train", args)
    sys.argv[1:] = log_into_output_dir(args)  # the log beside the outputs; Hydra reads sys.argv
    task()
