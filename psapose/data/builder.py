"""Datasets from the ``data`` config node: paths, splits and augmentation in one place."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from psapose.config import ConfigError
from psapose.data.coco import (
    AnnotationError,
    AnnotationFileNotFound,
    Instances,
    TopDownDataset,
    load_coco_annotations,
    load_detections,
)
from psapose.data.keypoint_spec import KeypointSpec, load_keypoint_spec
from psapose.data.transforms import Augmentation

__all__ = [
    "DEFAULT_SYNTHETIC_ROOT",
    "SPLITS",
    "build_dataset",
    "build_keypoint_spec",
    "ensure_generated",
    "will_generate",
    "load_split",
    "split_path",
]

SPLITS = ("train", "val", "test-dev")

_log = logging.getLogger(__name__)
_reported_layouts: set[tuple[str, str, str]] = set()


def _node_name(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    return split.replace("-", "_")


def _under_root(data_cfg: DictConfig, value: Any) -> Path:
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else Path(str(data_cfg.root)).expanduser() / path


def _layout_paths(data_cfg: DictConfig, node: str) -> dict[str, Any]:
    """``ann_file`` and ``image_dir`` of a split, after ``data.layouts``.

    Only paths left at one of the known layouts move, and only when their annotation
    file is absent and another layout's is present: a path the user set is kept (and
    reported missing) rather than swapped for a guess.
    """
    configured = {
        key: OmegaConf.select(data_cfg, f"{node}.{key}") for key in ("ann_file", "image_dir")
    }
    layouts = OmegaConf.select(data_cfg, "layouts")
    if not layouts or configured["ann_file"] in (None, ""):
        return configured
    known = {
        name: {key: OmegaConf.select(layout, f"{node}.{key}") for key in configured}
        for name, layout in layouts.items()
    }
    if configured not in known.values() or _under_root(data_cfg, configured["ann_file"]).is_file():
        return configured
    for name, paths in known.items():
        if paths["ann_file"] and _under_root(data_cfg, paths["ann_file"]).is_file():
            report = (str(data_cfg.root), node, name)
            if report not in _reported_layouts:
                _reported_layouts.add(report)
                _log.info(
                    "data.%s: %s is absent; using the %s layout (%s, %s)",
                    node,
                    configured["ann_file"],
                    name,
                    paths["ann_file"],
                    paths["image_dir"],
                )
            return paths
    return configured


def split_path(data_cfg: DictConfig, split: str, key: str) -> Path | None:
    """``data.<split>.<key>`` as a path, relative paths taken from ``data.root``.

    ``ann_file`` and ``image_dir`` follow ``data.layouts`` where the config has them.
    """
    node = _node_name(split)
    if key in ("ann_file", "image_dir"):
        value = _layout_paths(data_cfg, node)[key]
    else:
        value = OmegaConf.select(data_cfg, f"{node}.{key}")
    if value in (None, ""):
        return None
    return _under_root(data_cfg, value)


def build_keypoint_spec(data_cfg: DictConfig) -> KeypointSpec:
    """The spec named by ``data.keypoints``: a built-in name, a path, or a path under ``data.root``."""
    name = str(data_cfg.keypoints)
    if name.endswith((".yaml", ".yml")) and not Path(name).expanduser().is_absolute():
        # The data's own YAML first: a stray file of that name in the working directory
        # must not win silently.
        under_root = Path(str(data_cfg.root)).expanduser() / name
        if under_root.exists():
            return load_keypoint_spec(under_root)
    return load_keypoint_spec(Path(name).expanduser() if name.endswith((".yaml", ".yml")) else name)


def load_split(
    data_cfg: DictConfig, split: str, spec: KeypointSpec, aspect_ratio: float
) -> Instances:
    """Person instances of a split: ground truth for ``train`` (and ``val`` with
    ``use_gt_boxes``), detections otherwise."""
    node = _node_name(split)
    ann_file = split_path(data_cfg, split, "ann_file")
    image_dir = split_path(data_cfg, split, "image_dir")
    if ann_file is None or image_dir is None:
        raise ConfigError(f"data.{node}.ann_file and data.{node}.image_dir must be set")
    layouts = OmegaConf.select(data_cfg, "layouts")
    if layouts and not ann_file.is_file():
        tried = sorted(
            {str(OmegaConf.select(layout, f"{node}.ann_file")) for layout in layouts.values()}
            | {str(OmegaConf.select(data_cfg, f"{node}.ann_file"))}
        )
        raise AnnotationFileNotFound(
            f"{ann_file}: file not found (data.{node}.ann_file; looked under "
            f"{data_cfg.root} for {', '.join(tried)})"
        )
    padding = float(data_cfg.box_padding)
    category = data_cfg.get("category_id")
    use_gt = split == "train" or bool(
        OmegaConf.select(data_cfg, f"{node}.use_gt_boxes", default=False)
    )
    if use_gt:
        return load_coco_annotations(
            ann_file, image_dir, spec.num_keypoints, aspect_ratio, padding, category
        )
    det_file = split_path(data_cfg, split, "det_file")
    if det_file is None:
        raise ConfigError(
            f"data.{node}.det_file is not set: give a detection-results file"
            + (" or set data.val.use_gt_boxes=true" if split == "val" else "")
        )
    return load_detections(
        det_file,
        ann_file,
        image_dir,
        spec.num_keypoints,
        aspect_ratio,
        padding,
        float(OmegaConf.select(data_cfg, f"{node}.det_score_threshold", default=0.0)),
        1 if category is None else int(category),
    )


def build_dataset(
    data_cfg: DictConfig,
    split: str,
    input_size: tuple[int, int],
    codec: Any = None,
    seed: int = 0,
    augment: bool | None = None,
    udp: bool | None = None,
) -> TopDownDataset:
    """The dataset of a split; training augmentation by default only for ``train``.

    ``udp`` picks the crop convention (default: the codec's ``use_udp``); pass it when
    targets are encoded elsewhere (per batch on the device) and ``codec`` is None.
    """
    spec = build_keypoint_spec(data_cfg)
    instances = load_split(data_cfg, split, spec, input_size[1] / input_size[0])
    if len(instances) == 0:
        raise AnnotationError(
            f"{instances.source}: no usable instance of category {instances.category_id} "
            f"for the {split} split ({instances.summary()}); check data.{_node_name(split)} "
            "and data.category_id"
        )
    augment = split == "train" if augment is None else augment
    aug = None
    if augment:
        aug = Augmentation(**OmegaConf.to_container(data_cfg.augment, resolve=True))
    return TopDownDataset(
        instances,
        spec,
        input_size,
        codec=codec,
        udp=udp,
        augment=aug,
        color=str(data_cfg.color),
        seed=seed,
    )


# The one place the synthetic dataset is written without being asked (configs/data/synthetic.yaml).
DEFAULT_SYNTHETIC_ROOT = "data/synthetic"


def _is_default_synthetic_root(root: str) -> bool:
    return Path(root).expanduser().resolve() == Path(DEFAULT_SYNTHETIC_ROOT).resolve()


def will_generate(data_cfg: DictConfig) -> bool:
    """Whether :func:`ensure_generated` would write the synthetic dataset now."""
    options, ask = data_cfg.get("synthetic"), bool(data_cfg.get("generate", False))
    ann = split_path(data_cfg, "train", "ann_file")
    missing = ann is None or not ann.is_file()
    return missing and (ask or (bool(options) and _is_default_synthetic_root(str(data_cfg.root))))


def ensure_generated(data_cfg: DictConfig) -> dict | None:
    """Write the synthetic dataset under ``data.root`` if its training annotations are missing,
    but only at its default place (``data/synthetic``) or when asked (``data.generate=true``).

    Options come from ``data.synthetic`` (images, val_images, seed, difficulty). Returns the
    generator's summary, or None when nothing was written. A missing dataset anywhere else
    is a :class:`ConfigError` naming the path: a mistyped ``data.root`` must not silently
    become an 18 MB dataset.
    """
    options = data_cfg.get("synthetic")
    ask = bool(data_cfg.get("generate", False))
    if not options and not ask:
        return None
    ann = split_path(data_cfg, "train", "ann_file")
    if ann is not None and ann.is_file():
        return None
    root = str(data_cfg.root)
    if not ask and not _is_default_synthetic_root(root):
        raise ConfigError(
            f"data.root={root}: no training annotations at {ann}; the synthetic dataset is "
            f"written on its own only at {DEFAULT_SYNTHETIC_ROOT}: pass data.generate=true to "
            "write it here, or fix data.root"
        )
    from psapose.data.synthetic import generate_synthetic_coco

    kwargs = OmegaConf.to_container(options, resolve=True) if options else {}
    return generate_synthetic_coco(Path(root).expanduser(), workers=2, **kwargs)
