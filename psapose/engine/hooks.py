"""Side effects of a training run, as hooks the loop calls: TensorBoard scalars and images.

The trainer calls every hook in ``trainer.hooks`` at fixed points of the loop
(lightning-pose's callbacks); a hook reads what it needs from the trainer and
changes nothing the training depends on (no random numbers drawn, no state
written to checkpoints), so a run with or without them trains the same.

=====================  =====================================================
method                 called
=====================  =====================================================
``on_first_batch``     before the first step of a fresh run (epoch 0, batch 0)
``on_step``            after every optimiser step (skipped steps too)
``on_epoch_trained``   after an epoch's batches, unless a stop signal cut it
``on_epoch_end``       after the epoch is counted, before its checkpoint
``on_evaluate``        after an evaluation that produced statistics
``on_fit_end``         once, when training is done (with the last predictions)
=====================  =====================================================

Main rank only: the trainer builds the hooks there (:func:`default_hooks`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from psapose.attention_maps import log_attention_maps
from psapose.data.transforms import read_image
from psapose.data.types import Batch
from psapose.engine.inference import Predictions
from psapose.visualize import draw_poses, heatmap_image, image_grid

if TYPE_CHECKING:
    from psapose.engine.trainer import Trainer

__all__ = ["Hook", "PredictionImages", "TargetImages", "TensorBoardLogs", "default_hooks"]

log = logging.getLogger("psapose")


class Hook:
    """A no-op at every point of the loop; subclasses override what they need."""

    def on_first_batch(self, trainer: Trainer, batch: Batch) -> None:
        pass

    def on_step(self, trainer: Trainer, loss: float, lr: float) -> None:
        pass

    def on_epoch_trained(self, trainer: Trainer, images_per_s: float, loss: float) -> None:
        pass

    def on_epoch_end(self, trainer: Trainer, counts: dict[str, int]) -> None:
        pass

    def on_evaluate(self, trainer: Trainer, stats: dict[str, float]) -> None:
        pass

    def on_fit_end(self, trainer: Trainer, preds: Predictions | None) -> None:
        pass


class TensorBoardLogs(Hook):
    """Scalars (``train/loss``, ``train/lr``, images/s, epoch loss, fault counts, ``val/*``)
    and, after each evaluation, what each PSA block attends to (2 fixed val crops)."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    def on_step(self, trainer: Trainer, loss: float, lr: float) -> None:
        if trainer.step % trainer.cfg.log_interval == 0:
            self.writer.add_scalar("train/loss", loss, trainer.step)
            self.writer.add_scalar("train/lr", lr, trainer.step)

    def on_epoch_trained(self, trainer: Trainer, images_per_s: float, loss: float) -> None:
        self.writer.add_scalar("train/images_per_s", images_per_s, trainer.step)
        self.writer.add_scalar("train/epoch_loss", loss, trainer.epoch + 1)

    def on_epoch_end(self, trainer: Trainer, counts: dict[str, int]) -> None:
        for key, value in counts.items():
            self.writer.add_scalar(f"train/{key}", value, trainer.epoch)

    def on_evaluate(self, trainer: Trainer, stats: dict[str, float]) -> None:
        for key, value in stats.items():
            self.writer.add_scalar(f"val/{key}", value, trainer.epoch)
        log_attention_maps(self.writer, trainer.raw_model, trainer.val_set, trainer.epoch)

    def on_fit_end(self, trainer: Trainer, preds: Predictions | None) -> None:
        self.writer.flush()


class TargetImages(Hook):
    """The training targets of the first batch, drawn over their crops."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    def on_first_batch(self, trainer: Trainer, batch: Batch) -> None:
        n = min(4, len(batch["index"]))
        targets, _ = trainer.codec.encode(batch["keypoints"][:n], batch["visible"][:n])
        c = trainer.codec.channels_per_keypoint
        tiles = []
        for i in range(n):
            image = batch["image"][i].numpy()
            if trainer.train_set.color == "bgr":
                image = image[..., ::-1]
            tiles.append(heatmap_image(targets[i, ::c].numpy(), np.ascontiguousarray(image)))
        self.writer.add_image("train/targets", image_grid(tiles), trainer.step, dataformats="HWC")


class PredictionImages(Hook):
    """Full images with the predicted poses, to TensorBoard and ``predictions.png``."""

    def __init__(self, writer: Any, output_dir: Path) -> None:
        self.writer, self.output_dir = writer, output_dir

    def on_fit_end(self, trainer: Trainer, preds: Predictions | None) -> None:
        count = trainer.cfg.eval.images
        if preds is None or count <= 0:
            return
        inst = trainer.val_set.instances
        image_ids = list(dict.fromkeys(preds.image_ids.tolist()))[:count]
        id_to_index = {int(i): k for k, i in enumerate(inst.image_ids)}
        tiles = []
        for image_id in image_ids:
            rows = preds.image_ids == image_id
            keep = preds.box_scores[rows] >= 0.3
            path = inst.image_files[id_to_index[image_id]]
            try:
                image = read_image(path)
            except OSError as err:  # unreadable now (or a full disk): the picture is optional
                log.warning("predictions.png: leaving out %s (%s)", path, err)
                continue
            drawn = draw_poses(
                image, preds.keypoints[rows][keep], preds.scores[rows][keep], trainer.spec, 0.3
            )
            tiles.append(cv2.resize(drawn, (320, 256)))
        if not tiles:
            return
        grid = image_grid(tiles, columns=4)
        path = self.output_dir / "predictions.png"
        if not cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
            log.warning("could not write %s", path)
        self.writer.add_image("val/predictions", grid, trainer.step, dataformats="HWC")


def default_hooks(output_dir: Path) -> list[Hook]:
    """The main rank's hooks: TensorBoard logs in ``output_dir/tb`` and ``predictions.png``."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(output_dir / "tb"))
    # Prediction images before the final flush, as the loop always wrote them.
    return [TargetImages(writer), PredictionImages(writer, output_dir), TensorBoardLogs(writer)]
