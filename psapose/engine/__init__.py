"""Training and evaluation engine: losses, sampler, trainer, inference."""

from psapose.engine.checkpoints import atomic_save
from psapose.engine.inference import Predictions, evaluate_predictions, predict
from psapose.engine.loss import CombinedTargetMSELoss, KeypointMSELoss, build_loss
from psapose.engine.sampler import EpochSampler
from psapose.engine.trainer import Trainer

__all__ = [
    "CombinedTargetMSELoss",
    "EpochSampler",
    "KeypointMSELoss",
    "Predictions",
    "Trainer",
    "atomic_save",
    "build_loss",
    "evaluate_predictions",
    "predict",
]
