"""Evaluation back end: OKS-NMS, COCO keypoint results and their pycocotools evaluation.

Pure NumPy and pycocotools (no model, no torch); pixel errors (EPE, PCK) beside AP. HRNet's ``evaluate`` path on arrays::

    results = keypoint_results(image_ids, keypoints, keypoint_scores, box_scores, areas, sigmas)
    stats = evaluate_keypoints("person_keypoints_val2017.json", results)
    print(format_table(stats))
"""

from .coco_eval import (
    STAT_NAMES,
    ResultArrays,
    evaluate_keypoints,
    format_table,
    ground_truth_results,
    keypoint_results,
    load_results,
    rescore,
    results_to_arrays,
    test_dev_file_name,
    write_results,
    write_test_dev_results,
)
from .nms import (
    COCO_SIGMAS,
    group_by_image,
    nms_per_image,
    oks_iou,
    oks_matrix,
    oks_nms,
    resolve_sigmas,
    soft_oks_nms,
)
from .pixel_metrics import (
    PixelMetrics,
    PixelMetricsError,
    evaluate_pixel_metrics,
    format_pixel_table,
    lower_is_better,
    pixel_metrics,
)

__all__ = [
    "COCO_SIGMAS",
    "STAT_NAMES",
    "PixelMetrics",
    "PixelMetricsError",
    "ResultArrays",
    "evaluate_keypoints",
    "evaluate_pixel_metrics",
    "format_pixel_table",
    "format_table",
    "ground_truth_results",
    "group_by_image",
    "keypoint_results",
    "load_results",
    "lower_is_better",
    "nms_per_image",
    "oks_iou",
    "oks_matrix",
    "oks_nms",
    "pixel_metrics",
    "rescore",
    "resolve_sigmas",
    "results_to_arrays",
    "soft_oks_nms",
    "test_dev_file_name",
    "write_results",
    "write_test_dev_results",
]
