"""Draw estimated poses on an image, a folder of images or a video, and write COCO results.

    # a trained run (config.yaml + checkpoints/best.pth), boxes from a detection-results file
    python tools/demo.py IMAGES_DIR --run RUN_DIR --detections dets.json --out demo_out
    # one image, one person box (x y w h), or the whole frame when no box is given
    python tools/demo.py photo.jpg --run RUN_DIR --box 120 40 180 420
    # a video; boxes from a torchvision Faster R-CNN whose weights are on disk
    python tools/demo.py clip.mp4 --run RUN_DIR --detector fasterrcnn_resnet50_fpn.pth
    # any checkpoint, with the config it was trained with given as Hydra overrides
    python tools/demo.py photo.jpg --checkpoint w32.pth --overrides experiment=hrnet_w32_psa_p_256x192

Out (``--out``): one ``<name>_poses.png`` per image (or ``<name>_poses.mp4`` for a
video) with the skeleton drawn from the dataset's keypoint YAML, and
``results.json`` in the COCO keypoint results format. A video also gets
``<name>_poses.csv``: the best-scoring animal or person of every frame in the
DeepLabCut / lightning-pose layout (scorer, bodyparts, x/y/likelihood rows), so
their analysis tools read it. Unreadable images in a folder are skipped and listed. Image ids come from the
annotation or image-info file given with ``--ann`` (matched by file name), else
from the digits of the file name (COCO's ``000000397133.jpg`` is 397133); video
frames are numbered from 0.

With ``--detections`` the people are the file's person boxes above
``--det-threshold``; their results are rescored and OKS-NMS'd as in
``tools/test.py``.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import re
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from psapose.api import PoseEstimator, Poses, as_boxes, image_paths, resolve_device
from psapose.cli import error_contract, exit_on_signals
from psapose.data.coco import read_json
from psapose.data.labels_csv import write_pose_csv
from psapose.data.transforms import ImageReadError, read_image
from psapose.evaluation import keypoint_results, write_results
from psapose.threads import ThreadPolicy
from psapose.visualize import draw_poses

log = logging.getLogger("demo")

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}
CHUNK = 8  # images or frames per estimate call: their crops share batches


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("input", help="an image, a folder of images, or a video file")
    model = parser.add_argument_group("model (one of --run or --checkpoint)")
    model.add_argument("--run", help="training run directory (config.yaml + checkpoints/)")
    model.add_argument("--checkpoint", help="checkpoint file; with --run, a file in the run")
    model.add_argument("--config", help="config YAML for --checkpoint (default: the one inside)")
    model.add_argument(
        "--overrides", nargs="+", default=[], help="Hydra overrides for --checkpoint"
    )
    boxes = parser.add_argument_group("person boxes (default: the whole frame)")
    boxes.add_argument("--detections", help="COCO detection-results JSON (image_id, bbox, score)")
    boxes.add_argument("--ann", help="COCO annotation or image-info JSON mapping file names to ids")
    boxes.add_argument(
        "--box", type=float, nargs=4, metavar=("X", "Y", "W", "H"), help="one box for every image"
    )
    boxes.add_argument("--detector", help="torchvision Faster R-CNN weights (.pth) on disk")
    boxes.add_argument("--det-threshold", type=float, default=0.3, help="minimum box score")
    parser.add_argument("--out", default="demo_out", help="output folder")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--threads", type=int, help="intra-op threads (default: the usable cores minus other "
        "processes' load, re-chosen as it changes)",
    )  # fmt: skip
    parser.add_argument("--no-flip", action="store_true", help="no flip test")
    parser.add_argument("--nms", choices=("oks", "soft", "none"), default="oks")
    parser.add_argument(
        "--kpt-threshold", type=float, default=0.3, help="draw keypoints scoring above this"
    )
    parser.add_argument("--no-images", action="store_true", help="write results.json only")
    parser.add_argument("--max-frames", type=int, default=0, help="video: stop after N frames")
    args = parser.parse_args(argv)
    if not args.run and not args.checkpoint:
        parser.error("give --run DIR or --checkpoint FILE")
    if sum(x is not None for x in (args.detections, args.box, args.detector)) > 1:
        parser.error("give at most one of --detections, --box and --detector")
    return args


def load_estimator(args: argparse.Namespace) -> PoseEstimator:
    options = {"device": args.device, "batch_size": args.batch_size, "flip_test": not args.no_flip}
    if args.run:
        return PoseEstimator.from_run(args.run, args.checkpoint or "best", **options)
    config = args.config or (args.overrides or None)
    return PoseEstimator.from_checkpoint(args.checkpoint, config, **options)


# ----------------------------------------------------------------------------- inputs


def image_ids(files: list[Path], ann: str | None) -> list[int]:
    """COCO image ids: from the annotation file's ``images`` by file name, else the name's digits."""
    by_name: dict[str, int] = {}
    if ann:
        data = read_json(ann)
        for i, record in enumerate(data.get("images", []) if isinstance(data, dict) else []):
            try:
                by_name[Path(record["file_name"]).name] = int(record["id"])
            except (KeyError, TypeError, ValueError) as err:
                raise DemoInputError(
                    f"{ann}: images[{i}]: needs 'file_name' and 'id' ({err})"
                ) from None
    ids = []
    for position, f in enumerate(files):
        if f.name in by_name:
            ids.append(by_name[f.name])
            continue
        if ann:
            raise DemoInputError(f"{ann}: no image record for {f.name}")
        digits = re.findall(r"\d+", f.stem)
        ids.append(int(digits[-1]) if digits else position)
    return ids


def detection_boxes(path: str, threshold: float) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Person boxes (xywh) and scores per image id from a COCO detection-results file."""
    data = read_json(path)
    if not isinstance(data, list):
        raise DemoInputError(f"{path}: expected a list of detections (COCO results format)")
    boxes: dict[int, list] = defaultdict(list)
    scores: dict[int, list] = defaultdict(list)
    for i, det in enumerate(data):
        try:
            if int(det.get("category_id", 1)) != 1 or float(det["score"]) < threshold:
                continue
            box = as_boxes(det["bbox"], where=f"{path}: detections[{i}].bbox")[0]
            boxes[int(det["image_id"])].append(box)
            scores[int(det["image_id"])].append(float(det["score"]))
        except (KeyError, TypeError, AttributeError) as err:
            raise DemoInputError(f"{path}: detections[{i}]: missing or bad field ({err})") from None
    return {k: (np.asarray(v), np.asarray(scores[k])) for k, v in boxes.items()}


class PersonDetector:
    """torchvision's Faster R-CNN (ResNet-50 FPN) from weights on disk; persons only.

    Optional: needs torchvision, which is imported here only.
    """

    def __init__(self, weights: str, device: str, threshold: float) -> None:
        try:
            from torchvision.models.detection import fasterrcnn_resnet50_fpn
        except Exception as err:  # not installed, or built for another torch
            raise DemoInputError(
                f"--detector needs torchvision matching your torch ({err}); "
                "use --detections FILE or --box X Y W H instead"
            ) from None

        from psapose.checkpoint import load_state_dict_file

        model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
        model.load_state_dict(load_state_dict_file(weights))
        self.device = resolve_device(device)
        self.model = model.eval().to(self.device)
        self.threshold = threshold

    def __call__(self, image_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        with torch.no_grad():
            x = torch.from_numpy(image_rgb).permute(2, 0, 1).float().div(255).to(self.device)
            out = self.model([x])[0]
        keep = (out["labels"] == 1) & (out["scores"] >= self.threshold)  # COCO person
        xyxy = out["boxes"][keep].cpu().numpy().astype(np.float64)
        return as_boxes(xyxy, "xyxy"), out["scores"][keep].cpu().numpy().astype(np.float64)


def frame_boxes(args: argparse.Namespace, detections: dict | None, detector: PersonDetector | None):
    """A function (image id, RGB image) -> (boxes or None for the whole frame, scores)."""

    def boxes_for(image_id: int, image: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        if detections is not None:
            return detections.get(image_id, (np.zeros((0, 4)), np.zeros(0)))
        if detector is not None:
            return detector(image)
        if args.box is not None:
            return np.asarray([args.box]), np.ones(1)
        return None, None

    return boxes_for


# ----------------------------------------------------------------------------- outputs


def draw(
    estimator: PoseEstimator, image: np.ndarray, people: list[dict], boxes, args
) -> np.ndarray:
    """The kept people (COCO results of this image) and all input boxes, as BGR for OpenCV."""
    k = estimator.spec.num_keypoints
    flat = np.asarray([r["keypoints"] for r in people], dtype=np.float64).reshape(-1, k, 3)
    drawn = draw_poses(
        image, flat[..., :2], flat[..., 2], estimator.spec, args.kpt_threshold, boxes
    )
    return cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR)


def results_of(estimator: PoseEstimator, poses: list[Poses], ids: list[int], nms: str) -> list:
    """Rescored, per-image OKS-NMS'd COCO results, as tools/test.py writes them."""
    kept = [(p, i) for p, i in zip(poses, ids, strict=True) if len(p)]
    if not kept:
        return []
    padded = [estimator.crop_boxes(p.boxes)[1] for p, _ in kept]
    return keypoint_results(
        np.concatenate([np.full(len(p), i) for p, i in kept]),
        np.concatenate([p.keypoints for p, _ in kept]),
        np.concatenate([p.scores for p, _ in kept]),
        np.concatenate([p.box_scores for p, _ in kept]),
        np.concatenate([s[:, 0] * s[:, 1] for s in padded]),
        estimator.spec.sigmas_array,
        nms=nms,
    )


def estimate_chunk(
    estimator: PoseEstimator, images: list[np.ndarray], ids: list[int], boxes_for, nms: str
) -> tuple[list[Poses], dict[int, list[dict]]]:
    """Poses of a few images (crops batched together) and their results per image id."""
    found = [boxes_for(i, image) for i, image in zip(ids, images, strict=True)]
    poses = estimator.estimate(images, [b for b, _ in found], [s for _, s in found])
    by_image: dict[int, list[dict]] = defaultdict(list)
    for result in results_of(estimator, poses, ids, nms):  # NMS is per image: chunks are exact
        by_image[result["image_id"]].append(result)
    return poses, by_image


def frames(path: Path, max_frames: int) -> Iterator[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise DemoInputError(f"{path}: cannot open the video")
    count = 0
    try:
        while not max_frames or count < max_frames:
            ok, frame = capture.read()
            if not ok:
                break
            count += 1
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
        capture.release()


def video_writer(path: Path, fps: float, size: tuple[int, int]) -> tuple[cv2.VideoWriter, Path]:
    for fourcc, suffix in (("mp4v", ".mp4"), ("MJPG", ".avi")):
        out = path.with_suffix(suffix)
        writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*fourcc), fps, size)
        if writer.isOpened():
            return writer, out
    raise DemoInputError(f"OpenCV cannot write a video here ({path}); use --no-images")


def run(args: argparse.Namespace) -> dict:
    source = Path(args.input)
    if not source.exists():
        raise DemoInputError(f"{source}: not found")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    threads = ThreadPolicy(args.threads)  # the cores this process may use, and their load
    threads.start("demo")
    estimator = load_estimator(args)
    detections = detection_boxes(args.detections, args.det_threshold) if args.detections else None
    detector = (
        PersonDetector(args.detector, args.device, args.det_threshold) if args.detector else None
    )
    boxes_for = frame_boxes(args, detections, detector)
    start = time.perf_counter()
    people, results, outputs, count = 0, [], [], 0
    unreadable: list[str] = []  # images skipped: one bad file must not cost the others
    tracks: list[np.ndarray] = []  # video: the best person of each frame, (K, 3)
    is_video = source.is_file() and source.suffix.lower() in VIDEO_SUFFIXES
    if is_video:
        capture = cv2.VideoCapture(str(source))
        fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
        capture.release()
        chunks = _chunks(frames(source, args.max_frames), CHUNK)
    else:
        files = image_paths(source)
        readable = _readable_images(files, image_ids(files, args.ann), unreadable)
        chunks = _chunks(readable, CHUNK)
    writer = None
    for chunk in chunks:
        if is_video:
            images, chunk_ids, names = chunk, list(range(count, count + len(chunk))), None
        else:
            names, chunk_ids, images = (list(column) for column in zip(*chunk, strict=True))
        threads.step()
        poses, by_image = estimate_chunk(estimator, images, chunk_ids, boxes_for, args.nms)
        for position, (image, p, image_id) in enumerate(zip(images, poses, chunk_ids, strict=True)):
            people += len(p)
            results += by_image.get(image_id, [])
            if is_video:
                tracks.append(
                    _best_person(by_image.get(image_id, []), estimator.spec.num_keypoints)
                )
            if args.no_images:
                continue
            drawn = draw(estimator, image, by_image.get(image_id, []), p.boxes, args)
            if is_video:
                if writer is None:
                    size = (image.shape[1], image.shape[0])
                    writer, path = video_writer(out_dir / f"{source.stem}_poses", fps, size)
                    outputs.append(str(path))
                writer.write(drawn)
            else:
                path = out_dir / f"{names[position].stem}_poses.png"
                if not cv2.imwrite(str(path), drawn):
                    raise OSError(errno.EIO, f"cannot write {path}", str(path))
                outputs.append(str(path))
        count += len(images)
    if writer is not None:
        writer.release()
    seconds = time.perf_counter() - start
    if not is_video and count == 0:
        raise DemoInputError(
            f"{source}: none of the {len(unreadable)} images could be read "
            f"(first: {unreadable[0] if unreadable else '-'})"
        )
    results_path = write_results(results, out_dir / "results.json")
    if is_video and tracks:
        # The single-animal layout DeepLabCut and lightning-pose analysis tools read.
        track = np.stack(tracks)
        csv_path = write_pose_csv(
            out_dir / f"{source.stem}_poses.csv", track[..., :2], track[..., 2],
            estimator.spec.keypoints, scorer="psapose",
        )  # fmt: skip
        outputs.append(str(csv_path))
    if unreadable:
        log.warning("%d unreadable images skipped", len(unreadable))
    summary = {
        "images": count,
        "unreadable": unreadable,
        "people": people,
        "results": len(results),
        "seconds": round(seconds, 3),
        "results_file": str(results_path),
        "outputs": outputs,
    }
    log.info(
        "%d %s, %d people (%d results after %s NMS) in %.2f s; results: %s",
        count, "frames" if is_video else "images", people, len(results), args.nms,
        seconds, results_path,
    )  # fmt: skip
    return summary


def _best_person(people: list[dict], num_keypoints: int) -> np.ndarray:
    """The highest-scoring result of a frame as (K, 3) x, y, score; NaN when none."""
    if not people:
        return np.full((num_keypoints, 3), np.nan)
    best = max(people, key=lambda r: r["score"])
    return np.asarray(best["keypoints"], dtype=np.float64).reshape(num_keypoints, 3)


def _readable_images(
    files: list[Path], ids: list[int], unreadable: list[str]
) -> Iterator[tuple[Path, int, np.ndarray]]:
    """(file, image id, RGB image) for every file that decodes; the others are reported."""
    for path, image_id in zip(files, ids, strict=True):
        try:
            yield path, image_id, read_image(path, "rgb")
        except ImageReadError as err:
            log.warning("skipping an unreadable image: %s", err)
            unreadable.append(str(err))


def _chunks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class DemoInputError(ValueError):
    """A bad demo input (path, annotation or detection file, video), named in one line."""


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    # One line and exit 2 for bad input (ValueErrors here are the API's checks of boxes
    # and folders), 4 for an unwritable output, 143 on SIGTERM: docs/reliability.md.
    with error_contract("demo", extra=(ValueError,)), exit_on_signals("demo"):
        summary = run(args)
    print(json.dumps(summary, indent=2))
    return 0
