"""Top-down inference over a dataset: model -> flip test -> decode -> image keypoints -> COCO AP."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from psapose.codecs import average_flip
from psapose.data.coco import TopDownDataset
from psapose.data.normalize import normalize_images
from psapose.data.transforms import crop_to_image
from psapose.data.types import Batch
from psapose.engine.distributed import all_gather_objects
from psapose.engine.faults import batches_until_stopped, init_worker
from psapose.engine.sampler import EpochSampler

__all__ = [
    "EvaluationStopped",
    "Predictions",
    "autocast",
    "evaluate_predictions",
    "pixel_stats",
    "predict",
    "predict_heatmaps",
]

log = logging.getLogger("psapose")


class EvaluationStopped(Exception):  # noqa: N818 (a requested stop, not an error)
    """``predict`` was asked to stop (a stop signal) before it finished."""


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 / fp16 autocast on the device, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class Predictions:
    """Per person crop: keypoints in image pixels and what the results need."""

    index: np.ndarray  # (N,) dataset row
    keypoints: np.ndarray  # (N, K, 2) image pixels
    scores: np.ndarray  # (N, K)
    image_ids: np.ndarray  # (N,)
    box_scores: np.ndarray  # (N,)
    areas: np.ndarray  # (N,) padded crop area, HRNet's OKS-NMS area

    @classmethod
    def concatenate(cls, parts: list[Predictions]) -> Predictions:
        fields = {
            k: np.concatenate([getattr(p, k) for p in parts]) for k in cls.__dataclass_fields__
        }
        # Drop the padding repeats of distributed evaluation, keep dataset order.
        _, first = np.unique(fields["index"], return_index=True)
        return cls(**{k: v[first] for k, v in fields.items()})


def predict_heatmaps(
    model: nn.Module,
    images: Tensor,
    codec: Any,
    flip_indices: np.ndarray | None,
    precision: str = "fp32",
) -> Tensor:
    """Heatmaps of a normalised batch, averaged with the flipped image's when ``flip_indices`` is set."""
    with autocast(images.device, precision):
        heatmaps = model(images).float()
        if flip_indices is not None:
            flipped = model(images.flip(-1)).float()
            heatmaps = average_flip(heatmaps, flipped, flip_indices, codec)
    return heatmaps


@torch.no_grad()
def predict(
    model: nn.Module,
    dataset: TopDownDataset,
    codec: Any,
    device: torch.device,
    batch_size: int = 64,
    workers: int = 0,
    flip_test: bool = True,
    precision: str = "fp32",
    channels_last: bool = True,
    rank: int = 0,
    world_size: int = 1,
    progress: Any = None,
    should_stop: Callable[[], bool] | None = None,
    threads: Any = None,
) -> Predictions:
    """Keypoints of every crop of ``dataset`` in image pixels (gathered on every rank).

    Crops whose image cannot be read (``valid`` False) are left out of the
    predictions, each path logged once. ``should_stop`` is asked before every
    batch (on every rank, so under DDP it must agree across ranks); when it says
    yes, :class:`EvaluationStopped` is raised (a pre-empted run stops within a
    batch instead of finishing a long evaluation). ``threads``, a
    :class:`~psapose.threads.ThreadPolicy`, re-chooses the thread count as the
    machine's load changes.
    """
    was_training = model.training
    model.eval()
    sampler = EpochSampler(
        len(dataset), batch_size, shuffle=False, rank=rank, world_size=world_size, drop_last=False
    )
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=init_worker if workers > 0 else None,
    )
    flip_indices = dataset.spec.flip_indices if flip_test else None
    parts = []
    unreadable: dict[str, int] = {}
    for batch in _stoppable(_progress(loader, progress), should_stop):
        if threads is not None:
            threads.step()
        if should_stop is not None and should_stop():
            model.train(was_training)
            raise EvaluationStopped(
                f"evaluation stopped after {len(parts)} of {len(loader)} batches"
            )
        images = normalize_images(batch["image"], device=device, channels_last=channels_last)
        heatmaps = predict_heatmaps(model, images, codec, flip_indices, precision)
        keypoints, scores = codec.decode(heatmaps)
        center, scale = batch["center"].numpy(), batch["scale"].numpy()
        image_kps = crop_to_image(
            keypoints.double().cpu().numpy(), center, scale, dataset.input_size, dataset.udp
        )
        part = Predictions(
            index=batch["index"].numpy(),
            keypoints=image_kps,
            scores=scores.float().cpu().numpy(),
            image_ids=batch["image_id"].numpy(),
            box_scores=batch["score"].numpy().astype(np.float64),
            areas=scale[:, 0] * scale[:, 1],
        )
        valid = batch["valid"].numpy().astype(bool) if "valid" in batch else None
        if valid is not None and not valid.all():
            for error in np.asarray(batch["error"], dtype=object)[~valid]:
                if error not in unreadable:
                    log.warning("evaluation: leaving out an unreadable sample: %s", error)
                unreadable[error] = unreadable.get(error, 0) + 1
            part = Predictions(
                **{k: getattr(part, k)[valid] for k in Predictions.__dataclass_fields__}
            )
        parts.append(part)
    if unreadable:
        log.warning(
            "evaluation: %d crops from %d unreadable files left out",
            sum(unreadable.values()), len(unreadable),
        )  # fmt: skip
    model.train(was_training)
    local = Predictions.concatenate(parts)
    gathered = all_gather_objects(local)
    return Predictions.concatenate(gathered) if len(gathered) > 1 else local


def _stoppable(batches: Iterator[Batch], should_stop: Callable[[], bool] | None) -> Iterator[Batch]:
    """The batches; workers that died with the process group after a stop signal end the
    evaluation as a stop (:class:`EvaluationStopped`), not as a crash."""

    def stopped(err: Exception) -> None:
        raise EvaluationStopped(f"evaluation stopped: {err}") from err

    return batches_until_stopped(batches, should_stop or (lambda: False), stopped)


def _progress(loader: DataLoader, progress: Any) -> Iterator[Batch]:
    if progress is None:
        yield from loader
        return
    bar = progress(len(loader), "eval")
    for batch in loader:
        yield batch
        bar.update(len(batch["index"]))
    bar.close()


def evaluate_predictions(
    predictions: Predictions,
    dataset: TopDownDataset,
    nms: str = "oks",
    nms_threshold: float = 0.9,
    rescore_threshold: float = 0.2,
    device: torch.device | str | None = None,
) -> tuple[list[dict], dict[str, float] | None]:
    """COCO results after rescoring and OKS-NMS, and the AP table when the split has keypoints.

    On a CUDA ``device`` the greedy OKS-NMS of all images runs there (the same results).
    """
    from psapose.evaluation import evaluate_keypoints
    from psapose.evaluation.device import keypoint_results_on_device

    spec = dataset.spec
    on_gpu = device is not None and torch.device(device).type == "cuda"
    results = keypoint_results_on_device(
        predictions.image_ids,
        predictions.keypoints,
        predictions.scores,
        predictions.box_scores,
        predictions.areas,
        spec.sigmas_array,
        nms=nms,
        nms_threshold=nms_threshold,
        rescore_threshold=rescore_threshold,
        device=device if on_gpu else None,
    )
    stats = None
    if dataset.instances.has_annotations:
        stats = evaluate_keypoints(dataset.instances.ann_file, results, sigmas=spec.sigmas_array)
    return results, stats


def pixel_stats(predictions: Predictions, dataset: TopDownDataset, warn: bool = False) -> Any:
    """EPE, RMSE and PCK in image pixels (:mod:`psapose.evaluation.pixel_metrics`), or None.

    Only where every crop is one annotated instance (ground-truth boxes): each prediction
    is then matched to its ground truth by dataset row. Detector boxes have no such match.
    ``warn``: predictions it cannot score (NaN keypoints from a diverging model, during
    training) are a warning and None instead of a :class:`PixelMetricsError`.
    """
    from psapose.evaluation.pixel_metrics import PixelMetricsError, evaluate_pixel_metrics

    instances = dataset.instances
    if not instances.has_annotations or not len(instances) or (instances.ann_ids < 0).any():
        return None
    try:
        return evaluate_pixel_metrics(predictions, instances, dataset.spec.keypoints)
    except PixelMetricsError as err:
        if not warn:
            raise
        log.warning("no pixel errors this epoch: %s", err)
        return None
