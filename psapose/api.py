"""Pose estimation in a few lines: load a trained run, give images and person boxes.

    from psapose import PoseEstimator

    estimator = PoseEstimator.from_run("runs/20261121-151959")  # a run folder: config.yaml + checkpoints/
    poses = estimator("photo.jpg", boxes=[[x, y, w, h], ...])    # flip test on by default
    poses.keypoints     # (N, K, 2) image pixels
    poses.scores        # (N, K) heatmap maxima
    poses.to_coco(image_id=42)                                   # COCO keypoint results

The same top-down path as evaluation (:mod:`psapose.engine.inference`): box ->
aspect-fixed, padded crop (standard or UDP affine, as the codec was trained) ->
model (+ flipped input) -> batched decode -> image pixels. Crops from several
images share batches (:meth:`PoseEstimator.estimate`), so folders and video frames
run at full batch size.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from psapose.checkpoint import (
    CheckpointError,
    load_checkpoint_file,
    load_pose_checkpoint,
    resolve_checkpoint,
)
from psapose.config import ConfigError, build_model, compose_config, load_stored_config
from psapose.data.keypoint_spec import KeypointSpec
from psapose.data.normalize import normalize_images
from psapose.data.transforms import (
    affine_matrix,
    box_to_center_scale,
    check_color,
    crop_to_image,
    read_image,
    warp_image,
)
from psapose.engine.inference import predict_heatmaps
from psapose.evaluation.coco_eval import rescore
from psapose.runtime import (
    ESTIMATOR_OPTIONS,
    codec_from_inference_config,
    resolve_device,
    run_setup,
    spec_from_inference_config,
)

__all__ = ["IMAGE_SUFFIXES", "PoseEstimator", "Poses", "as_boxes", "image_paths", "resolve_device"]

ImageLike = str | os.PathLike | np.ndarray
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass
class Poses:
    """The people found in one image, one row per input box."""

    keypoints: np.ndarray  # (N, K, 2) float64, image pixels
    scores: np.ndarray  # (N, K) float32, keypoint confidences (heatmap maxima)
    boxes: np.ndarray  # (N, 4) float64, the input boxes as x, y, w, h
    box_scores: np.ndarray  # (N,) float64, detector scores (1 for given boxes)

    def __len__(self) -> int:
        return len(self.keypoints)

    def instance_scores(self, threshold: float = 0.2) -> np.ndarray:
        """HRNet's person score: box score x mean of the keypoint scores above ``threshold``."""
        if not len(self):
            return np.zeros(0)
        return rescore(self.box_scores, self.scores, threshold)

    def to_coco(
        self, image_id: int, category_id: int = 1, rescore_threshold: float = 0.2
    ) -> list[dict]:
        """COCO keypoint results (``image_id``, ``category_id``, ``keypoints``, ``score``)."""
        flat = np.concatenate([self.keypoints, self.scores[..., None]], axis=-1)
        flat = flat.reshape(len(self), -1).astype(np.float64).tolist()
        scores = self.instance_scores(rescore_threshold).astype(np.float64).tolist()
        return [
            {"image_id": int(image_id), "category_id": int(category_id), "keypoints": k, "score": s}
            for k, s in zip(flat, scores, strict=True)
        ]


def as_boxes(boxes: Any, box_format: str = "xywh", where: str = "boxes") -> np.ndarray:
    """``(N, 4)`` float64 ``x, y, w, h`` boxes from xywh or xyxy input, checked."""
    if box_format not in ("xywh", "xyxy"):
        raise ValueError(f"box_format must be 'xywh' or 'xyxy', got {box_format!r}")
    array = np.asarray(boxes, dtype=np.float64)
    if array.size == 0:
        return np.zeros((0, 4))
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"{where}: expected (N, 4) boxes, got shape {np.shape(boxes)}")
    if box_format == "xyxy":
        array = np.concatenate([array[:, :2], array[:, 2:] - array[:, :2]], axis=1)
    bad = np.flatnonzero(~np.isfinite(array).all(axis=1) | (array[:, 2] <= 0) | (array[:, 3] <= 0))
    if len(bad):
        raise ValueError(
            f"{where}[{bad[0]}] = {array[bad[0]].tolist()} (x, y, w, h): "
            "width and height must be positive and finite"
        )
    return array


class PoseEstimator:
    """A trained top-down pose model with its codec, keypoint spec and crop convention.

    Args:
        model: heatmap model (``[N, 3, H, W] -> [N, C*K, H/4, W/4]``).
        codec: the heatmap codec it was trained with (decodes, and fixes the crop convention).
        spec: keypoint spec (flip pairs for the flip test, skeleton for drawing).
        input_size: crop (height, width).
        color: channel order the model was trained on (``rgb`` or ``bgr``).
        device: ``cpu``, ``cuda``, ``cuda:1`` or ``auto``.
        flip_test: average with the flipped crop's heatmaps.
        batch_size: crops per forward pass.
        precision: ``fp32``, ``bf16`` or ``fp16`` (autocast).
        box_padding: box enlargement before cropping (HRNet's 1.25).
    """

    def __init__(
        self,
        model: nn.Module,
        codec: Any,
        spec: KeypointSpec,
        input_size: Sequence[int],
        color: str = "rgb",
        device: str | torch.device = "auto",
        flip_test: bool = True,
        batch_size: int = 32,
        precision: str = "fp32",
        channels_last: bool = True,
        box_padding: float = 1.25,
    ) -> None:
        check_color(color)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
        self.device = resolve_device(device)
        self.model = model.eval().to(self.device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.codec = codec
        self.spec = spec
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.color = color
        self.flip_test = flip_test
        self.batch_size = int(batch_size)
        self.precision = precision
        self.channels_last = channels_last
        self.box_padding = float(box_padding)
        self.udp = bool(codec.use_udp)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_config(
        cls, cfg: DictConfig | Sequence[str], checkpoint: str | os.PathLike | None = None, **kwargs
    ) -> PoseEstimator:
        """From a composed config (or Hydra overrides such as ``["experiment=hrnet_w32_psa_p_256x192"]``)
        and optionally a checkpoint: a psapose training checkpoint, a plain state dict, or an
        official HRNet/SimpleBaseline pose checkpoint (loaded strictly)."""
        if not isinstance(cfg, DictConfig):
            cfg = compose_config(list(cfg))
        setup = run_setup(cfg)
        model = build_model(setup.cfg)
        if checkpoint is not None:
            load_pose_checkpoint(model, checkpoint, strict=True)
        options = {**setup.estimator_options(), **kwargs}
        return cls(model, setup.codec, setup.spec, setup.input_size, **options)

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | os.PathLike,
        config: DictConfig | str | os.PathLike | Sequence[str] | None = None,
        **kwargs,
    ) -> PoseEstimator:
        """From a checkpoint file (or URL). The config is the one stored in a psapose
        training checkpoint unless ``config`` (a YAML file, a config, or overrides) is given.

        A checkpoint that carries an inference config (every one the trainer writes now)
        is built from that plain data alone, without composing or validating a Hydra
        config (:meth:`from_inference_config`); an older one through its stored training
        config, under the same allow-list.
        """
        if config is None:
            path = resolve_checkpoint(checkpoint)
            state = load_checkpoint_file(path)  # weights_only; pickled code is refused
            inference = state.get("inference") if isinstance(state, dict) else None
            if inference is not None:
                return cls.from_inference_config(inference, checkpoint, str(path), **kwargs)
            cfg = _stored_config(state, path)
        elif isinstance(config, (str, os.PathLike)) and Path(config).suffix in (".yaml", ".yml"):
            cfg = load_stored_config(config)  # untrusted data: plain values, allowed targets
        else:
            cfg = config
        return cls.from_config(cfg, checkpoint, **kwargs)

    @classmethod
    def from_inference_config(
        cls,
        inference: Mapping[str, Any],
        checkpoint: str | os.PathLike | None = None,
        source: str = "inference config",
        **kwargs,
    ) -> PoseEstimator:
        """From the plain inference config a checkpoint carries
        (:meth:`psapose.runtime.RunSetup.inference_config`) and optionally the weights.

        Nothing in it is run or imported: the model is built from its config subtree
        through the allow-listed path (:func:`~psapose.config.build_model`), the codec
        only if it names one of psapose's codec classes.
        """
        if not isinstance(inference, Mapping) or not isinstance(inference.get("model"), Mapping):
            raise ConfigError(f"{source}: the inference config has no model node")
        model_cfg = load_stored_config(
            {"model": inference["model"]}, f"{source} (inference config)"
        )
        model = build_model(model_cfg)
        if checkpoint is not None:
            load_pose_checkpoint(model, checkpoint, strict=True)
        size = inference.get("input_size")
        if not (isinstance(size, (list, tuple)) and len(size) == 2):
            raise ConfigError(f"{source}: inference config: input_size must be [height, width]")
        codec = codec_from_inference_config(inference, source)
        spec = spec_from_inference_config(inference, source)
        options = {k: inference[k] for k in ESTIMATOR_OPTIONS if k in inference}
        return cls(model, codec, spec, tuple(size), **{**options, **kwargs})

    @classmethod
    def from_run(
        cls, run_dir: str | os.PathLike, checkpoint: str = "best", **kwargs
    ) -> PoseEstimator:
        """From a training run directory: its ``config.yaml`` and ``checkpoints/best.pth``
        (``checkpoint="latest"``, or a file name or path, picks another)."""
        run = Path(run_dir)
        config = run / "config.yaml"
        if not config.is_file():
            raise FileNotFoundError(f"{run}: no config.yaml; is it a psapose run directory?")
        path = Path(checkpoint)
        if checkpoint in ("best", "latest"):
            path = run / "checkpoints" / f"{checkpoint}.pth"
            if checkpoint == "best" and not path.is_file():
                path = run / "checkpoints" / "latest.pth"  # runs without evaluation have no best
        elif not path.is_absolute() and not path.exists():
            path = run / "checkpoints" / checkpoint
        if not path.is_file():
            raise FileNotFoundError(f"{run}: checkpoint {path} not found")
        return cls.from_checkpoint(path, config, **kwargs)

    # ------------------------------------------------------------------ inference
    def __call__(
        self,
        image: ImageLike,
        boxes: Any = None,
        box_scores: Any = None,
        box_format: str = "xywh",
        color: str = "rgb",
    ) -> Poses:
        """Poses in one image (a path, or an ``H x W x 3`` uint8 array in ``color`` order).

        ``boxes`` are person boxes (``(N, 4)``, ``xywh`` or ``xyxy``); ``None`` means one
        person filling the whole image.
        """
        return self.estimate([image], [boxes], [box_scores], box_format, color)[0]

    @torch.no_grad()
    def estimate(
        self,
        images: Sequence[ImageLike],
        boxes: Sequence[Any],
        box_scores: Sequence[Any] | None = None,
        box_format: str = "xywh",
        color: str = "rgb",
    ) -> list[Poses]:
        """Poses for several images at once, their crops batched together."""
        if len(boxes) != len(images):
            raise ValueError(f"{len(images)} images but {len(boxes)} box lists")
        box_scores = box_scores if box_scores is not None else [None] * len(images)
        crops, centers, scales, per_image = [], [], [], []
        for i, image in enumerate(images):
            array = self.load_image(image, color)
            h, w = array.shape[:2]
            where = f"boxes of image {i}" if len(images) > 1 else "boxes"
            xywh = (
                np.array([[0.0, 0.0, w, h]])
                if boxes[i] is None
                else as_boxes(boxes[i], box_format, where)
            )
            score = (
                np.ones(len(xywh))
                if box_scores[i] is None
                else np.asarray(box_scores[i], dtype=np.float64).reshape(-1)
            )
            if len(score) != len(xywh):
                raise ValueError(f"{where}: {len(xywh)} boxes but {len(score)} box scores")
            center, scale = self.crop_boxes(xywh)
            for c, s in zip(center, scale, strict=True):
                crops.append(self.crop(array, c, s))
            centers.append(center)
            scales.append(scale)
            per_image.append((xywh, score))
        center = np.concatenate(centers) if centers else np.zeros((0, 2))
        scale = np.concatenate(scales) if scales else np.zeros((0, 2))
        keypoints, scores = self.predict_crops(crops)
        image_kps = crop_to_image(keypoints, center, scale, self.input_size, self.udp)
        out, start = [], 0
        for xywh, score in per_image:
            end = start + len(xywh)
            out.append(Poses(image_kps[start:end], scores[start:end], xywh, score))
            start = end
        return out

    def load_image(self, image: ImageLike, color: str = "rgb") -> np.ndarray:
        """An image path or array as uint8 ``H x W x 3`` in the model's channel order."""
        if isinstance(image, (str, os.PathLike)):
            return read_image(image, self.color)
        array = np.asarray(image)
        if array.dtype != np.uint8:
            raise ValueError(f"image arrays must be uint8, got {array.dtype}")
        if array.ndim == 2:
            return cv2.cvtColor(array, cv2.COLOR_GRAY2RGB)
        if array.ndim != 3 or array.shape[2] not in (3, 4):
            raise ValueError(f"expected an H x W x 3 image, got shape {array.shape}")
        check_color(color)
        array = array[..., :3]
        return np.ascontiguousarray(array if color == self.color else array[..., ::-1])

    def crop_boxes(self, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Crop centres and sizes (pixels) of ``xywh`` boxes: aspect-fixed, then padded."""
        aspect = self.input_size[1] / self.input_size[0]
        return box_to_center_scale(boxes, aspect, self.box_padding)

    def crop(self, image: np.ndarray, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """The uint8 network input for one box, exactly as evaluation crops it."""
        matrix = affine_matrix(center, scale, 0.0, self.input_size, self.udp)
        return warp_image(image, matrix, self.input_size)

    def predict_crops(self, crops: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Keypoints in crop pixels ``(N, K, 2)`` and scores ``(N, K)`` of uint8 crops, batched."""
        if not len(crops):
            k = self.spec.num_keypoints
            return np.zeros((0, k, 2)), np.zeros((0, k), dtype=np.float32)
        keypoints, scores = [], []
        for start in range(0, len(crops), self.batch_size):
            kps, score = self.codec.decode(self.heatmaps(crops[start : start + self.batch_size]))
            keypoints.append(kps.double().cpu().numpy())
            scores.append(score.float().cpu().numpy())
        return np.concatenate(keypoints), np.concatenate(scores)

    @torch.no_grad()
    def heatmaps(self, crops: Sequence[np.ndarray] | np.ndarray) -> torch.Tensor:
        """The heatmaps of one batch of uint8 crops (flip-averaged with ``flip_test``)."""
        images = self.normalize(crops)
        flip = self.spec.flip_indices if self.flip_test else None
        return predict_heatmaps(self.model, images, self.codec, flip, self.precision)

    def normalize(self, crops: Sequence[np.ndarray] | np.ndarray) -> torch.Tensor:
        """uint8 crops ``(N, H, W, 3)`` as the model's float input on its device."""
        batch = torch.from_numpy(np.ascontiguousarray(np.stack(list(crops))))
        return normalize_images(batch, device=self.device, channels_last=self.channels_last)


def image_paths(path: str | os.PathLike) -> list[Path]:
    """The image files of a folder (sorted, by suffix), or ``[path]`` for a file."""
    path = Path(path)
    if not path.is_dir():
        return [path]
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def _stored_config(state: object, path: Path) -> DictConfig:
    """The training config stored in a loaded psapose checkpoint."""
    config = state.get("config") if isinstance(state, dict) else None
    if not isinstance(config, dict):
        raise CheckpointError(
            f"{path}: holds no config (not a psapose training checkpoint); "
            "pass config= (a config.yaml, or overrides such as ['experiment=...'])"
        )
    return load_stored_config(config, f"{path} (stored config)")
