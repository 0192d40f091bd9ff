"""The `tfprune` command.

Subcommands are registered in `_COMMANDS`; each has an `add_arguments(parser)` and a
`run(args) -> int`. User mistakes (a missing file, a wrong format) raise `CliError`, which
`main` prints as one line and turns into exit status 2, without a traceback.
TensorFlow's native log lines are hidden unless `--verbose` is given (`tfprune._native_log`).
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

    try:
        run(epochs=args.epochs, seed=args.seed, out_dir=args.out)
    except (ValueError, TypeError, OSError) as e:
        raise CliError(" ".join(str(e).split())) from e
    return 0


def _existing(path: str, suffixes: tuple[str, ...], what: str) -> str:
    if not os.path.isfile(path):
        raise CliError(f"{what} not found: {path}")
    if not path.lower().endswith(suffixes):
        raise CliError(f"{what} must be a {' or '.join(suffixes)} file, got: {path}")
    return path


def _load_keras(path: str):
    from tfprune.saving import load_model

    _existing(path, (".keras",), "Keras model")
    try:
        return load_model(path)
    except Exception as e:  # a damaged zip, an unknown layer, ...: one line, not a traceback
        raise CliError(f"could not load {path}: {' '.join(str(e).split())[:300]}") from e


def _load_npz(path: str, what: str):
    import numpy as np

    _existing(path, (".npz",), f"{what} data")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:
        raise CliError(
            f"could not read {path} as a numpy .npz archive ({type(e).__name__}): the file is "
            "damaged or not written by np.savez(path, x=x); write it again"
        ) from e
    if "x" in arrays:
        x = arrays["x"]
    elif len(arrays) == 1:
        x = next(iter(arrays.values()))
    else:
        raise CliError(
            f"{path} holds arrays {sorted(arrays)}; name the inputs 'x' (and labels 'y'), "
            "e.g. np.savez(path, x=x, y=y)"
        )
    return x, arrays.get("y")


def _add_summary(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a .keras or .tflite file")


def _run_summary(args: argparse.Namespace) -> int:
    if args.model.lower().endswith(".tflite"):
        from tfprune.export import describe

        _existing(args.model, (".tflite",), "TFLite model")
        try:
            print(describe(args.model).format())
        except ValueError as e:
            raise CliError(str(e)) from e
        return 0
    if not args.model.lower().endswith(".keras"):
        raise CliError(f"MODEL must be a .keras or .tflite file, got: {args.model}")
    import tfprune

    tfprune.summary(_load_keras(args.model))
    return 0


def _add_shrink(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="pruned model (.keras)")
    parser.add_argument("output", help="where to write the smaller model (.keras)")
    parser.add_argument(
        "--through-norms",
        action="store_true",
        help="also remove hidden channels through LayerNormalization (not exact)",
    )


def _run_shrink(args: argparse.Namespace) -> int:
    if not args.output.lower().endswith(".keras"):
        raise CliError(f"OUTPUT must be a .keras file, got: {args.output}")
    _writable(args.output, "OUTPUT")
    model = _load_keras(args.input)
    try:
        from tfprune.shrink import shrink
    except ImportError as e:
        raise CliError(f"tfprune.shrink is not available in this install: {e}") from e
    from tfprune.export._io import atomic_path

    try:
        small = shrink(model, through_norms=args.through_norms)
        with atomic_path(args.output, suffix=".keras") as tmp:
            small.save(tmp)
    except (ValueError, TypeError, OSError) as e:
        raise CliError(" ".join(str(e).split())) from e
    print(
        f"Wrote {args.output}: {small.count_params():,} parameters (was {model.count_params():,})"
    )
    return 0


def _add_export(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="model to export (.keras)")
    parser.add_argument("-o", "--output", required=True, help="the .tflite file to write")
    parser.add_argument(
        "--quantize",
        choices=["none", "dynamic", "float16", "int8", "int16x8"],
        default="int8",
        help="quantization (default: %(default)s; int8 and int16x8 need --calibration)",
    )
    parser.add_argument(
        "--calibration", metavar="DATA.npz", help="calibration examples: array 'x' in a .npz"
    )
    parser.add_argument(
        "--verify", metavar="DATA.npz", help="compare with the Keras model on 'x' (and 'y')"
    )
    parser.add_argument("--micro", metavar="DIR", help="also write a TFLite Micro .h/.cc here")
    parser.add_argument("--sparse", action="store_true", help="TFLite sparse weight encoding")
    parser.add_argument("--float-io", action="store_true", help="int8 with float32 I/O")
    parser.add_argument(
        "--no-shrink", action="store_true", help="do not remove pruned channels first"
    )


def _writable(path: str, argname: str) -> None:
    from tfprune.export._io import output_path

    try:
        output_path(path, argname)
    except (TypeError, OSError) as e:
        raise CliError(" ".join(str(e).split())) from e


def _micro_name(output: str) -> str:
    """A C identifier from the output file name (`model_` in front when it is not one)."""
    from tfprune._validate import c_identifier

    name = os.path.splitext(os.path.basename(output))[0]
    name = "".join(c if c.isalnum() else "_" for c in name)
    try:
        return c_identifier("name", name)
    except ValueError:
        return f"model_{name}"


def _run_export(args: argparse.Namespace) -> int:
    if not args.output.lower().endswith(".tflite"):
        raise CliError(f"--output must be a .tflite file, got: {args.output}")
    _existing(args.input, (".keras",), "Keras model")
    _writable(args.output, "--output")
    if args.micro:
        if os.path.exists(args.micro) and not os.path.isdir(args.micro):
            raise CliError(
                f"--micro must be a folder (created if missing), but {args.micro} is a file; "
                "choose another folder"
            )
        if os.path.isdir(args.micro):
            _writable(os.path.join(args.micro, "model.h"), "--micro")
    quantize = None if args.quantize == "none" else args.quantize
    if quantize in ("int8", "int16x8") and not args.calibration:
        raise CliError(
            f"--quantize {quantize} needs --calibration DATA.npz (100-500 training examples "
            "as array 'x'), or use --quantize dynamic"
        )
    model = _load_keras(args.input)
    calibration = _load_npz(args.calibration, "calibration")[0] if args.calibration else None
    verify = None
    if args.verify:
        x, y = _load_npz(args.verify, "verification")
        verify = x if y is None else (x, y)
    import warnings

    from tfprune import export

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            result = export.tflite(
                model,
                args.output,
                quantize=quantize,
                representative_data=calibration,
                sparse=args.sparse,
                shrink=not args.no_shrink,
                verify_data=verify,
                int8_io=not args.float_io,
            )
        print(result.format())
        for w in caught:
            print(f"tfprune export: warning: {w.message}", file=sys.stderr)
        if args.micro:
            micro = export.micro(args.output, args.micro, _micro_name(args.output))
            print(
                f"Wrote {micro.header} and {micro.source}: {micro.size:,} bytes, "
                f"{len(micro.ops)} ops, arena {micro.arena_size:,} bytes ({micro.arena_source})"
            )
    except (ValueError, TypeError, RuntimeError, OSError, ImportError) as e:
        raise CliError(" ".join(str(e).split())) from e
    return 0


def _add_bench(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a .tflite file")
    parser.add_argument("--threads", type=int, default=1, help="interpreter threads")
    parser.add_argument("--runs", type=int, default=200, help="timed runs (default: 200)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed runs first")


def _run_bench(args: argparse.Namespace) -> int:
    from tfprune.export import latency

    _existing(args.model, (".tflite",), "TFLite model")
    try:
        result = latency(args.model, threads=args.threads, runs=args.runs, warmup=args.warmup)
    except (ValueError, RuntimeError) as e:
        raise CliError(" ".join(str(e).split())) from e
    print(f"{args.model}: {result.format()}")
    return 0


def _mcu(name: str) -> Callable:
    def call(arg):
        from tfprune import _mcu_cli

        return getattr(_mcu_cli, name)(arg)

    return call


_COMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    "demo": (
        "train, prune and export a small CNN on scikit-learn's digits",
        _add_demo,
        _run_demo,
    ),
    "summary": (
        "per-layer table of a .keras model, or tensors, ops and sizes of a .tflite file",
        _add_summary,
        _run_summary,
    ),
    "shrink": (
        "physically remove pruned channels: IN.keras -> OUT.keras",
        _add_shrink,
        _run_shrink,
    ),
    "export": (
        "export a .keras model to a verified TFLite file (and TFLite Micro C source)",
        _add_export,
        _run_export,
    ),
    "bench": (
        "median invoke latency of a .tflite file in the LiteRT interpreter",
        _add_bench,
        _run_bench,
    ),
    "fit": (
        "prune a .keras model until its int8 file meets flash/arena/MACs/latency limits",
        _mcu("add_fit"),
        _mcu("run_fit"),
    ),
    "micro": (
        "TFLite Micro C source for a .tflite file; --verify runs it in the real interpreter",
        _mcu("add_micro"),
        _mcu("run_micro"),
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
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show TensorFlow's native log lines (hidden by default)",
    )
    parser = argparse.ArgumentParser(
        prog="tfprune", description=__doc__.splitlines()[0], parents=[common]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments, _) in _COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text, description=help_text, parents=[common]))
    args = parser.parse_args(argv)
    try:
        return _COMMANDS[args.command][2](args)
    except CliError as e:
        print(f"tfprune {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
