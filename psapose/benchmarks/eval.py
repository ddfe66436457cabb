"""``eval`` benchmark: post-processing and scoring of a val2017-sized run, heatmaps to the AP table.

    python tools/benchmark.py eval                          # UDP (DARK-UDP decoding), full size
    python tools/benchmark.py eval --codec dark --json
    python tools/benchmark.py eval --images 50 --boxes 1000 # a small instance

The problem instance is built from ``--seed`` and is not timed: a COCO keypoint
ground truth with val2017's statistics (5,000 images, ~11,000 person annotations,
~6,350 with keypoints, some crowd), 104,125 detected person boxes (the size of
HRNet's val2017 detection file: several jittered boxes per person plus false
positives) and, per box, the flip-test heatmap pair a network could output
(Gaussians at the projected keypoints with jitter, a weaker distractor and noise;
low peaks for false positives). 104,125 x 17 x 64 x 48 float32 maps are 21.7 GB per
set, so they are generated ``--chunk`` boxes at a time and only their
post-processing is timed.

Two paths run on the same heatmaps, chunk by chunk, interleaved:

* fast: psapose as ``tools/test.py`` uses it: ``average_flip``, batched
  ``codec.decode``, ``crop_to_image``, ``keypoint_results`` (rescoring and
  vectorised OKS-NMS) and ``evaluate_keypoints`` (COCOeval, the 10-number table);
* reference: a per-instance NumPy loop in the style of the official HRNet code
  (``flip_back``, ``get_final_preds`` with the per-joint DARK / DARK-UDP / quarter-pixel
  step, ``transform_preds``, the rescoring loop of ``COCODataset.evaluate`` and
  ``oks_nms`` per image; the ports in ``psapose.evaluation.reference``) and stock pycocotools.

The two must give the same keypoints (the maximum difference is reported) and the
same 10 AP/AR numbers. ``--reference-fraction`` runs the reference on a
deterministic subset of the images and compares time per box.

``--device cuda`` runs the fast path where a GPU evaluation runs it: the heatmaps
are made on the GPU (as the model would leave them), flip averaging and decoding
run there batch by batch, the keypoints are copied to the host once at the end,
and the greedy OKS-NMS of all images runs on the GPU too (``--nms-device``; see
``psapose.evaluation.device``). The reference stays the per-instance NumPy loop::

    python tools/benchmark.py eval --device cuda --reference-fraction 0.02
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from psapose.codecs import DarkHeatmap, MSRAHeatmap, UDPHeatmap, average_flip
from psapose.data import load_keypoint_spec
from psapose.data.transforms import box_to_center_scale, crop_to_image
from psapose.evaluation import (
    COCO_SIGMAS,
    STAT_NAMES,
    evaluate_keypoints,
)
from psapose.evaluation.device import keypoint_results_on_device
from psapose.evaluation.reference import (
    REF_DECODERS,
    hrnet_flip_back,
    ref_cocoeval,
    ref_evaluate,
    ref_to_input,
    ref_transform_preds,
)

CODECS = {"udp": UDPHeatmap, "dark": DarkHeatmap, "msra": MSRAHeatmap}
STAGES = ("flip", "decode", "to_image", "rescore_nms", "cocoeval")
STAGE_LABELS = {
    "flip": "flip averaging",
    "decode": "decode (argmax + refinement)",
    "to_image": "crop -> image coordinates",
    "rescore_nms": "rescoring + OKS-NMS + results list",
    "cocoeval": "COCOeval (load, evaluate, accumulate, summarize)",
}
GOAL_SECONDS = 30.0
GOAL_RATIO = 5.0

# val2017: 5,000 images, 2,693 of them with people, 11,004 person annotations,
# 6,352 of them with labelled keypoints; HRNet's detection file has 104,125 boxes.
VAL2017 = {"images": 5000, "person_images": 2693, "people": 11004, "boxes": 104125}

# A standing person facing the camera, COCO-17 order, as fractions of its box (x, y).
# fmt: off
_POSE = np.array([
    [.50, .08], [.54, .06], [.46, .06], [.58, .07], [.42, .07], [.68, .20], [.32, .20],
    [.76, .36], [.24, .36], [.80, .50], [.20, .50], [.60, .53], [.40, .53], [.61, .75],
    [.39, .75], [.61, .96], [.39, .96],
])
# fmt: on
_IMAGE_SIZES = np.array(
    [
        [640, 480],
        [640, 427],
        [640, 426],
        [480, 640],
        [427, 640],
        [640, 424],
        [500, 375],
        [640, 360],
        [612, 612],
        [375, 500],
    ]
)  # fmt: skip
_IMAGE_SIZE_P = np.array([0.3, 0.2, 0.1, 0.1, 0.06, 0.06, 0.06, 0.05, 0.04, 0.03])


# ============================================================================ the instance
class Instance:
    """The ground truth (file), the detected boxes and the seed of their heatmaps."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        rng = np.random.default_rng(args.seed)
        self.seed = args.seed
        scale = args.images / VAL2017["images"]
        n_images = args.images
        n_people = max(1, round(VAL2017["people"] * scale))
        n_person_images = max(1, min(n_images, round(VAL2017["person_images"] * scale)))
        n_boxes = args.boxes if args.boxes else round(VAL2017["boxes"] * scale)
        sizes = _IMAGE_SIZES[rng.choice(len(_IMAGE_SIZES), n_images, p=_IMAGE_SIZE_P)]
        image_ids = np.sort(rng.choice(np.arange(1, 600_000), n_images, replace=False))
        # People per image: every person image gets one, the rest go preferentially to crowds.
        with_people = rng.choice(n_images, n_person_images, replace=False)
        extra = rng.choice(
            with_people, n_people - n_person_images, p=_weights(rng, n_person_images)
        )
        owner = np.concatenate((with_people, extra))
        pose, boxes, visible, crowd = self._people(rng, sizes[owner])
        self.gt_file = self._write_gt(workdir, image_ids, sizes, owner, boxes, pose, visible, crowd)
        self._detections(rng, n_boxes, sizes, owner, boxes, crowd)
        self.image_ids, self.sizes, self.pose = image_ids, sizes, pose
        self.num_people = n_people
        self.num_with_keypoints = int(((visible > 0).any(1) & ~crowd).sum())

    @staticmethod
    def _people(rng: np.random.Generator, image_sizes: np.ndarray) -> tuple:
        """Boxes, the true pose of every person (image pixels) and its annotation."""
        n = len(image_sizes)
        w_img, h_img = image_sizes[:, 0].astype(float), image_sizes[:, 1].astype(float)
        # sqrt(area) log-normal: ~40% small (< 32^2), ~30% medium, ~30% large, as COCO people.
        side = np.exp(rng.normal(np.log(45), 0.95, n))
        aspect = rng.uniform(0.3, 0.8, n)  # w / h
        h = np.minimum(side / np.sqrt(aspect), h_img * 0.98)
        w = np.minimum(h * aspect, w_img * 0.98)
        x = rng.uniform(0, w_img - w)
        y = rng.uniform(0, h_img - h)
        crowd = rng.random(n) < 0.015
        w[crowd], h[crowd] = np.minimum(w[crowd] * 4, w_img[crowd] - x[crowd]), h[crowd] * 1.5
        h = np.minimum(h, h_img - y)
        boxes = np.stack((x, y, w, h), axis=1)
        pose = _POSE[None] + rng.normal(0, 0.04, (n, 17, 2))
        mirror = rng.random(n) < 0.3  # people seen from behind
        pose[mirror, :, 0] = 1 - pose[mirror, :, 0]
        pose = pose * boxes[:, None, 2:] + boxes[:, None, :2]
        # Annotated: larger people are labelled more often (val2017: 6,352 of 11,004).
        labelled = (rng.random(n) < 1 / (1 + np.exp(-(np.sqrt(w * h) - 38) / 10))) & ~crowd
        visible = rng.choice([2, 1, 0], size=(n, 17), p=[0.72, 0.12, 0.16])
        inside = (pose >= 0).all(-1) & (pose[..., 0] < w_img[:, None]) & (pose[..., 1] < h_img[:, None])  # fmt: skip
        visible = np.where(inside & labelled[:, None], visible, 0)
        return pose, boxes, visible, crowd

    @staticmethod
    def _write_gt(workdir, image_ids, sizes, owner, boxes, keypoints, visible, crowd) -> Path:
        spec = load_keypoint_spec("coco")
        images = [
            {"id": int(i), "width": int(s[0]), "height": int(s[1]), "file_name": f"{i:012d}.jpg"}
            for i, s in zip(image_ids, sizes, strict=True)
        ]
        anns = []
        for a in range(len(owner)):
            kps = np.concatenate((np.round(keypoints[a], 2), visible[a][:, None]), axis=1)
            kps[visible[a] == 0] = 0
            x, y, w, h = (float(v) for v in np.round(boxes[a], 2))
            anns.append(
                {
                    "id": a + 1,
                    "image_id": int(image_ids[owner[a]]),
                    "category_id": 1,
                    "bbox": [x, y, w, h],
                    "area": round(w * h * 0.55, 2),
                    "iscrowd": int(crowd[a]),
                    "num_keypoints": int((visible[a] > 0).sum()),
                    "keypoints": kps.reshape(-1).tolist(),
                    "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
                }
            )
        categories = [{"id": 1, "name": "person", "supercategory": "person",
                       "keypoints": list(spec.keypoints), "skeleton": []}]  # fmt: skip
        gt = {"images": images, "annotations": anns, "categories": categories}
        path = workdir / "person_keypoints_val2017.json"
        path.write_text(json.dumps(gt))
        return path

    def _detections(self, rng, n_boxes, sizes, owner, boxes, crowd) -> None:
        """Several jittered boxes per person (as a detector gives) and false positives."""
        people = np.flatnonzero(~crowd)
        repeats = 1 + rng.poisson(3.0, len(people))
        source = np.repeat(people, repeats)[:n_boxes]
        first = np.r_[True, source[1:] != source[:-1]]
        b = boxes[source]
        centre = b[:, :2] + b[:, 2:] / 2 + rng.normal(0, 0.08, (len(source), 2)) * b[:, 2:]
        wh = b[:, 2:] * np.exp(rng.normal(0, 0.12, (len(source), 2)))
        true_boxes = np.concatenate((centre - wh / 2, wh), axis=1)
        true_scores = np.where(first, rng.uniform(0.6, 1.0, len(source)), rng.uniform(0.05, 0.9, len(source)))  # fmt: skip
        n_false = n_boxes - len(source)
        fp_image = rng.integers(0, len(sizes), n_false)
        fp_side = np.exp(rng.normal(np.log(40), 0.9, n_false))
        fp_wh = np.stack((fp_side * rng.uniform(0.4, 1.2, n_false), fp_side), axis=1)
        fp_xy = rng.uniform(0, 1, (n_false, 2)) * np.maximum(sizes[fp_image] - fp_wh, 1)
        fp_boxes = np.concatenate((fp_xy, fp_wh), axis=1)
        fp_scores = rng.beta(1.0, 6.0, n_false)
        image_index = np.concatenate((owner[source], fp_image))
        order = np.argsort(image_index, kind="stable")  # the detection file is sorted by image
        self.det_image = image_index[order]
        self.det_boxes = np.concatenate((true_boxes, fp_boxes))[order]
        self.det_scores = np.concatenate((true_scores, fp_scores))[order]
        self.det_person = np.concatenate((source, np.full(n_false, -1)))[order]

    def __len__(self) -> int:
        return len(self.det_boxes)

    def heatmaps(
        self,
        rows: np.ndarray,
        codec,
        centers: np.ndarray,
        scales: np.ndarray,
        flip_indices,
        device: torch.device | str = "cpu",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The (original, flipped-image) heatmaps of boxes ``rows``, deterministic per chunk.

        The random draws are the same on every device; the maps are built on ``device``
        (a GPU makes them where its model would, without a 2 x 21.7 GB copy).
        """
        rng = np.random.default_rng([self.seed, int(rows[0]), len(rows)])
        n, k = len(rows), 17
        (h_hm, w_hm), (h_in, w_in) = codec.heatmap_size, codec.input_size
        person = self.det_person[rows]
        real = person >= 0
        # True pose in image pixels; false positives get a pose squeezed into their box.
        box = self.det_boxes[rows]
        fake = (_POSE[None] + rng.normal(0, 0.15, (n, k, 2))) * box[:, None, 2:] + box[:, None, :2]
        image_xy = np.where(real[:, None, None], self.pose[np.maximum(person, 0)], fake)
        # Image -> crop (input) pixels: the inverse of crop_to_image.
        c, s = centers[:, None], scales[:, None]
        if codec.use_udp:
            size = np.array([w_in - 1.0, h_in - 1.0])
            crop = (image_xy - c) * (size / s) + size / 2
        else:
            crop = (image_xy - c) * (w_in / s[..., :1]) + np.array([w_in, h_in]) / 2
        hm_xy = codec.to_heatmap(torch.from_numpy(crop)).numpy()
        peak = np.where(
            real[:, None], rng.uniform(0.45, 0.95, (n, k)), rng.uniform(0.02, 0.3, (n, k))
        )
        sigma = codec.sigma if hasattr(codec, "sigma") else 2.0

        def one_set(xy: np.ndarray, amp: np.ndarray) -> torch.Tensor:
            jitter = rng.normal(0, 0.7, (n, k, 2))
            distractor = xy[:, rng.permutation(k)] + rng.normal(0, 2.0, (n, k, 2))
            centres = np.stack((xy + jitter, distractor), axis=2)  # (n, k, 2 peaks, 2)
            amps = np.stack((amp, amp * rng.uniform(0, 0.45, (n, k))), axis=2)
            widths = sigma * rng.uniform(0.9, 1.35, (n, k, 2))
            gx = _profile(w_hm, centres[..., 0], widths).to(device)
            gy = _profile(h_hm, centres[..., 1], widths) * torch.from_numpy(amps).float()[..., None]
            maps = torch.einsum("nkph,nkpw->nkhw", gy.to(device), gx)
            noise = _noise_bank(device)[torch.from_numpy(rng.integers(0, 256, (n, k))).to(device)]
            level = torch.from_numpy(rng.uniform(0.005, 0.03, (n, k, 1, 1))).float()
            maps.addcmul_(noise, level.to(device))
            return maps

        original = one_set(hm_xy, peak)
        # The flipped image: mirrored positions (one more pixel with HRNet's flip shift, which
        # flip_back undoes), channels in flipped order; its own jitter and noise.
        mirrored = hm_xy.copy()
        mirrored[..., 0] = (w_hm if codec.flip_shift else w_hm - 1) - mirrored[..., 0]
        flipped = one_set(mirrored[:, flip_indices], peak[:, flip_indices] * rng.uniform(0.9, 1.1, (n, k)))  # fmt: skip
        return original, flipped


def _weights(rng: np.random.Generator, n: int) -> np.ndarray:
    w = rng.pareto(1.5, n) + 0.2
    return w / w.sum()


def _profile(n: int, centre: np.ndarray, width: np.ndarray) -> torch.Tensor:
    pixels = np.arange(n, dtype=np.float64)
    d = pixels - centre[..., None]
    return torch.from_numpy(np.exp(-(d * d) / (2 * width[..., None] ** 2))).float()


_NOISE: dict[str, torch.Tensor] = {}


def _noise_bank(device: torch.device | str = "cpu") -> torch.Tensor:
    """256 smooth noise maps (64x48 scale, zero mean, unit-ish amplitude), built once per device."""
    key = str(torch.device(device))
    if "cpu" not in _NOISE:
        rng = np.random.default_rng(12345)
        raw = rng.normal(0, 1, (256, 64, 48)).astype(np.float32)
        smooth = np.stack([cv2.GaussianBlur(m, (5, 5), 0) for m in raw]) * 2.0
        _NOISE["cpu"] = torch.from_numpy(smooth)
    if key not in _NOISE:
        _NOISE[key] = _NOISE["cpu"].to(device)
    return _NOISE[key]


# ============================================================================ the benchmark
def run_eval(args: argparse.Namespace) -> dict:
    """Build the instance, run both paths chunk by chunk and compare them (see the module doc)."""
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    device = torch.device(args.device)
    nms_device = _nms_device(args)
    spec = load_keypoint_spec("coco")
    flip_indices = np.asarray(spec.flip_indices)
    flip_pairs = [(a, b) for a, b in enumerate(flip_indices) if a < b]
    codec = CODECS[args.codec](input_size=tuple(args.input_size))
    kernel = getattr(codec, "blur_kernel", 0)
    ref_decode = REF_DECODERS[args.codec]
    udp = codec.use_udp
    h_in, w_in = codec.input_size
    fast = dict.fromkeys(STAGES, 0.0)
    ref = dict.fromkeys(STAGES, 0.0)
    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
        start = time.perf_counter()
        inst = Instance(args, Path(tmp))
        n = len(inst)
        centers, scales = box_to_center_scale(inst.det_boxes, w_in / h_in)
        areas = scales[:, 0] * scales[:, 1]
        image_ids = inst.image_ids[inst.det_image]
        # The reference's share: a deterministic subset of the images (all by default).
        chosen = np.random.default_rng(args.seed + 1).random(len(inst.image_ids)) < args.reference_fraction  # fmt: skip
        in_reference = chosen[inst.det_image]
        # Decoded keypoints stay where they were decoded until the last batch: no host copy
        # (and no wait for the device) per batch.
        decoded_kps = torch.empty((n, 17, 2), device=device)
        decoded_scores = torch.empty((n, 17), device=device)
        ref_preds = np.zeros((n, 17, 3))
        generate = time.perf_counter() - start
        for s in range(0, n, args.chunk):
            rows = np.arange(s, min(n, s + args.chunk))
            t0 = time.perf_counter()
            original, flipped = inst.heatmaps(
                rows, codec, centers[rows], scales[rows], flip_indices, device
            )
            _sync(device)
            generate += time.perf_counter() - t0
            # --- fast: what psapose.engine.inference.predict does after the model, batch by batch
            for b in range(0, len(rows), args.batch_size):
                batch = rows[b : b + args.batch_size]
                t0 = time.perf_counter()
                heatmaps = average_flip(
                    original[b : b + args.batch_size], flipped[b : b + args.batch_size],
                    flip_indices, codec,
                )  # fmt: skip
                _sync(device)
                t1 = time.perf_counter()
                keypoints, scores = codec.decode(heatmaps)
                _sync(device)
                t2 = time.perf_counter()
                decoded_kps[batch[0] : batch[-1] + 1] = keypoints
                decoded_scores[batch[0] : batch[-1] + 1] = scores
                _sync(device)
                t3 = time.perf_counter()
                fast["flip"] += t1 - t0
                fast["decode"] += t2 - t1
                fast["to_image"] += t3 - t2
            del heatmaps, keypoints, scores
            # --- reference: one instance at a time, as HRNet's validate()
            chosen_rows = rows[in_reference[rows]]
            local = chosen_rows - s
            if len(chosen_rows) == len(rows):  # the whole chunk (no copy on the CPU)
                original_np, flipped_np = original.cpu().numpy(), flipped.cpu().numpy()
            else:  # only the reference's rows come to the host
                index = torch.from_numpy(local).to(device)
                original_np = original[index].cpu().numpy()
                flipped_np = flipped[index].cpu().numpy()
                local = np.arange(len(local))
            hm_size, in_size = codec.heatmap_size[::-1], codec.input_size[::-1]
            for i, j in zip(chosen_rows, local, strict=True):
                t0 = time.perf_counter()
                back = hrnet_flip_back(flipped_np[j][None], flip_pairs, codec.flip_shift)[0]
                avg = (original_np[j] + back) * 0.5
                t1 = time.perf_counter()
                coords, maxvals = ref_decode(avg, kernel)
                t2 = time.perf_counter()
                ref_preds[i, :, :2] = ref_transform_preds(
                    ref_to_input(coords, in_size, hm_size, udp), centers[i], scales[i], in_size, udp
                )
                ref_preds[i, :, 2] = maxvals
                t3 = time.perf_counter()
                ref["flip"] += t1 - t0
                ref["decode"] += t2 - t1
                ref["to_image"] += t3 - t2
            del original, flipped, original_np, flipped_np
            if args.progress:
                print(f"  {rows[-1] + 1}/{n} boxes", file=sys.stderr, flush=True)
        # One copy to the host, then crop_to_image over all boxes at once (row by row the
        # same arithmetic as per batch).
        t0 = time.perf_counter()
        fast_kps = crop_to_image(
            decoded_kps.double().cpu().numpy(), centers, scales, codec.input_size, udp
        )
        fast_scores = decoded_scores.cpu().numpy()
        fast["to_image"] += time.perf_counter() - t0
        del decoded_kps, decoded_scores
        # --- fast: rescoring, OKS-NMS, COCOeval
        t0 = time.perf_counter()
        results = keypoint_results_on_device(
            image_ids, fast_kps, fast_scores, inst.det_scores, areas, COCO_SIGMAS, device=nms_device
        )
        t1 = time.perf_counter()
        fast_stats = evaluate_keypoints(inst.gt_file, results)
        t2 = time.perf_counter()
        fast["rescore_nms"], fast["cocoeval"] = t1 - t0, t2 - t1
        # --- the same on the reference's rows: fast again (for the comparison) and reference
        ref_rows = np.flatnonzero(in_reference)
        subset = args.reference_fraction < 1
        if subset:
            sub_results = keypoint_results_on_device(
                image_ids[ref_rows], fast_kps[ref_rows], fast_scores[ref_rows],
                inst.det_scores[ref_rows], areas[ref_rows], COCO_SIGMAS, device=nms_device,
            )  # fmt: skip
            sub_ids = sorted({int(i) for i in inst.image_ids[chosen]})
            fast_sub_stats = evaluate_keypoints(inst.gt_file, sub_results, image_ids=sub_ids)
        else:
            sub_results, fast_sub_stats = results, fast_stats
        t0 = time.perf_counter()
        ref_results = ref_evaluate(
            ref_preds[ref_rows], areas[ref_rows], inst.det_scores[ref_rows], image_ids[ref_rows],
            COCO_SIGMAS, score_dtype=np.float32,  # HRNet sums float32 scores
        )  # fmt: skip
        t1 = time.perf_counter()
        ref_stats = _ref_stats(
            inst.gt_file, ref_results, inst.image_ids[chosen] if subset else None
        )
        t2 = time.perf_counter()
        ref["rescore_nms"], ref["cocoeval"] = t1 - t0, t2 - t1
    # Keypoints and results compared on the reference's rows.
    kp_diff = float(np.abs(fast_kps[ref_rows] - ref_preds[ref_rows, :, :2]).max()) if len(ref_rows) else 0.0  # fmt: skip
    score_diff = float(np.abs(fast_scores[ref_rows] - ref_preds[ref_rows, :, 2]).max()) if len(ref_rows) else 0.0  # fmt: skip
    same_results = _same_results(sub_results, ref_results)
    fast_total = sum(fast.values())
    ref_total = sum(ref.values())
    fraction = len(ref_rows) / n
    # Per box, so that a reference run on a subset compares with the full fast run.
    ratio = (
        (ref_total / max(len(ref_rows), 1)) / (fast_total / n) if len(ref_rows) else float("nan")
    )
    return {
        "benchmark": "eval",
        "codec": args.codec,
        "decode": {"udp": "DARK-UDP", "dark": "DARK", "msra": "quarter pixel"}[args.codec],
        "input_size": list(codec.input_size),
        "heatmap_size": list(codec.heatmap_size),
        "images": len(inst.image_ids),
        "people": inst.num_people,
        "people_with_keypoints": inst.num_with_keypoints,
        "boxes": n,
        "results_after_nms": len(results),
        "chunk": args.chunk,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "nms_device": str(nms_device) if nms_device is not None else "numpy",
        "seed": args.seed,
        "generate_s": round(generate, 2),
        "fast_s": {k: round(v, 3) for k, v in fast.items()},
        "fast_total_s": round(fast_total, 3),
        "reference_fraction": round(fraction, 4),
        "reference_boxes": len(ref_rows),
        "reference_s": {k: round(v, 3) for k, v in ref.items()},
        "reference_total_s": round(ref_total, 3),
        "reference_total_full_size_s": round(ref_total / fraction, 1) if fraction else None,
        "ratio": round(ratio, 2),
        "goal_total_s": GOAL_SECONDS,
        "goal_ratio": GOAL_RATIO,
        "goal_total_met": fast_total <= GOAL_SECONDS * n / VAL2017["boxes"],
        "goal_ratio_met": ratio >= GOAL_RATIO,
        "max_keypoint_diff_px": kp_diff,
        "max_score_diff": score_diff,
        "same_results": same_results,
        "stats": fast_stats,
        "stats_on_reference_images": fast_sub_stats,
        "reference_stats": ref_stats,
        "same_ap": all(fast_sub_stats[k] == ref_stats[k] for k in STAT_NAMES),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "torch": torch.__version__,
        "numpy": np.__version__,
    }


def _sync(device: torch.device) -> None:
    # Stage times on a GPU need the queued kernels finished (one sync per stage and batch).
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _nms_device(args: argparse.Namespace) -> torch.device | None:
    """Where the greedy OKS-NMS runs: None for NumPy (``--nms-device numpy``)."""
    choice = args.nms_device
    if choice == "auto":
        choice = "numpy" if torch.device(args.device).type == "cpu" else args.device
    return None if choice == "numpy" else torch.device(choice)


def _ref_stats(gt_file: Path, results: list[dict], image_ids) -> dict[str, float]:
    if image_ids is None:
        return ref_cocoeval(gt_file, results)
    # A subset: stock COCOeval restricted to the subset's images.
    return evaluate_keypoints(gt_file, results, image_ids=[int(i) for i in image_ids])


def _same_results(a: list[dict], b: list[dict]) -> dict:
    """Whether two results lists keep the same people in the same order, and their score gap."""
    same = len(a) == len(b) and all(
        x["image_id"] == y["image_id"] for x, y in zip(a, b, strict=True)
    )
    gap = 0.0
    if same and a:
        sa = np.array([r["score"] for r in a])
        sb = np.array([r["score"] for r in b])
        ka = np.array([r["keypoints"] for r in a])
        kb = np.array([r["keypoints"] for r in b])
        gap = float(max(np.abs(sa - sb).max(), np.abs(ka - kb).max()))
    return {"same_people_and_order": bool(same), "max_value_diff": gap, "count": [len(a), len(b)]}


def print_eval(result: dict) -> None:
    (h, w), (hh, hw) = result["input_size"], result["heatmap_size"]
    where = result["gpu"] or result["device"]
    print(
        f"eval post-processing, {result['images']} images, {result['people']} people "
        f"({result['people_with_keypoints']} with keypoints), {result['boxes']} boxes, "
        f"flip test, {h}x{w} input, 17x{hh}x{hw} heatmaps, codec {result['codec']} "
        f"({result['decode']}), {result['threads']} threads; fast path on {where}, OKS-NMS "
        f"on {result['nms_device']}; heatmaps generated in {result['generate_s']:.1f} s (not timed)"
    )
    frac = result["reference_fraction"]
    ref_head = "reference (s)" if frac == 1 else f"reference, {frac:.0%} (s)"
    print(f"{'stage':<52}{'fast (s)':>10}{ref_head:>22}")
    for key in STAGES:
        print(f"{STAGE_LABELS[key]:<52}{result['fast_s'][key]:>10.2f}{result['reference_s'][key]:>22.2f}")  # fmt: skip
    print(f"{'total':<52}{result['fast_total_s']:>10.2f}{result['reference_total_s']:>22.2f}")
    if frac < 1:
        print(f"{'reference, scaled to all boxes':<52}{'':>10}{result['reference_total_full_size_s']:>22.1f}")  # fmt: skip
    goal = GOAL_SECONDS * result["boxes"] / VAL2017["boxes"]
    print(
        f"fast total {result['fast_total_s']:.2f} s, goal <= {goal:.1f} s: "
        f"{'met' if result['goal_total_met'] else 'NOT met'} ({result['fast_total_s'] / goal:.2f} of it)"
    )
    print(
        f"reference / fast (per box) = {result['ratio']:.2f}x, goal >= {GOAL_RATIO:.0f}x: "
        f"{'met' if result['goal_ratio_met'] else 'NOT met'}"
    )
    same = result["same_results"]
    print(
        f"max keypoint difference {result['max_keypoint_diff_px']:.2e} px, scores "
        f"{result['max_score_diff']:.1e}; results lists: same people and order "
        f"{same['same_people_and_order']} ({same['count'][0]} / {same['count'][1]}), "
        f"max value diff {same['max_value_diff']:.1e}; all 10 stats equal: {result['same_ap']}"
    )
    names = STAT_NAMES
    print("  ".join(f"{k:>6}" for k in ("", *names)))
    print("  ".join([f"{'fast':>6}", *(f"{result['stats_on_reference_images'][k]:>6.4f}" for k in names)]))  # fmt: skip
    print("  ".join([f"{'ref':>6}", *(f"{result['reference_stats'][k]:>6.4f}" for k in names)]))
    print(f"load average {result['load_average']}")


def register(subparsers) -> None:
    """Add the ``eval`` sub-command to ``tools/benchmark.py``."""
    p = subparsers.add_parser(
        "eval", help="post-processing and COCOeval of a val2017-sized run vs a per-instance loop"
    )
    p.add_argument("--codec", choices=sorted(CODECS), default="udp")
    p.add_argument("--input-size", type=int, nargs=2, default=[256, 192], metavar=("H", "W"))
    p.add_argument("--images", type=int, default=VAL2017["images"])
    p.add_argument("--boxes", type=int, default=0, help="detected boxes; default val2017's 104,125 scaled by --images")  # fmt: skip
    p.add_argument("--chunk", type=int, default=2048, help="boxes per generated heatmap chunk")
    p.add_argument("--batch-size", type=int, default=64, help="boxes per decode (eval.batch_size)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--device",
        default="cpu",
        help="where the heatmaps are made and the fast path's flip averaging and decoding run "
        "(cuda: on the GPU, the keypoints copied to the host once at the end)",
    )
    p.add_argument(
        "--nms-device",
        default="auto",
        help="where the greedy OKS-NMS runs: numpy, or a torch device (default: --device, "
        "numpy for cpu)",
    )
    p.add_argument("--reference-fraction", type=float, default=1.0,
                   help="run the reference on this share of the images (compared per box)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action="store_true", help="print progress to stderr")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run_eval, print_table=print_eval)
