"""Keeps TensorFlow's native (C++/absl) log lines off the terminal of the `tfprune` command.

TensorFlow prints oneDNN, CUDA-probe, SavedModel and MLIR lines from C++, straight to file
descriptor 2, some of them (absl `LOG`) whatever `TF_CPP_MIN_LOG_LEVEL` says. The command
therefore sets `TF_CPP_MIN_LOG_LEVEL=3` before TensorFlow is imported and points
descriptor 2 at the null device, while Python's `sys.stderr` (tfprune's own errors and
warnings, tracebacks) keeps writing to the real stderr. `tfprune --verbose` skips both.

Imported first by `tfprune/__init__.py`: when the running program is the `tfprune`
console script, the quieting starts before TensorFlow is imported.
"""

from __future__ import annotations

import os
import sys

__all__: list[str] = []

_state: dict[str, int] = {}


def quiet() -> None:
    """Silences native log lines from now on (idempotent); Python's stderr still works."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "saved" in _state:
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        null = os.open(os.devnull, os.O_WRONLY)
    except (OSError, AttributeError, ValueError):
        return  # no real descriptor 2 (embedded interpreter): nothing to quiet
    if getattr(sys.stderr, "fileno", None) is not None:
        try:
            real = sys.stderr.fileno() == 2
        except (OSError, ValueError):  # a captured stream (pytest) has no descriptor
            real = False
        if real:
            sys.stderr = os.fdopen(saved, "w", buffering=1, closefd=False)
    os.dup2(null, 2)
    os.close(null)
    _state["saved"] = saved


def launched_as_cli(argv: list[str] | None = None) -> bool:
    """True when the program is the `tfprune` console script run without `--verbose`."""
    argv = sys.argv if argv is None else argv
    return bool(argv) and os.path.basename(argv[0]) == "tfprune" and "--verbose" not in argv


if launched_as_cli():
    quiet()
