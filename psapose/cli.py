"""One error contract for every tool: anticipated failures are one line and a documented code.

==========  ==============================================================================
exit code   meaning
==========  ==============================================================================
0           done
1           an unexpected error (a Python traceback: a bug to report)
2           bad input, found before any work was lost: config key or value, keypoint YAML,
            annotation, detection or results file, image, unusable or unsafe checkpoint,
            a missing path; the message names the file (or key) and the field
3           stopped by a guard during training (too many unreadable images, too many
            non-finite losses in a row); the last good checkpoint is kept
4           an output could not be written (disk full, quota, read-only, permission); the
            file it was to replace is kept as it was
128 + N     stopped by signal N (143 SIGTERM, 130 SIGINT); training wrote a resumable
            ``checkpoints/latest.pth`` first
==========  ==============================================================================

The tools (psapose/commands: ``psapose COMMAND`` or ``python tools/<tool>.py``) wrap their
work in :func:`error_contract`. The message is printed as ``<tool>: error: <first line>``
(further lines, such as a checkpoint mismatch report, follow indented).
``PSAPOSE_TRACEBACK=1`` re-raises instead, for debugging.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_GUARD",
    "EXIT_OUTPUT",
    "classify",
    "error_contract",
    "check_overrides",
    "exit_on_signals",
    "log_into_output_dir",
]

EXIT_BAD_INPUT, EXIT_GUARD, EXIT_OUTPUT = 2, 3, 4
_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


def _bad_input_types() -> tuple[type[BaseException], ...]:
    # Imported here: the tools call this only when something failed.
    from psapose.checkpoint import CheckpointError
    from psapose.config import ConfigError
    from psapose.data.coco import AnnotationError
    from psapose.data.keypoint_spec import KeypointSpecError
    from psapose.data.transforms import ImageReadError

    return (ConfigError, AnnotationError, KeypointSpecError, CheckpointError, ImageReadError)


def classify(err: BaseException) -> tuple[int, str] | None:
    """The exit code and message for an anticipated failure, or None for a bug."""
    from psapose.engine.checkpoints import OutputWriteError
    from psapose.engine.faults import TrainingError, TrainingInterrupted

    if isinstance(err, TrainingInterrupted):
        return err.exit_code, str(err)
    if isinstance(err, TrainingError):
        return EXIT_GUARD, f"training stopped: {err}"
    if isinstance(err, OutputWriteError) or (
        isinstance(err, OSError) and err.errno in _OUTPUT_ERRNOS
    ):
        return EXIT_OUTPUT, str(err)
    if isinstance(err, _bad_input_types()):
        return EXIT_BAD_INPUT, str(err)
    if isinstance(err, (FileNotFoundError, NotADirectoryError, IsADirectoryError)):
        return EXIT_BAD_INPUT, f"{err.filename or ''}: {err.strerror or err}".lstrip(": ")
    if isinstance(err, PermissionError):
        return EXIT_OUTPUT, f"{err.filename or ''}: {err.strerror or err}".lstrip(": ")
    return None


def _format(tool: str, message: str) -> str:
    lines = [line for line in str(message).strip().splitlines() if line.strip()] or ["(no detail)"]
    head = f"{tool}: error: {lines[0]}"
    return "\n".join([head, *("    " + line.strip() for line in lines[1:])])


@contextmanager
def error_contract(
    tool: str, emit: Callable[[str], None] | None = None, extra: tuple[type, ...] = ()
) -> Iterator[None]:
    """Turn anticipated failures inside the block into one message and their exit code.

    ``emit`` prints the message (default: standard error; Hydra tools pass their
    logger so it lands in the run's log too). ``extra`` lists further exception
    types this tool treats as bad input (argparse-level ``ValueError``s from its own
    argument checks, for instance).
    """
    say = emit or (lambda text: print(text, file=sys.stderr))
    try:
        yield
    except SystemExit:
        raise
    except KeyboardInterrupt:
        say(f"{tool}: interrupted")
        raise SystemExit(128 + signal.SIGINT) from None
    except BaseException as err:
        if os.environ.get("PSAPOSE_TRACEBACK"):
            raise
        mapped = classify(err)
        if mapped is None and extra and isinstance(err, extra):
            mapped = (EXIT_BAD_INPUT, str(err))
        if mapped is None:
            raise
        code, message = mapped
        say(_format(tool, message))
        raise SystemExit(code) from None


@contextmanager
def exit_on_signals(tool: str, log: logging.Logger | None = None) -> Iterator[None]:
    """Outside training loops: SIGTERM ends the tool at once with 143 and one line.

    Evaluation, export and the demo have nothing to save on a stop, but a raw
    ``Terminated`` or a traceback from deep inside a decoder is not a contract.
    """

    def stop(signum: int, frame: object) -> None:
        raise _Stopped(signum)

    previous = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    except _Stopped as stopped:
        text = f"{tool}: stopped by {signal.Signals(stopped.signum).name}"
        (log.warning if log else lambda t: print(t, file=sys.stderr))(text)
        raise SystemExit(128 + stopped.signum) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Stopped(BaseException):  # noqa: N818 (a signal: BaseException, past `except Exception`)
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _value_of(argv: list[str], key: str) -> str | None:
    for arg in argv:
        name, sep, value = arg.lstrip("+").partition("=")
        if sep and name == key:
            return value
    return None


def log_into_output_dir(argv: list[str], run_subdir: str | None = None) -> list[str]:
    """Hydra's run folder (its ``<tool>.log`` and ``.hydra/``) follows ``output_dir=``.

    Without this Hydra writes the log to ``runs/<time>/`` while the checkpoints go to
    ``output_dir``. With ``run_subdir`` and ``run=RUN_DIR`` (tools/test.py), an
    evaluation without ``output_dir`` lands inside the run it evaluates. An explicit
    ``hydra.run.dir=`` always wins. Returns the arguments to give Hydra.
    """
    if _value_of(argv, "hydra.run.dir") is not None:
        return argv
    output_dir = _value_of(argv, "output_dir")
    if output_dir not in (None, "", "null"):
        return [*argv, f"hydra.run.dir={output_dir}"]
    run = _value_of(argv, "run")
    if run_subdir and run not in (None, "", "null"):
        return [*argv, f"hydra.run.dir={run}/{run_subdir}"]
    return argv


def _group_options(group: str) -> list[str]:
    from psapose.config import CONFIG_DIR

    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def _translate_hydra_error(err: BaseException, overrides: list[str]) -> str:
    """Hydra's composition errors as the documented one-liners, with what is allowed."""
    import re

    from hydra.errors import MissingConfigException, OverrideParseException

    from psapose.config import compose_config

    text = str(err)
    if isinstance(err, MissingConfigException):
        found = re.search(r"Could not find '([^/']+)/([^']+)'", text)
        if found:
            group, value = found.groups()
            options = ", ".join(_group_options(group))
            return f"unknown value {group}={value}; allowed: {options}"
    if isinstance(err, OverrideParseException):
        return text.splitlines()[0] + " (see the override grammar: key=value, group=option)"
    found = re.search(r"Could not override '([^']+)'", text)
    if found:
        key = found.group(1)
        parent_key = key.rsplit(".", 1)[0] if "." in key else ""
        others = [o for o in overrides if not o.lstrip("+~").startswith(key)]
        try:
            base = compose_config(others)
            from omegaconf import OmegaConf

            parent = OmegaConf.select(base, parent_key) if parent_key else base
            allowed = ", ".join(str(k) for k in parent) if OmegaConf.is_dict(parent) else ""
        except Exception:  # the rest of the command line is broken too: say what we know
            allowed = ""
        where = f"allowed here: {allowed}" if allowed else "no such key"
        return f"unknown key {key}; {where}"
    return text.strip().splitlines()[0]


def check_overrides(tool: str, argv: list[str], validate: bool = True) -> None:
    """Compose the command line's config once before Hydra runs the tool, so that Hydra's own
    errors (an unknown key, an unknown group option, a syntax error) and invalid values get
    the documented one line and exit 2 instead of Hydra's message and exit 1.

    ``validate`` also runs :func:`psapose.config.validate_config` (tools/test.py with
    ``run=`` validates after merging the run's config instead).
    """
    if any(arg.startswith("-") for arg in argv):  # --help, --cfg job, -m: Hydra's own flags
        return
    overrides = [a for a in argv if not a.lstrip("+~").startswith("hydra")]
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from psapose.config import ConfigError, compose_config, validate_config

    with error_contract(tool):
        try:
            cfg = compose_config(overrides)
        except (HydraException, OmegaConfBaseException) as err:
            raise ConfigError(_translate_hydra_error(err, overrides)) from None
        experiment = _value_of(overrides, "experiment")
        if experiment not in (None, "", "null") and experiment not in _group_options("experiment"):
            # Hydra skips an unknown value of an optional group without a word.
            options = ", ".join(_group_options("experiment"))
            raise ConfigError(f"unknown value experiment={experiment}; allowed: {options}")
        if validate:
            validate_config(cfg)
