"""The ``psapose`` command: one sub-command per tool (``python -m psapose`` is the same).

    psapose --help                                   # the sub-commands, one line each
    psapose train experiment=quickstart dry_run=true
    psapose flops --models hrnet_w32 --json
    psapose SUB --help                               # the sub-command's own help

``psapose SUB ARGS`` runs exactly as ``python tools/<tool>.py ARGS`` (``tools/*.py`` are
thin wrappers of the modules here): the same output, exit codes and one-line errors
(``<tool>: error: ...``, docs/reliability.md). A sub-command's module is imported only
when it runs, so ``psapose --help`` stays instant and a command's environment settings
(``OMP_NUM_THREADS`` and the like) are read by torch as with the tools/ script.
"""

from __future__ import annotations

import importlib
import runpy
import sys
from dataclasses import dataclass

__all__ = ["COMMANDS", "Command", "main", "usage"]


@dataclass(frozen=True)
class Command:
    """One sub-command: the module that runs it and the line ``psapose --help`` shows."""

    module: str  # with ``main(argv) -> int | None``; without a script, run as ``python -m module``
    script: str | None  # its tools/ script (the program name in usage lines and argparse errors)
    summary: str


COMMANDS: dict[str, Command] = {
    "quickstart": Command(
        "psapose.commands.quickstart",
        "quickstart.py",
        "train and evaluate the small HRNet + PSA on synthetic data, on the CPU",
    ),
    "train": Command(
        "psapose.commands.train", "train.py", "train (and evaluate) a pose model (Hydra config)"
    ),
    "test": Command(
        "psapose.commands.test",
        "test.py",
        "evaluate a checkpoint or a run on val2017, or write test-dev results",
    ),
    "demo": Command(
        "psapose.commands.demo",
        "demo.py",
        "draw estimated poses on images or a video and write COCO results",
    ),
    "export": Command(
        "psapose.commands.export_onnx",
        "export_onnx.py",
        "export a pose network to ONNX and check it against PyTorch",
    ),
    "convert": Command(
        "psapose.data.convert",
        None,
        "convert DeepLabCut or lightning-pose labels to a COCO-format dataset",
    ),
    "synthetic": Command(
        "psapose.data.synthetic",
        None,
        "write the built-in synthetic COCO-keypoint dataset",
    ),
    "eval-results": Command(
        "psapose.commands.eval_results",
        "eval_results.py",
        "score a COCO keypoint results file against a ground truth",
    ),
    "flops": Command(
        "psapose.commands.flops",
        "flops.py",
        "parameters and GFLOPs of every backbone x attention x input size",
    ),
    "benchmark": Command(
        "psapose.commands.benchmark",
        "benchmark.py",
        "benchmarks (data, eval, model, train), each beside its own reference",
    ),
    "ablate": Command(
        "psapose.commands.ablate",
        "ablate.py",
        "train every variant of a sweep alike, then compare AP, cost and speed",
    ),
    "attention-maps": Command(
        "psapose.commands.attention_maps",
        "attention_maps.py",
        "render each PSA block's spatial and channel attention for a trained run",
    ),
    "gpu-check": Command(
        "psapose.commands.gpu_check",
        "gpu_check.py",
        "the prepared GPU check (tools/gpu_check.sh prepares a bare GPU machine first)",
    ),
}


def usage() -> str:
    """The text of ``psapose --help``."""
    width = max(len(name) for name in COMMANDS) + 2
    lines = [
        "usage: psapose COMMAND [ARGS ...]",
        "",
        "Polarized Self-Attention for top-down human pose estimation.",
        "",
        "commands:",
        *(f"  {name:<{width}}{command.summary}" for name, command in COMMANDS.items()),
        "",
        "Each command does exactly what its tools/ script does: `psapose train ARGS` is",
        "`python tools/train.py ARGS`, `psapose export` is tools/export_onnx.py, and convert and",
        "synthetic are `python -m psapose.data.convert` and `python -m psapose.data.synthetic`.",
        "`psapose COMMAND --help` shows the command's own help.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``psapose COMMAND ARGS``: the command's exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] in (["-h"], ["--help"]):
        print(usage())
        return 0
    if args[:1] == ["--version"]:
        from psapose import __version__

        print(f"psapose {__version__}")
        return 0
    if not args:
        print(usage(), file=sys.stderr)
        return 2
    name, rest = args[0], args[1:]
    command = COMMANDS.get(name)
    if command is None:
        print(
            f"psapose: error: unknown command {name!r}; choose from: {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        return 2
    # The tool's program name and arguments, as `python tools/<tool>.py ARGS` gives them: the
    # same usage lines and errors, and the Hydra commands read their overrides from sys.argv.
    sys.argv = [f"tools/{command.script}" if command.script else command.module, *rest]
    if command.script is None:  # the data tools: `python -m psapose.data.<tool>`
        runpy.run_module(command.module, run_name="__main__", alter_sys=True)
        return 0
    return importlib.import_module(command.module).main(rest) or 0
