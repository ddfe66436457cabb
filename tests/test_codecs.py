"""Heatmap codecs against per-instance NumPy ports of the reference code.

The ports restate, loop for loop, official HRNet (leoxiaobin/deep-high-resolution-net.pytorch:
``JointsDataset.generate_target``, ``inference.get_max_preds`` / ``get_final_preds``), DarkPose
(ilovepose/DarkPose ``inference.taylor``) and mmpose (``generate_unbiased_gaussian_heatmaps``,
``generate_udp_gaussian_heatmaps``, ``gaussian_blur``, ``refine_keypoints_dark_udp``,
``UDPHeatmap.decode``), with cv2 doing the blurs. The UDP combined target follows the
brief (offsets over the whole map, as UDP-Pose; kept when the rounded position is in the map).
The decoding and flip ports the evaluation benchmark shares (HRNet ``get_max_preds`` /
``get_final_preds`` / ``flip_back``, DarkPose ``get_final_preds``, the float64 blur) live in
``psapose.evaluation.reference``; the encoding and mmpose-only ones are below.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from psapose.codecs import (
    DarkHeatmap,
    HeatmapCodec,
    MSRAHeatmap,
    UDPCombined,
    UDPHeatmap,
    average_flip,
    flip_heatmaps,
    flip_keypoints,
    gaussian_blur,
    gaussian_kernel1d,
    heatmap_argmax,
    ops,
)
from psapose.codecs import msra as msra_module
from psapose.codecs import udp as udp_module
from psapose.config import compose_config
from psapose.data.keypoint_spec import load_keypoint_spec
from psapose.evaluation.reference import (
    darkpose_final_preds,
    gaussian_blur_f64,
    get_max_preds,
    hrnet_final_preds,
    hrnet_flip_back,
)

CODEC_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "codec"
FLIP = load_keypoint_spec("coco").flip_indices
SIZES = [(256, 192), (384, 288)]  # heatmaps 64x48 (sigma 2) and 96x72 (sigma 3)


# ---------------------------------------------------------------------------- reference ports
def hrnet_generate_target(joints, joints_vis, image_size, heatmap_size, sigma):
    """HRNet JointsDataset.generate_target ('gaussian'); sizes as [W, H] arrays."""
    num_joints = len(joints)
    target_weight = np.ones((num_joints, 1), dtype=np.float32)
    target_weight[:, 0] = joints_vis
    target = np.zeros((num_joints, heatmap_size[1], heatmap_size[0]), dtype=np.float32)
    tmp_size = sigma * 3
    for joint_id in range(num_joints):
        feat_stride = image_size / heatmap_size
        mu_x = int(joints[joint_id][0] / feat_stride[0] + 0.5)
        mu_y = int(joints[joint_id][1] / feat_stride[1] + 0.5)
        ul = [int(mu_x - tmp_size), int(mu_y - tmp_size)]
        br = [int(mu_x + tmp_size + 1), int(mu_y + tmp_size + 1)]
        if ul[0] >= heatmap_size[0] or ul[1] >= heatmap_size[1] or br[0] < 0 or br[1] < 0:
            target_weight[joint_id] = 0
            continue
        size = 2 * tmp_size + 1
        x = np.arange(0, size, 1, np.float32)
        y = x[:, np.newaxis]
        x0 = y0 = size // 2
        g = np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * sigma**2))
        g_x = max(0, -ul[0]), min(br[0], heatmap_size[0]) - ul[0]
        g_y = max(0, -ul[1]), min(br[1], heatmap_size[1]) - ul[1]
        img_x = max(0, ul[0]), min(br[0], heatmap_size[0])
        img_y = max(0, ul[1]), min(br[1], heatmap_size[1])
        if target_weight[joint_id] > 0.5:
            target[joint_id][img_y[0] : img_y[1], img_x[0] : img_x[1]] = g[
                g_y[0] : g_y[1], g_x[0] : g_x[1]
            ]
    return target, target_weight[:, 0]


def mmpose_unbiased_gaussian(heatmap_size, keypoints, visible, sigma):
    """mmpose generate_unbiased_gaussian_heatmaps, one instance; keypoints in heatmap pixels."""
    W, H = heatmap_size
    heatmaps = np.zeros((len(keypoints), H, W), dtype=np.float32)
    weights = visible.astype(np.float32).copy()
    radius = sigma * 3
    x = np.arange(0, W, 1, dtype=np.float32)
    y = np.arange(0, H, 1, dtype=np.float32)[:, None]
    for k in range(len(keypoints)):
        if visible[k] < 0.5:
            continue
        mu = keypoints[k]
        left, top = mu - radius
        right, bottom = mu + radius + 1
        if left >= W or top >= H or right < 0 or bottom < 0:
            weights[k] = 0
            continue
        gaussian = np.exp(-((x - mu[0]) ** 2 + (y - mu[1]) ** 2) / (2 * sigma**2))
        np.maximum(gaussian, heatmaps[k], out=heatmaps[k])
    return heatmaps, weights


def mmpose_udp_gaussian(heatmap_size, keypoints, visible, sigma):
    """mmpose generate_udp_gaussian_heatmaps, one instance; keypoints in heatmap pixels."""
    W, H = heatmap_size
    heatmaps = np.zeros((len(keypoints), H, W), dtype=np.float32)
    weights = visible.astype(np.float32).copy()
    radius = sigma * 3
    gaussian_size = 2 * radius + 1
    x = np.arange(0, gaussian_size, 1, dtype=np.float32)
    y = x[:, None]
    for k in range(len(keypoints)):
        if visible[k] < 0.5:
            continue
        mu = (keypoints[k] + 0.5).astype(np.int64)
        left, top = (mu - radius).astype(np.int64)
        right, bottom = (mu + radius + 1).astype(np.int64)
        if left >= W or top >= H or right < 0 or bottom < 0:
            weights[k] = 0
            continue
        mu_ac = keypoints[k]
        x0 = y0 = gaussian_size // 2
        x0 += mu_ac[0] - mu[0]
        y0 += mu_ac[1] - mu[1]
        gaussian = np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * sigma**2))
        g_x1, g_x2 = max(0, -left), min(W, right) - left
        g_y1, g_y2 = max(0, -top), min(H, bottom) - top
        h_x1, h_x2 = max(0, left), min(W, right)
        h_y1, h_y2 = max(0, top), min(H, bottom)
        region = heatmaps[k, h_y1:h_y2, h_x1:h_x2]
        np.maximum(region, gaussian[g_y1:g_y2, g_x1:g_x2], out=region)
    return heatmaps, weights


def udp_combined_target(heatmap_size, keypoints, visible, radius):
    """UDP-Pose style combined target (the brief's rule), one instance; heatmap pixels."""
    W, H = heatmap_size
    K = len(keypoints)
    target = np.zeros((K, 3, H * W), dtype=np.float32)
    weights = np.zeros(K, dtype=np.float32)
    feat_x_int, feat_y_int = np.meshgrid(np.arange(0, W), np.arange(0, H))
    feat_x_int, feat_y_int = feat_x_int.reshape(-1), feat_y_int.reshape(-1)
    for k in range(K):
        mu_x, mu_y = keypoints[k]
        if visible[k] <= 0 or not (0 <= int(mu_x + 0.5) < W and 0 <= int(mu_y + 0.5) < H):
            continue
        weights[k] = 1
        x_offset = (mu_x - feat_x_int) / radius
        y_offset = (mu_y - feat_y_int) / radius
        keep_pos = np.where(x_offset**2 + y_offset**2 <= 1)[0]
        target[k, 0, keep_pos] = 1
        target[k, 1] = x_offset
        target[k, 2] = y_offset
    return target.reshape(K * 3, H, W), weights


def get_heatmap_maximum(heatmaps):
    """mmpose get_heatmap_maximum for (K, H, W)."""
    K, H, W = heatmaps.shape
    flat = heatmaps.reshape(K, -1)
    y_locs, x_locs = np.unravel_index(np.argmax(flat, axis=1), shape=(H, W))
    locs = np.stack((x_locs, y_locs), axis=-1).astype(np.float32)
    vals = np.amax(flat, axis=1)
    locs[vals <= 0.0] = -1
    return locs, vals


def mmpose_udp_decode(heatmaps, kernel):
    """mmpose UDPHeatmap.decode ('gaussian') in heatmap pixels, one instance."""
    keypoints, scores = get_heatmap_maximum(heatmaps)
    keypoints = keypoints[None]
    K, H, W = heatmaps.shape
    hm = gaussian_blur_f64(heatmaps, kernel)
    np.clip(hm, 1e-3, 50.0, hm)
    np.log(hm, hm)
    hm_pad = np.pad(hm, ((0, 0), (1, 1), (1, 1)), mode="edge").flatten()
    index = keypoints[0, :, 0] + 1 + (keypoints[0, :, 1] + 1) * (W + 2)
    index += (W + 2) * (H + 2) * np.arange(0, K)
    index = index.astype(int).reshape(-1, 1)
    i_ = hm_pad[index]
    ix1 = hm_pad[index + 1]
    iy1 = hm_pad[index + W + 2]
    ix1y1 = hm_pad[index + W + 3]
    ix1_y1_ = hm_pad[index - W - 3]
    ix1_ = hm_pad[index - 1]
    iy1_ = hm_pad[index - 2 - W]
    dx = 0.5 * (ix1 - ix1_)
    dy = 0.5 * (iy1 - iy1_)
    derivative = np.concatenate([dx, dy], axis=1).reshape(K, 2, 1)
    dxx = ix1 - 2 * i_ + ix1_
    dyy = iy1 - 2 * i_ + iy1_
    dxy = 0.5 * (ix1y1 - ix1 - iy1 + i_ + i_ - ix1_ - iy1_ + ix1_y1_)
    hessian = np.concatenate([dxx, dxy, dxy, dyy], axis=1).reshape(K, 2, 2)
    hessian = np.linalg.inv(hessian + np.finfo(np.float32).eps * np.eye(2))
    keypoints[0] -= np.einsum("imn,ink->imk", hessian, derivative).squeeze(-1)
    return keypoints[0], scores


def mmpose_combined_decode(heatmaps, radius, blur_kernel=23, offset_blur_kernel=None):
    """mmpose UDPHeatmap.decode ('combined') in heatmap pixels, one instance."""
    heatmaps = heatmaps.copy()
    _K, H, W = heatmaps.shape
    K = _K // 3
    for k in range(_K):
        ks = blur_kernel if k % 3 == 0 else offset_blur_kernel
        if ks is not None:
            cv2.GaussianBlur(heatmaps[k], (ks, ks), 0, heatmaps[k])
    x_offset = heatmaps[1::3].flatten() * radius
    y_offset = heatmaps[2::3].flatten() * radius
    keypoints, scores = get_heatmap_maximum(heatmaps[::3])
    index = (keypoints[..., 0] + keypoints[..., 1] * W).flatten()
    index += W * H * np.arange(0, K)
    index = index.astype(int)
    keypoints += np.stack((x_offset[index], y_offset[index]), axis=-1)
    return keypoints, scores


# ---------------------------------------------------------------------------- helpers
def random_keypoints(rng, n, k, input_size, margin):
    """Input-pixel keypoints spread from ``margin`` px outside the image to as far inside."""
    h, w = input_size
    lo, hi = -margin, np.array([w - 1 + margin, h - 1 + margin])
    kp = rng.uniform(lo, hi, size=(n, k, 2)).astype(np.float32)
    vis = (rng.random((n, k)) > 0.15).astype(np.float32)
    return kp, vis


def keypoints_inside(rng, codec, n, k, margin):
    """Random sub-pixel keypoints at least ``margin`` heatmap px inside, in input pixels."""
    hh, wh = codec.heatmap_size
    kp_hm = rng.uniform([margin, margin], [wh - 1 - margin, hh - 1 - margin], size=(n, k, 2))
    return codec.to_input(torch.from_numpy(kp_hm))


def np_(t):
    return t.detach().cpu().numpy()


# ---------------------------------------------------------------------------- blur, argmax
def test_gaussian_kernel_matches_cv2_in_float32() -> None:
    for size in (1, 3, 5, 7, 9, 11, 13, 17, 23, 35, 61):
        ours = gaussian_kernel1d(size)
        assert np.array_equal(
            ours.astype(np.float32), cv2.getGaussianKernel(size, 0, cv2.CV_32F)[:, 0]
        )
        np.testing.assert_allclose(ours, cv2.getGaussianKernel(size, 0)[:, 0], rtol=1e-14)


@pytest.mark.parametrize("kernel", [3, 11, 17, 23])
def test_gaussian_blur_matches_cv2(kernel: int) -> None:
    rng = np.random.default_rng(kernel)
    maps = rng.random((6, 64, 48)).astype(np.float32)
    reflect = np.stack([cv2.GaussianBlur(m, (kernel, kernel), 0) for m in maps])
    ours = gaussian_blur(torch.from_numpy(maps), kernel, "reflect")
    np.testing.assert_allclose(np_(ours), reflect, atol=1e-6, rtol=0)
    # mmpose's zero padding, without its rescale to the original maximum
    b = kernel // 2
    padded = np.pad(maps, ((0, 0), (b, b), (b, b)))
    zero = np.stack([cv2.GaussianBlur(m, (kernel, kernel), 0)[b:-b, b:-b] for m in padded])
    ours = gaussian_blur(torch.from_numpy(maps), kernel, "zero")
    np.testing.assert_allclose(np_(ours), zero, atol=1e-6, rtol=0)
    # reflect-101 beyond one reflection, on a map narrower than the kernel
    tiny = rng.random((2, 5, 4)).astype(np.float32)
    ref = np.stack([cv2.GaussianBlur(m, (kernel, kernel), 0) for m in tiny])
    ours = gaussian_blur(torch.from_numpy(tiny), kernel, "reflect")
    np.testing.assert_allclose(np_(ours), ref, atol=1e-6, rtol=0)


def test_argmax_takes_the_first_maximum_like_numpy() -> None:
    rng = np.random.default_rng(0)
    maps = rng.integers(0, 4, size=(5, 17, 8, 6)).astype(np.float32)  # many ties
    maps[0, 0] = 0  # no positive maximum
    maps[0, 1] = -1
    peak = heatmap_argmax(torch.from_numpy(maps))
    preds, maxvals = get_max_preds(maps)
    np.testing.assert_array_equal(np_(peak.coords), preds)
    np.testing.assert_array_equal(np_(peak.score), maxvals[..., 0])


# ---------------------------------------------------------------------------- encoding vs ports
@pytest.mark.parametrize("input_size", SIZES)
def test_msra_encoding_matches_hrnet_generate_target(input_size) -> None:
    rng = np.random.default_rng(1)
    codec = MSRAHeatmap(input_size)
    kp, vis = random_keypoints(rng, 8, 17, input_size, margin=60)
    kp[0, :4] = [[-29.0, 10.0], [-30.5, 10.0], [10.0, input_size[0] + 23.9], [-2.2, -1.9]]
    vis[0, :4] = 1
    targets, weights = codec.encode(torch.from_numpy(kp), torch.from_numpy(vis))
    image = np.array(input_size[::-1])
    heat = np.array(codec.heatmap_size[::-1])
    sigma = int(codec.sigma)  # 2 or 3; the official configs give SIGMA as an integer
    for i in range(len(kp)):
        ref_t, ref_w = hrnet_generate_target(kp[i], vis[i], image, heat, sigma)
        np.testing.assert_allclose(np_(targets[i]), ref_t, atol=1e-6, rtol=0)
        np.testing.assert_array_equal(np_(weights[i]), ref_w)
    out = (weights == 0) & torch.from_numpy(vis > 0)
    assert out.any() and (weights == 1).sum() > 60  # both kinds of joints were exercised
    assert (targets.sum((-2, -1))[weights == 0] == 0).all()


@pytest.mark.parametrize("input_size", SIZES)
def test_unbiased_encoding_matches_mmpose(input_size) -> None:
    rng = np.random.default_rng(2)
    codec = DarkHeatmap(input_size)
    kp, vis = random_keypoints(rng, 8, 17, input_size, margin=60)
    targets, weights = codec.encode(torch.from_numpy(kp), torch.from_numpy(vis))
    kp_hm = np_(codec.to_heatmap(torch.from_numpy(kp)))
    wh = codec.heatmap_size[::-1]
    for i in range(len(kp)):
        ref_t, ref_w = mmpose_unbiased_gaussian(wh, kp_hm[i], vis[i], codec.sigma)
        np.testing.assert_allclose(np_(targets[i]), ref_t, atol=1e-6, rtol=0)
        np.testing.assert_array_equal(np_(weights[i]), ref_w)
    assert ((weights == 0) & torch.from_numpy(vis > 0)).any()


@pytest.mark.parametrize("input_size", SIZES)
def test_udp_encoding_matches_mmpose(input_size) -> None:
    rng = np.random.default_rng(3)
    codec = UDPHeatmap(input_size)
    kp, vis = random_keypoints(rng, 8, 17, input_size, margin=60)
    # HRNet/UDP-Pose style feat_stride = (image - 1) / (heatmap - 1), in float64
    wh = codec.heatmap_size[::-1]
    stride = (np.array(input_size[::-1]) - 1.0) / (np.array(wh) - 1.0)
    kp[0, 0], vis[0, 0] = [-0.7 * stride[0], 5.0], 1  # x_hm -0.7: int(-0.2) is 0, not -1
    targets, weights = codec.encode(torch.from_numpy(kp), torch.from_numpy(vis))
    r = int(3 * codec.sigma)  # the window is columns 0..r around mu = 0 (r - 1 with floor)
    assert weights[0, 0] == 1 and targets[0, 0, :, r].amax() > 0 == targets[0, 0, :, r + 1].amax()
    for i in range(len(kp)):
        ref_t, ref_w = mmpose_udp_gaussian(wh, kp[i] / stride, vis[i], codec.sigma)
        np.testing.assert_allclose(np_(targets[i]), ref_t, atol=1e-6, rtol=0)
        np.testing.assert_array_equal(np_(weights[i]), ref_w)
    assert ((weights == 0) & torch.from_numpy(vis > 0)).any()


@pytest.mark.parametrize("input_size", SIZES)
def test_udp_combined_encoding_matches_port(input_size) -> None:
    rng = np.random.default_rng(4)
    codec = UDPCombined(input_size)
    assert codec.radius == 0.0546875 * codec.heatmap_size[0]
    kp, vis = random_keypoints(rng, 8, 17, input_size, margin=20)
    targets, weights = codec.encode(torch.from_numpy(kp), torch.from_numpy(vis))
    wh = codec.heatmap_size[::-1]
    stride = (np.array(input_size[::-1]) - 1.0) / (np.array(wh) - 1.0)
    for i in range(len(kp)):
        ref_t, ref_w = udp_combined_target(wh, kp[i] / stride, vis[i], codec.radius)
        np.testing.assert_allclose(np_(targets[i]), ref_t, atol=1e-6, rtol=0)
        np.testing.assert_array_equal(np_(weights[i]), ref_w)
    assert ((weights == 0) & torch.from_numpy(vis > 0)).any()


def test_invisible_and_outside_joints_get_zero_weight_and_maps() -> None:
    # inside; unlabelled; left of the map; below it; unlabelled with a NaN position
    kp = torch.tensor([[[50.0, 60], [50, 60], [-100, 60], [50, 400], [float("nan"), 0]]])
    vis = torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.0]])
    for cls in (MSRAHeatmap, DarkHeatmap, UDPHeatmap, UDPCombined):
        codec = cls((256, 192))
        targets, weights = codec.encode(kp, vis)
        assert weights.dtype == torch.float32 and weights.tolist() == [[1, 0, 0, 0, 0]]
        per_joint = targets.unflatten(1, (5, codec.channels_per_keypoint))
        assert per_joint[0, 0].abs().sum() > 0
        assert (per_joint[0, 1:] == 0).all() and torch.isfinite(targets).all()


# ---------------------------------------------------------------------------- decoding vs ports
def noisy(rng, targets, amplitude=0.3):
    """Encoded targets plus uniform noise, and pure noise, stacked on the instance axis."""
    t = np_(targets)
    return np.concatenate(
        [
            t,
            t + amplitude * rng.random(t.shape, dtype=np.float32),
            rng.random(t.shape, dtype=np.float32),
        ]  # fmt: skip
    ).astype(np.float32)


@pytest.mark.parametrize("input_size", SIZES)
def test_msra_decoding_matches_hrnet_final_preds(input_size) -> None:
    rng = np.random.default_rng(5)
    codec = MSRAHeatmap(input_size)
    kp, vis = random_keypoints(rng, 4, 17, input_size, margin=10)
    hm = noisy(rng, DarkHeatmap(input_size).encode(torch.from_numpy(kp), torch.from_numpy(vis))[0])
    hm[0, 3] = 0  # no positive maximum: coordinates 0
    hm[1, 4] *= -1
    decoded, scores = codec.decode(torch.from_numpy(hm))
    ref, ref_scores = hrnet_final_preds(hm)
    stride = np.array(input_size[::-1]) / codec.heatmap_size[::-1]
    np.testing.assert_array_equal(np_(decoded), ref * stride)
    np.testing.assert_array_equal(np_(scores), ref_scores)


@pytest.mark.parametrize("input_size", SIZES)
def test_dark_decoding_matches_darkpose(input_size) -> None:
    rng = np.random.default_rng(6)
    codec = DarkHeatmap(input_size)
    kp, vis = random_keypoints(rng, 4, 17, input_size, margin=10)
    hm = noisy(rng, codec.encode(torch.from_numpy(kp), torch.from_numpy(vis))[0])
    hm[0, 3] = 0
    decoded, scores = codec.decode(torch.from_numpy(hm))
    ref, ref_scores = darkpose_final_preds(hm, codec.blur_kernel)
    np.testing.assert_allclose(np_(codec.to_heatmap(decoded)), ref, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(np_(scores), ref_scores)


@pytest.mark.parametrize("input_size", SIZES)
def test_udp_decoding_matches_mmpose_dark_udp(input_size) -> None:
    rng = np.random.default_rng(7)
    codec = UDPHeatmap(input_size)
    kp, vis = random_keypoints(rng, 4, 17, input_size, margin=10)
    hm = noisy(rng, codec.encode(torch.from_numpy(kp), torch.from_numpy(vis))[0])
    hm += 1e-3  # mmpose refines the -1 placeholder of an all-zero map too; we leave it at 0
    decoded, scores = codec.decode(torch.from_numpy(hm))
    stride = (np.array(input_size[::-1]) - 1.0) / (np.array(codec.heatmap_size[::-1]) - 1.0)
    for i in range(len(hm)):
        ref, ref_scores = mmpose_udp_decode(hm[i], codec.blur_kernel)
        np.testing.assert_allclose(np_(decoded[i]), ref * stride, atol=1e-4, rtol=0)
        np.testing.assert_array_equal(np_(scores[i]), ref_scores)


@pytest.mark.parametrize("offset_blur_kernel", [None, 11])
@pytest.mark.parametrize("input_size", SIZES)
def test_udp_combined_decoding_matches_mmpose(input_size, offset_blur_kernel) -> None:
    rng = np.random.default_rng(8)
    codec = UDPCombined(input_size, offset_blur_kernel=offset_blur_kernel)
    # every joint encoded: an all-zero class map ties everywhere (and mmpose reads at -1)
    kp = keypoints_inside(rng, codec, 4, 17, margin=0)
    hm = noisy(rng, codec.encode(kp, torch.ones(kp.shape[:2]))[0])
    decoded, scores = codec.decode(torch.from_numpy(hm))
    stride = (np.array(input_size[::-1]) - 1.0) / (np.array(codec.heatmap_size[::-1]) - 1.0)
    for i in range(len(hm)):
        ref, ref_scores = mmpose_combined_decode(
            hm[i], codec.radius, codec.blur_kernel, offset_blur_kernel
        )
        np.testing.assert_allclose(np_(decoded[i]), ref * stride, atol=1e-4, rtol=0)
        np.testing.assert_allclose(np_(scores[i]), ref_scores, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("input_size", SIZES)
@pytest.mark.parametrize("codec_cls", [DarkHeatmap, UDPHeatmap, UDPCombined])
def test_round_trip_recovers_subpixel_keypoints(codec_cls, input_size) -> None:
    rng = np.random.default_rng(9)
    codec = codec_cls(input_size)
    margin = 4 * codec.heatmap_size[0] / 64 * 2  # 4 sigma: the blurred window stays in the map
    kp = keypoints_inside(rng, codec, 30, 17, margin)  # 510 keypoints
    targets, weights = codec.encode(kp, torch.ones(kp.shape[:2]))
    assert (weights == 1).all()
    decoded, scores = codec.decode(targets)
    err = (codec.to_heatmap(decoded) - codec.to_heatmap(kp)).abs()
    assert err.max() < 0.05, err.max()
    assert (scores > 0.25).all()  # the combined codec scores the blurred disc (0.3 at 64 rows)


@pytest.mark.parametrize("input_size", SIZES)
def test_msra_round_trip_is_the_quarter_pixel_rule(input_size) -> None:
    rng = np.random.default_rng(10)
    codec = MSRAHeatmap(input_size)
    h, w = codec.heatmap_size
    # on a 1/32 px grid, avoiding exact half pixels (two equal maxima), some exact pixels
    steps = rng.integers([3 * 32, 3 * 32], [(w - 4) * 32, (h - 4) * 32], size=(30, 17, 2))
    steps[steps % 32 == 16] += 1
    steps[0, :5] = steps[0, :5] // 32 * 32
    kp_hm = steps / 32.0
    stride = np.array([input_size[1] / w, input_size[0] / h])
    kp = torch.from_numpy((kp_hm * stride).astype(np.float32))
    ones = torch.ones(kp.shape[:2])
    mu = np.floor(kp_hm + 0.5)  # round half up
    # integer-centred (HRNet) targets decode to the rounded pixel
    decoded, _ = codec.decode(codec.encode(kp, ones)[0])
    np.testing.assert_array_equal(np_(decoded), mu * stride)
    # sub-pixel (unbiased) targets: a quarter pixel toward the true position, 0 when exact
    decoded, _ = codec.decode(MSRAHeatmap(input_size, unbiased=True).encode(kp, ones)[0])
    np.testing.assert_array_equal(np_(decoded), (mu + 0.25 * np.sign(kp_hm - mu)) * stride)


# ---------------------------------------------------------------------------- batching, shapes
@pytest.mark.parametrize("codec_cls", [MSRAHeatmap, DarkHeatmap, UDPHeatmap, UDPCombined])
def test_batched_equals_per_instance_and_unbatched(codec_cls) -> None:
    rng = np.random.default_rng(11)
    codec = codec_cls((256, 192))
    kp, vis = random_keypoints(rng, 5, 17, (256, 192), margin=20)
    kp, vis = torch.from_numpy(kp), torch.from_numpy(vis)
    targets, weights = codec.encode(kp, vis)
    assert targets.shape == (5, 17 * codec.channels_per_keypoint, 64, 48)
    assert targets.dtype == weights.dtype == torch.float32 and weights.shape == (5, 17)
    hm = torch.from_numpy(noisy(rng, targets))
    decoded, scores = codec.decode(hm)
    assert decoded.shape == (15, 17, 2) and scores.shape == (15, 17)
    assert decoded.dtype == scores.dtype == torch.float32
    for i in range(len(kp)):
        t, w = codec.encode(kp[i], vis[i])
        assert torch.equal(t, targets[i]) and torch.equal(w, weights[i])
    for i in range(len(hm)):
        d, s = codec.decode(hm[i])
        torch.testing.assert_close(d, decoded[i], atol=1e-4, rtol=0)
        torch.testing.assert_close(s, scores[i], atol=1e-6, rtol=0)
    d1, s1 = codec.decode(hm[-1:])  # unbatched is a batch of one
    assert torch.equal(d1[0], d) and torch.equal(s1[0], s)
    # half-precision heatmaps (autocast outputs) are decoded in float32
    d16, _ = codec.decode(hm.half())
    assert d16.dtype == torch.float32
    empty_kp, empty_scores = codec.decode(hm[:0])
    assert empty_kp.shape == (0, 17, 2) and empty_scores.shape == (0, 17)


def test_decode_rejects_wrong_shapes() -> None:
    codec = UDPCombined((256, 192))
    with pytest.raises(ValueError, match="K\\*3"):
        codec.decode(torch.zeros(2, 17, 64, 48))
    with pytest.raises(ValueError, match="heatmap_size"):
        codec.decode(torch.zeros(2, 51, 32, 24))
    with pytest.raises(ValueError, match="visible"):
        codec.encode(torch.zeros(2, 17, 2), torch.zeros(2, 16))


# ---------------------------------------------------------------------------- flip
@pytest.mark.parametrize("c", [1, 3])
def test_flip_heatmaps_is_its_own_inverse(c: int) -> None:
    hm = torch.rand(3, 17 * c, 64, 48, generator=torch.Generator().manual_seed(c))
    flipped = flip_heatmaps(hm, FLIP, c)
    assert not torch.equal(flipped, hm)
    assert torch.equal(flip_heatmaps(flipped, FLIP, c), hm)
    assert torch.equal(flip_heatmaps(hm[0], FLIP, c), flipped[0])  # unbatched


def test_flip_heatmaps_with_shift_matches_hrnet() -> None:
    hm = np.random.default_rng(12).random((2, 17, 64, 48)).astype(np.float32)
    ref = hrnet_flip_back(hm, load_keypoint_spec("coco").flip_pairs)
    ours = flip_heatmaps(torch.from_numpy(hm), FLIP, shift=True)
    np.testing.assert_array_equal(np_(ours), ref)


@pytest.mark.parametrize("codec_cls", [UDPHeatmap, UDPCombined])
def test_udp_targets_flip_exactly(codec_cls) -> None:
    rng = np.random.default_rng(13)
    codec = codec_cls((256, 192))
    # a 1/16 px grid inside the image, so that 191 - x is exact in float32
    kp = torch.from_numpy(rng.integers(0, [191 * 16, 255 * 16], size=(6, 17, 2)) / 16.0).float()
    vis = torch.from_numpy(rng.random((6, 17)) > 0.2).float()
    targets, weights = codec.encode(kp, vis)
    kp_f, vis_f = flip_keypoints(kp, vis, FLIP, width=codec.input_size[1])
    targets_f, weights_f = codec.encode(kp_f, vis_f)
    assert torch.equal(flip_heatmaps(targets, FLIP, codec.channels_per_keypoint), targets_f)
    assert torch.equal(weights[:, FLIP], weights_f)
    # flip test with a perfect model gives back the targets
    averaged = average_flip(targets, targets_f, FLIP, codec)
    torch.testing.assert_close(averaged, targets, atol=1e-7, rtol=0)


def test_flip_keypoints_is_its_own_inverse() -> None:
    kp = torch.rand(4, 17, 2) * 200
    scores = torch.rand(4, 17)
    kp_f, scores_f = flip_keypoints(kp, scores, FLIP, width=192)
    # COCO keypoint 1 (left eye) becomes keypoint 2 (right eye)
    assert torch.equal(kp_f[:, 1, 0], 191 - kp[:, 2, 0])
    assert torch.equal(scores_f[:, 1], scores[:, 2])
    back, scores_back = flip_keypoints(kp_f, scores_f, FLIP, width=192)
    torch.testing.assert_close(back, kp, atol=1e-5, rtol=0)
    assert torch.equal(scores_back, scores)
    with pytest.raises(ValueError, match="flip_indices"):
        flip_keypoints(kp, scores, [1, 2, 0] + list(range(3, 17)), width=192)


def test_average_flip_uses_the_codec_shift() -> None:
    hm = torch.rand(2, 17, 64, 48)
    flipped = torch.rand(2, 17, 64, 48)
    msra, udp = MSRAHeatmap((256, 192)), UDPHeatmap((256, 192))
    shifted_back = flip_heatmaps(flipped, FLIP, shift=True)
    assert torch.equal(average_flip(hm, flipped, FLIP, msra), (hm + shifted_back) * 0.5)
    assert torch.equal(
        average_flip(hm, flipped, FLIP, udp), (hm + flip_heatmaps(flipped, FLIP)) * 0.5
    )


# ---------------------------------------------------------------------------- construction
def test_defaults_follow_the_heatmap_height() -> None:
    for input_size, hm, sigma, kernel in [
        ((256, 192), (64, 48), 2.0, 11),
        ((384, 288), (96, 72), 3.0, 17),
    ]:
        for cls in (DarkHeatmap, UDPHeatmap):
            codec = cls(input_size)
            assert (codec.heatmap_size, codec.sigma, codec.blur_kernel) == (hm, sigma, kernel)
    assert UDPCombined((256, 192)).blur_kernel == 23 and UDPCombined((256, 192)).radius == 3.5

    def flags(cls: type[HeatmapCodec]) -> tuple[bool, bool, int]:
        return cls.use_udp, cls.flip_shift, cls.channels_per_keypoint

    assert flags(MSRAHeatmap) == flags(DarkHeatmap) == (False, True, 1)
    assert flags(UDPHeatmap) == (True, False, 1) and flags(UDPCombined) == (True, False, 3)


@pytest.mark.parametrize(
    ("build", "name"),
    [
        (lambda: MSRAHeatmap((256,)), "input_size"),
        (lambda: MSRAHeatmap((256, 0)), "input_size"),
        (lambda: MSRAHeatmap("256x192"), "input_size"),
        (lambda: MSRAHeatmap((256, 192), (64.0, 48)), "heatmap_size"),
        (lambda: MSRAHeatmap((256, 192), (512, 48)), "heatmap_size"),
        (lambda: MSRAHeatmap((256, 192), sigma=0), "sigma"),
        (lambda: MSRAHeatmap((256, 192), sigma=float("nan")), "sigma"),
        (lambda: MSRAHeatmap((256, 192), unbiased="yes"), "unbiased"),
        (lambda: DarkHeatmap((256, 192), blur_kernel=10), "blur_kernel"),
        (lambda: UDPHeatmap((256, 192), (1, 48)), "heatmap_size"),
        (lambda: UDPHeatmap((256, 192), sigma=-1), "sigma"),
        (lambda: UDPCombined((256, 192), radius_factor=0), "radius_factor"),
        (lambda: UDPCombined((256, 192), offset_blur_kernel=0), "offset_blur_kernel"),
    ],
)
def test_constructor_errors_name_the_argument(build, name) -> None:
    with pytest.raises(ValueError, match=name):
        build()


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("msra", MSRAHeatmap),
        ("dark", DarkHeatmap),
        ("udp", UDPHeatmap),
        ("udp_combined", UDPCombined),
    ],  # fmt: skip
)
def test_config_group_instantiates(name: str, cls: type[HeatmapCodec]) -> None:
    node = OmegaConf.load(CODEC_CONFIGS / f"{name}.yaml")
    cfg = OmegaConf.create({"input_size": [384, 288], "codec": node})
    codec = instantiate(cfg.codec)
    assert type(codec) is cls
    assert codec.input_size == (384, 288) and codec.heatmap_size == (96, 72)
    # and composed with the root config, where it is a command-line switch
    codec = instantiate(compose_config([f"codec={name}"]).codec)
    assert type(codec) is cls and codec.heatmap_size == (64, 48)


# ---------------------------------------------------------------------------- CUDA
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("codec_cls", [MSRAHeatmap, DarkHeatmap, UDPHeatmap, UDPCombined])
def test_cuda_matches_cpu(codec_cls) -> None:
    rng = np.random.default_rng(14)
    codec = codec_cls((256, 192))
    kp, vis = random_keypoints(rng, 16, 17, (256, 192), margin=20)
    kp, vis = torch.from_numpy(kp), torch.from_numpy(vis)
    targets, weights = codec.encode(kp, vis)
    targets_cuda, weights_cuda = codec.encode(kp.cuda(), vis.cuda())
    assert targets_cuda.is_cuda
    torch.testing.assert_close(targets_cuda.cpu(), targets, atol=1e-6, rtol=0)
    assert torch.equal(weights_cuda.cpu(), weights)
    hm = torch.from_numpy(noisy(rng, targets))
    decoded, scores = codec.decode(hm.cuda())
    ref, ref_scores = codec.decode(hm)
    torch.testing.assert_close(decoded.cpu(), ref, atol=1e-3, rtol=0)
    torch.testing.assert_close(scores.cpu(), ref_scores, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------- the local-patch decode
def scaled_maps(rng, codec, scales):
    """Noisy encoded maps times each of ``scales`` (tiny ones make the clip / floor bite)."""
    input_size = codec.input_size
    kp, vis = random_keypoints(rng, 3, 17, input_size, margin=10)
    hm = noisy(rng, codec.encode(torch.from_numpy(kp), torch.from_numpy(vis))[0])
    hm = np.concatenate([hm * s for s in scales]).astype(np.float32)
    hm[0, 3] = 0  # no positive maximum
    hm[1, 4] -= 0.5  # negative values around the peak
    hm[2, 5, :, :] = 0
    hm[2, 5, 0, 0] = 1e-6  # a single tiny pixel in the corner
    return hm


@pytest.mark.parametrize("kernel", [3, 11, 17])
def test_local_blur_equals_the_zero_padded_full_blur(kernel: int) -> None:
    rng = np.random.default_rng(20)
    hm = rng.normal(0, 1, (2, 5, 20, 16))
    iy = torch.from_numpy(rng.integers(0, 20, (2, 5)))
    ix = torch.from_numpy(rng.integers(0, 16, (2, 5)))
    reach = 2
    block = ops.local_blur(torch.from_numpy(hm), iy, ix, kernel, reach)
    weights = gaussian_kernel1d(kernel)
    half = kernel // 2
    for n in range(2):
        for k in range(5):
            padded = np.pad(hm[n, k], half + reach)  # zeros
            for dy in range(-reach, reach + 1):
                for dx in range(-reach, reach + 1):
                    y, x = int(iy[n, k]) + dy + half + reach, int(ix[n, k]) + dx + half + reach
                    patch = padded[y - half : y + half + 1, x - half : x + half + 1]
                    expected = weights @ patch @ weights
                    got = float(block[n, k, reach + dy, reach + dx])
                    assert got == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("codec_cls", "taps", "value_range", "clamp_to_map"),
    [
        (UDPHeatmap, udp_module._UDP_TAPS, udp_module._UDP_CLIP, True),
        (DarkHeatmap, msra_module._TAYLOR_TAPS, (1e-10, math.inf), False),
    ],
)
def test_modulated_values_skip_the_full_blur_only_where_the_log_differences_agree(
    codec_cls, taps, value_range, clamp_to_map, monkeypatch
) -> None:
    """With ``value_range`` the rescale is exact wherever the clip could bite; elsewhere it cancels."""
    rng = np.random.default_rng(21)
    codec = codec_cls((256, 192))
    hm = torch.from_numpy(scaled_maps(rng, codec, (1.0, 3e-3, 1e-4, 40.0)))
    peak = ops.heatmap_argmax(hm)
    full = ops.modulated_values(hm, peak, codec.blur_kernel, taps, clamp_to_map)
    blurred = []
    real_blur = ops.gaussian_blur
    monkeypatch.setattr(ops, "gaussian_blur", lambda m, *a, **k: blurred.append(len(m)) or real_blur(m, *a, **k))  # fmt: skip
    fast = ops.modulated_values(hm, peak, codec.blur_kernel, taps, clamp_to_map, value_range)
    # Some maps need the whole blur (tiny or negative values), most do not.
    assert 0 < sum(blurred) < 0.5 * peak.found.sum()
    low, high = value_range
    log_full = full.clamp(low, high).log()
    log_fast = fast.clamp(low, high).log()
    found = peak.found
    # What the refinement uses: differences of the logs. Exact maps are bit-identical.
    diff_full = (log_full - log_full[..., :1])[found]
    diff_fast = (log_fast - log_fast[..., :1])[found]
    torch.testing.assert_close(diff_fast, diff_full, atol=1e-12, rtol=0)
    assert (log_fast == log_full).all(dim=-1).any()  # the blurred-whole maps


@pytest.mark.parametrize("codec_cls", [UDPHeatmap, DarkHeatmap])
def test_local_patch_decode_equals_the_full_map_decode_and_the_ports(
    codec_cls, monkeypatch
) -> None:
    rng = np.random.default_rng(22)
    codec = codec_cls((256, 192))
    hm = scaled_maps(rng, codec, (1.0, 3e-3, 1e-4, 40.0))
    hm += 1e-3 if codec_cls is UDPHeatmap else 0.0  # see test_udp_decoding_matches_mmpose_dark_udp
    fast, scores = codec.decode(torch.from_numpy(hm))
    # The full-map decode: the value_range shortcut switched off.
    real = ops.modulated_values

    def full_map(*args, value_range=None, **kwargs):
        return real(*args, **kwargs)

    monkeypatch.setattr(udp_module, "modulated_values", full_map)
    monkeypatch.setattr(msra_module, "modulated_values", full_map)
    full, full_scores = codec.decode(torch.from_numpy(hm))
    np.testing.assert_allclose(np_(fast), np_(full), atol=1e-6, rtol=0)
    assert torch.equal(scores, full_scores)
    # And the per-instance ports, where the maps are not degenerate (at 3e-3 and 1e-4 the
    # clip makes plateaus whose Newton steps run off by tens of pixels and float32 / float64
    # differences of the rescale show; there the full-map decode above is the reference).
    fast_hm = np_(codec.to_heatmap(fast))
    per_scale = len(hm) // 4
    normal = np.r_[0:per_scale, 3 * per_scale : len(hm)]
    hm, fast_hm = hm[normal], fast_hm[normal]
    if codec_cls is UDPHeatmap:
        for i in range(len(hm)):
            ref, _ = mmpose_udp_decode(hm[i], codec.blur_kernel)
            np.testing.assert_allclose(fast_hm[i], ref, atol=1e-4, rtol=0)
    else:
        ref, _ = darkpose_final_preds(hm, codec.blur_kernel)
        np.testing.assert_allclose(fast_hm, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("codec_cls", [MSRAHeatmap, UDPHeatmap])
def test_average_flip_equals_hrnet_flip_back_per_instance(codec_cls) -> None:
    rng = np.random.default_rng(23)
    codec = codec_cls((256, 192))
    hm = rng.normal(0, 1, (3, 17, 64, 48)).astype(np.float32)
    flipped = rng.normal(0, 1, (3, 17, 64, 48)).astype(np.float32)
    keep = (hm.copy(), flipped.copy())
    ours = average_flip(torch.from_numpy(hm), torch.from_numpy(flipped), FLIP, codec)
    pairs = [(a, b) for a, b in enumerate(FLIP) if a < b]
    if codec.flip_shift:
        back = hrnet_flip_back(flipped, pairs)
    else:
        back = flipped[..., ::-1][:, FLIP]
    np.testing.assert_array_equal(np_(ours), (hm + back) * 0.5)
    np.testing.assert_array_equal(hm, keep[0])  # inputs untouched
    np.testing.assert_array_equal(flipped, keep[1])


@pytest.mark.parametrize("codec_cls", [MSRAHeatmap, UDPHeatmap])
def test_average_flip_promotes_mixed_dtypes(codec_cls) -> None:
    codec = codec_cls((256, 192))
    hm = torch.randn(2, 17, 64, 48)
    flipped = torch.randn(2, 17, 64, 48).bfloat16()
    back = flip_heatmaps(flipped, FLIP, shift=codec.flip_shift)
    ours = average_flip(hm, flipped, FLIP, codec)
    assert ours.dtype == torch.float32
    assert torch.equal(ours, (hm + back) * 0.5)


def test_cpu_argmax_equals_torch_max_with_ties_nan_and_gradients() -> None:
    torch.manual_seed(0)
    hm = torch.rand(3, 17, 64, 48)
    hm[0, 0] = 0.5  # all tied: the first pixel
    hm[0, 1, 3, 4] = hm[0, 1, 10, 2] = float("nan")  # NaN is the maximum, the first one wins
    hm[0, 2] = float("-inf")
    hm[1, 3, 5, 5] = hm[1, 3, 6, 1] = 2.0
    peak = heatmap_argmax(hm)
    score, index = hm.flatten(-2).max(dim=-1)
    assert torch.equal(peak.iy * 48 + peak.ix, index)
    assert torch.equal(peak.score.nan_to_num(), score.nan_to_num())
    assert torch.equal(peak.score.isnan(), score.isnan())
    grad_input = hm.clone().requires_grad_()
    heatmap_argmax(grad_input).score.sum().backward()
    assert grad_input.grad.sum() == 3 * 17  # one 1 per map, at its peak
    half = heatmap_argmax(hm[1:].half())  # not NumPy's: torch.max
    assert torch.equal(half.iy * 48 + half.ix, hm[1:].half().flatten(-2).max(dim=-1).indices)
