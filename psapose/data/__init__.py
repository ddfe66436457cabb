"""Data: keypoint descriptions, COCO top-down datasets, transforms and the synthetic dataset."""

from psapose.data.keypoint_spec import KeypointSpec, KeypointSpecError, load_keypoint_spec

__all__ = ["KeypointSpec", "KeypointSpecError", "load_keypoint_spec"]
