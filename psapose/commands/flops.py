"""Parameters and GFLOPs of every backbone x attention x input size, beside the paper's figures.

    python tools/flops.py                       # the full table
    python tools/flops.py --json                # the same rows as JSON
    python tools/flops.py --models hrnet_w32 --attention none psa_parallel --placements basic

GFLOPs follow the paper's convention (the official HRNet counter: convolution
multiply-adds / 2**30); "true GMACs" counts every multiply-add (transposed
convolutions at their real cost, attention matrix products included) / 1e9.
See psapose/models/complexity.py and docs/flops.md.
"""

from __future__ import annotations

import argparse
import json

from psapose.config import build_model, compose_config
from psapose.models import attention_blocks
from psapose.models.complexity import Complexity, measure_complexity

MODELS = ("quickstart", "hrnet_w32", "hrnet_w48", "resnet50", "resnet101", "resnet152")
ATTENTION = ("none", "psa_parallel", "psa_sequential", "se", "gc")
VARIANTS = ("official", "paper")
PLACEMENTS = ("all", "basic")
INPUT_SIZES = ("256x192", "384x288")

# Published figures, keyed by (model, attention) -> params, and (model, attention, input) -> GFLOPs.
# Baselines: HRNet paper (Sun et al. 2019), Tables 1-2. PSA rows: the PSA paper as quoted in issue #2.
PAPER_PARAMS = {
    ("hrnet_w32", "none"): 28.5e6,
    ("hrnet_w32", "psa_parallel"): 31.4e6,
    ("hrnet_w48", "none"): 63.60e6,
    ("hrnet_w48", "psa_parallel"): 69.95e6,
    ("resnet50", "none"): 34.0e6,
    ("resnet50", "psa_parallel"): 36.5e6,
    ("resnet50", "psa_sequential"): 36.1e6,
    ("resnet101", "none"): 53.0e6,
    ("resnet152", "none"): 68.6e6,
}
PAPER_GFLOPS = {
    ("hrnet_w32", "none", "256x192"): 7.1,
    ("hrnet_w32", "none", "384x288"): 16.0,
    ("hrnet_w32", "psa_parallel", "384x288"): 17.1,
    ("hrnet_w48", "none", "256x192"): 14.6,
    ("hrnet_w48", "none", "384x288"): 32.88,
    ("hrnet_w48", "psa_parallel", "256x192"): 15.65,
    ("hrnet_w48", "psa_parallel", "384x288"): 35.21,
    ("resnet50", "none", "256x192"): 8.9,
    ("resnet101", "none", "256x192"): 12.4,
    ("resnet152", "none", "256x192"): 15.7,
}


def parse_size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"input size must look like 256x192 (height x width), got {text!r}"
        ) from None
    return height, width


def configurations(args: argparse.Namespace):
    """(model, attention, variant, placement) combinations, without duplicates."""
    for model in args.models:
        for attention in args.attention:
            if attention == "none":
                yield model, attention, None, "all"
                continue
            for variant in args.variants if attention.startswith("psa") else (None,):
                for placement in args.placements:
                    yield model, attention, variant, placement


def measure_rows(args: argparse.Namespace) -> list[dict]:
    rows: list[dict] = []
    baselines: dict[tuple[str, str], Complexity] = {}
    for model_name, attention, variant, placement in configurations(args):
        overrides = [
            f"model={model_name}",
            f"attention={attention}",
            f"model.attention_blocks={placement}",
        ]
        if variant:
            overrides.append(f"attention.variant={variant}")
        cfg = compose_config(overrides)
        # Count on the meta device (shapes only). Building there is slower than on the CPU
        # (its random initialisers run as Python references), so build first, then move.
        model = build_model(cfg).to("meta")
        blocks = len(attention_blocks(model))
        if attention != "none" and blocks == 0:
            continue  # e.g. BasicBlock-only placement in a Bottleneck ResNet: same as none
        for size_text in args.input_sizes:
            size = parse_size(size_text)
            c = measure_complexity(model, size)
            row = {
                "model": model_name,
                "attention": attention,
                "variant": variant,
                "placement": placement if attention != "none" else None,
                "attention_blocks": blocks,
                "input": size_text,
                "params": c.params,
                "paper_gflops": round(c.paper_gflops, 4),
                "true_gmacs": round(c.true_gmacs, 4),
                "published_params": PAPER_PARAMS.get((model_name, attention))
                if variant in (None, "official")
                else None,
                "published_gflops": PAPER_GFLOPS.get((model_name, attention, size_text))
                if variant in (None, "official")
                else None,
            }
            if attention == "none":
                baselines[(model_name, size_text)] = c
            base = baselines.get((model_name, size_text))
            row["params_delta"] = c.params - base.params if base else None
            row["gflops_delta_pct"] = (
                round(100 * (c.paper_gflops / base.paper_gflops - 1), 2) if base else None
            )
            rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    header = (
        f"{'model':<11} {'attention':<20} {'variant':<9} {'blocks':<6} {'input':<8} "
        f"{'params':>12} {'+params':>11} {'GFLOPs':>8} {'+%':>6} {'trueGMAC':>9} "
        f"{'paper params':>13} {'paper GFLOPs':>12}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        attention = r["attention"] + (f"/{r['placement']}" if r["placement"] else "")
        pp = f"{r['published_params'] / 1e6:.2f}M" if r["published_params"] else ""
        pg = f"{r['published_gflops']:.2f}" if r["published_gflops"] else ""
        delta = f"{r['params_delta']:+,}" if r["params_delta"] is not None else ""
        pct = f"{r['gflops_delta_pct']:+.1f}" if r["gflops_delta_pct"] is not None else ""
        lines.append(
            f"{r['model']:<11} {attention:<20} {r['variant'] or '-':<9} {r['attention_blocks']:<6} {r['input']:<8} "
            f"{r['params']:>12,} {delta:>11} {r['paper_gflops']:>8.2f} {pct:>6} {r['true_gmacs']:>9.2f} "
            f"{pp:>13} {pg:>12}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models", nargs="+", default=list(MODELS), help="model config names (configs/model)"
    )
    parser.add_argument(
        "--attention", nargs="+", default=list(ATTENTION), help="attention config names"
    )
    parser.add_argument(
        "--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS, help="PSA variants"
    )
    parser.add_argument("--placements", nargs="+", default=list(PLACEMENTS), choices=PLACEMENTS,
                        help="all residual blocks, or BasicBlocks only (the official PSA code)")  # fmt: skip
    parser.add_argument("--input-sizes", nargs="+", default=list(INPUT_SIZES), help="HEIGHTxWIDTH")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    for size in args.input_sizes:
        parse_size(size)
    rows = measure_rows(args)
    print(json.dumps(rows, indent=1) if args.json else format_table(rows))
    return 0
