"""The `tfprune` command.

Subcommands are registered in `_COMMANDS`; each has an `add_arguments(parser)` and a
`run(args) -> int`. User mistakes (a missing file, a wrong format) raise `CliError`, which
`main` prints as one line and turns into exit status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

__all__ = ["CliError", "main"]


class CliError(Exception):
    """A user mistake: printed as one line, exit status 2."""


def _add_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=int, default=8, help="dense training epochs")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument(
        "--out", default="tfprune-demo", help="folder for the exported files (default: %(default)s)"
    )


def _run_demo(args: argparse.Namespace) -> int:
    from tfprune.demo import run

    run(epochs=args.epochs, seed=args.seed, out_dir=args.out)
    return 0


_COMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    "demo": (
        "train, prune and export a small CNN on scikit-learn's digits",
        _add_demo,
        _run_demo,
    ),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the `tfprune` command line.

    Args:
        argv: Arguments without the program name (default: `sys.argv[1:]`).

    Returns:
        The exit status: 0 on success, 2 for a user mistake.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = argparse.ArgumentParser(prog="tfprune", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments, _) in _COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    args = parser.parse_args(argv)
    try:
        return _COMMANDS[args.command][2](args)
    except CliError as e:
        print(f"tfprune {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
