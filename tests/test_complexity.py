"""Parameter/FLOP counting: the paper's convention, true multiply-adds, and the paper's reference figures."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import build
from torch import nn

from psapose.commands import flops
from psapose.models.complexity import measure_complexity, paper_convention_macs, true_macs

ROOT = Path(__file__).resolve().parents[1]


def test_counters_on_a_known_network() -> None:
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 8*3*9 weights x 16*16 outputs
        nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1),  # 8*4*16 weights; 16x16 in, 32x32 out
        nn.Flatten(),
        nn.Linear(4 * 32 * 32, 10),
    )
    conv, deconv, linear = 8 * 3 * 9 * 256, 8 * 4 * 16, 4096 * 10
    # Paper convention: a transposed convolution is charged per *output* pixel (4x its real cost).
    assert paper_convention_macs(net, (16, 16)) == conv + deconv * 32 * 32 + linear
    assert true_macs(net, (16, 16)) == conv + deconv * 16 * 16 + linear
    c = measure_complexity(net.to("meta"), (16, 16))  # also works without allocating
    assert c.params == sum(p.numel() for p in net.parameters())
    assert c.paper_gflops == pytest.approx((conv + deconv * 1024 + linear) / 2**30)


def test_true_macs_include_attention_matrix_products() -> None:
    from psapose.models import PolarizedSelfAttention

    m = PolarizedSelfAttention(32, "parallel", "official").to("meta")
    hw = 8 * 6
    # Channel branch: [16 x HW] @ [HW x 1]; spatial branch: [1 x 16] @ [16 x HW].
    matmuls = 16 * hw + 16 * hw
    convs = (32 * 1 + 3 * 32 * 16) * hw + 16 * 32  # conv_up runs on a 1x1 map
    assert true_macs(m, (8, 6), in_channels=32) == convs + matmuls
    assert paper_convention_macs(m, (8, 6), in_channels=32) == convs


def rows(
    models,
    attention,
    placements=("all", "basic"),
    sizes=("256x192", "384x288"),
    variants=("official",),
):
    args = argparse.Namespace(models=models, attention=attention, variants=list(variants),
                              placements=list(placements), input_sizes=list(sizes))  # fmt: skip
    return {
        (r["model"], r["attention"], r["placement"], r["input"]): r
        for r in flops.measure_rows(args)
    }


def test_hrnet_w32_matches_reference_to_the_unit() -> None:
    r = rows(["hrnet_w32"], ["none", "psa_parallel"])
    assert r["hrnet_w32", "none", None, "384x288"]["params"] == 28_536_113
    assert r["hrnet_w32", "psa_parallel", "basic", "384x288"]["params"] == 31_363_889
    assert r["hrnet_w32", "psa_parallel", "all", "384x288"]["params"] == 31_396_913
    assert r["hrnet_w32", "psa_parallel", "basic", "384x288"]["attention_blocks"] == 104
    assert r["hrnet_w32", "psa_parallel", "all", "384x288"]["attention_blocks"] == 108
    assert round(r["hrnet_w32", "none", None, "384x288"]["paper_gflops"], 2) == 16.02
    assert round(r["hrnet_w32", "psa_parallel", "basic", "384x288"]["paper_gflops"], 2) == 17.06
    assert round(r["hrnet_w32", "none", None, "256x192"]["paper_gflops"], 1) == 7.1


def test_hrnet_w48_and_resnet50_within_a_tenth_of_a_percent() -> None:
    r = rows(["hrnet_w48"], ["none", "psa_parallel"], placements=("basic",))
    assert r["hrnet_w48", "none", None, "384x288"]["params"] == pytest.approx(63.60e6, rel=1e-3)
    assert r["hrnet_w48", "psa_parallel", "basic", "384x288"]["params"] == pytest.approx(
        69.95e6, rel=1e-3
    )
    assert r["hrnet_w48", "none", None, "384x288"]["paper_gflops"] == pytest.approx(
        32.88, abs=0.005
    )
    assert r["hrnet_w48", "psa_parallel", "basic", "384x288"]["paper_gflops"] == pytest.approx(
        35.21, abs=0.005
    )
    assert r["hrnet_w48", "psa_parallel", "basic", "256x192"]["paper_gflops"] == pytest.approx(
        15.65, abs=0.005
    )
    r = rows(["resnet50"], ["none", "psa_parallel", "psa_sequential"], sizes=("256x192",))
    assert r["resnet50", "none", None, "256x192"]["params"] == pytest.approx(34.0e6, rel=1e-3)
    assert r["resnet50", "psa_parallel", "all", "256x192"]["params"] == pytest.approx(
        36.5e6, rel=1e-3
    )
    assert r["resnet50", "psa_sequential", "all", "256x192"]["params"] == pytest.approx(
        36.1e6, rel=1e-3
    )
    # BasicBlock-only placement puts nothing in a Bottleneck ResNet: that row is left out.
    assert ("resnet50", "psa_parallel", "basic", "256x192") not in r


def test_paper_variant_adds_layernorm_parameters() -> None:
    official = rows(["quickstart"], ["psa_parallel"], placements=("all",), sizes=("256x192",))
    paper = rows(
        ["quickstart"],
        ["psa_parallel"],
        placements=("all",),
        sizes=("256x192",),
        variants=("paper",),
    )
    key = ("quickstart", "psa_parallel", "all", "256x192")
    # One LayerNorm over C (weight + bias) per attention block: 2 x sum of block widths.
    widths = [
        m.channels
        for n, m in build("quickstart", "psa_parallel").named_modules()
        if n.endswith("deattn")
    ]
    assert paper[key]["params"] - official[key]["params"] == 2 * sum(widths)


def test_cli_json_output() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "flops.py"), "--json", "--models", "hrnet_w32",
         "--attention", "none", "psa_parallel", "--variants", "official", "--placements", "basic",
         "--input-sizes", "384x288"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    data = json.loads(out.stdout)
    assert [(d["attention"], d["params"], round(d["paper_gflops"], 2)) for d in data] == [
        ("none", 28_536_113, 16.02),
        ("psa_parallel", 31_363_889, 17.06),
    ]
    assert data[1]["published_params"] == 31.4e6 and data[1]["published_gflops"] == 17.1
    assert data[1]["params_delta"] == 31_363_889 - 28_536_113
