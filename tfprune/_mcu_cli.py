"""The `tfprune fit` and `tfprune micro` subcommands (registered in `tfprune.cli`)."""

from __future__ import annotations

import argparse
import os
import re

__all__ = ["add_fit", "add_micro", "parse_size", "run_fit", "run_micro"]

_UNITS = {"": 1, "b": 1, "kb": 1024, "kib": 1024, "mb": 1024**2, "mib": 1024**2}


def parse_size(text: str) -> int:
    """`"96KB"` -> 98304 bytes (KB and KiB are 1,024 bytes, MB 1,024**2; plain digits: bytes)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(
            f"expected a size such as 96KB, 1.5MB or 32768, got: {text!r}"
        )
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def add_fit(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="the model to prune (.keras)")
    parser.add_argument("-o", "--output", required=True, help="the pruned model (.keras)")
    parser.add_argument(
        "--data", required=True, metavar="CALIB.npz", help="arrays 'x' (and labels 'y')"
    )
    parser.add_argument("--flash", type=parse_size, help="int8 file size limit, e.g. 96KB")
    parser.add_argument("--arena", type=parse_size, help="TFLite Micro arena limit, e.g. 32KB")
    parser.add_argument("--macs", type=int, help="MACs per example limit")
    parser.add_argument("--latency-ms", type=float, help="LiteRT latency limit on this machine")
    parser.add_argument("--step", type=float, default=0.05, help="channels per step (fraction)")
    parser.add_argument(
        "--criterion",
        default="l1",
        help="channel importance: l1 (default), loss or taylor (these two need labels 'y' "
        "in --data and a compiled model)",
    )


def run_fit(args: argparse.Namespace) -> int:
    from tfprune.budget import Budget, fit_budget
    from tfprune.cli import CliError, _load_keras, _load_npz
    from tfprune.export._io import atomic_path

    if not args.output.lower().endswith(".keras"):
        raise CliError(f"--output must be a .keras file, got: {args.output}")
    latency = None if args.latency_ms is None else args.latency_ms / 1e3
    try:
        budget = Budget(flash=args.flash, arena=args.arena, macs=args.macs, latency=latency)
    except ValueError as e:
        raise CliError(f"{e} (pass --flash, --arena, --macs or --latency-ms)") from e
    model = _load_keras(args.model)
    x, y = _load_npz(args.data, "calibration")
    if y is None and args.criterion in ("loss", "taylor"):
        raise CliError(
            f"--criterion {args.criterion} needs labels: save them as 'y' in {args.data}, "
            "e.g. np.savez(path, x=x, y=y)"
        )
    data = x if y is None else (x, y)
    try:
        small, report = fit_budget(model, budget, data, step=args.step, criterion=args.criterion)
        with atomic_path(args.output, suffix=".keras") as tmp:
            small.save(tmp)
    except (ValueError, TypeError, RuntimeError, FileNotFoundError) as e:
        raise CliError(" ".join(str(e).split())) from e
    print(report.format())
    print(f"Wrote {args.output}")
    return 0


def add_micro(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="an int8 .tflite file")
    parser.add_argument("--out", default=".", help="folder for NAME.h and NAME.cc")
    parser.add_argument("--name", help="C identifier (default: from the file name)")
    parser.add_argument(
        "--verify",
        nargs="?",
        const="",
        metavar="DATA.npz",
        help="run in the TFLite Micro interpreter (arena measured); with DATA.npz also compare "
        "outputs with LiteRT's reference kernels",
    )
    parser.add_argument(
        "--compress",
        action="store_true",
        help="write the LUT-compressed model (tensors with few distinct values as b-bit indices "
        "where that saves flash); with --verify, checked against the uncompressed one",
    )


def run_micro(args: argparse.Namespace) -> int:
    from tfprune.cli import CliError, _existing, _load_npz
    from tfprune.export import micro, tflm

    _existing(args.model, (".tflite",), "TFLite model")
    name = args.name or re.sub(r"\W", "_", os.path.splitext(os.path.basename(args.model))[0])
    name = f"model_{name}" if name[:1].isdigit() else name
    data = None
    if args.verify:
        x, y = _load_npz(args.verify, "verification")
        data = x if y is None else (x, y)
    if args.verify is not None and not tflm.available():
        raise CliError("--verify needs tflite-micro: pip install 'tfprune[micro]'")
    try:
        result = micro(
            args.model,
            args.out,
            name,
            verify_data=data,
            measure=args.verify is not None,
            compress=args.compress,
        )
    except (ValueError, RuntimeError, ImportError, FileNotFoundError) as e:
        raise CliError(" ".join(str(e).split())) from e
    print(
        f"Wrote {result.header} and {result.source}: {result.size:,} bytes, {len(result.ops)} ops"
    )
    print(f"Arena: {result.arena_size:,} bytes ({result.arena_source})")
    if result.compression is not None:
        print(result.compression.format())
    if result.lut is not None:
        print(result.lut.format())
    elif result.measured is not None:
        print(result.measured.format())
    return 0
