"""Export rewrites: int8 latency with and without them, and candidates that were measured.

Usage, from the repository root: `PYTHONPATH=. python benchmarks/rewrite.py [--size 64]`;
`--layers` times single depthwise layers instead (28x28x96, kernel 3, 5 and 7, as grouped
`Conv2D`, as `DepthwiseConv2D` and, for 7x7, split into <= 5x5 pieces; int8 and float32).

Every file is written by `tfprune.export.tflite(..., quantize="int8")` from the same model
with random weights; "none" disables the rewrite step (for ConvNeXt it keeps the
LayerNormalization rewrite, without which its int8 export is refused), the other rows set
`tfprune.export.rewrite.REWRITES` for that export only; `--no-candidates` skips the
candidates that are not in `REWRITES`. Constant weights (LayerScale, norms,
biases) are randomised first, as in the coverage matrix. Latency: 1 thread, median of
interleaved rounds (`_bench.latencies`), as ratios against "none" of the same model.

- ConvNeXtTiny: grouped `Conv2D(groups=C)` -> `DepthwiseConv2D` (in `REWRITES`), then
  the 7x7 depthwise kernels split into <= 5x5 pieces (`SplitDepthwise`, in `REWRITES`),
  and as a candidate on top of the first, `Dense` on 4-D inputs -> 1x1 `Conv2D`.
- A ResNeXt-style stack (keras.applications has no model with grouped convolutions other
  than ConvNeXt's depthwise ones): three bottleneck blocks, 3x3 `Conv2D(128, groups=32)`;
  candidate grouped `Conv2D` -> split + one `Conv2D` per group + concatenate.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
from unittest import mock

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
from _bench import latencies, machine
from _results import publish
from coverage import randomise

import tfprune
from tfprune.export import REWRITES, Rewrite


def _dense_on_4d(layer) -> bool:
    return type(layer) is keras.layers.Dense and len(layer.input.shape) == 4


def _to_conv1x1(layer):
    new = keras.layers.Conv2D(
        layer.units, 1, activation=layer.activation, use_bias=layer.use_bias, name=layer.name
    )
    kernel = keras.ops.convert_to_numpy(layer.kernel)
    new.build((None, None, None, kernel.shape[0]))
    bias = [keras.ops.convert_to_numpy(layer.bias)] if layer.use_bias else []
    new.set_weights([kernel[None, None], *bias])
    return new


class _SplitGroups(keras.layers.Layer):
    """A grouped Conv2D as split + one Conv2D per group + concatenate (candidate)."""

    def __init__(self, layer, **kwargs):
        super().__init__(name=layer.name, **kwargs)
        self.groups = layer.groups
        kernel = keras.ops.convert_to_numpy(layer.kernel)
        bias = keras.ops.convert_to_numpy(layer.bias) if layer.use_bias else None
        per = layer.filters // layer.groups
        self.convs = []
        for g in range(layer.groups):
            conv = keras.layers.Conv2D(
                per,
                layer.kernel_size,
                strides=layer.strides,
                padding=layer.padding,
                dilation_rate=layer.dilation_rate,
                activation=layer.activation,
                use_bias=layer.use_bias,
            )
            conv.build((None, None, None, kernel.shape[2]))
            w = [kernel[..., g * per : (g + 1) * per]]
            conv.set_weights(w + ([bias[g * per : (g + 1) * per]] if bias is not None else []))
            self.convs.append(conv)

    def call(self, x):
        parts = keras.ops.split(x, self.groups, axis=-1)
        return keras.ops.concatenate([c(p) for c, p in zip(self.convs, parts)], axis=-1)


def resnext(size: int) -> keras.Model:
    """Three ResNeXt bottleneck blocks (1x1 -> grouped 3x3, 32 groups of 4 -> 1x1) and a head."""
    i = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(64, 3, strides=2, padding="same", activation="relu")(i)
    for _ in range(3):
        y = keras.layers.Conv2D(128, 1, activation="relu")(x)
        y = keras.layers.Conv2D(128, 3, padding="same", groups=32, activation="relu")(y)
        x = keras.layers.Add()([x, keras.layers.Conv2D(64, 1)(y)])
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(i, keras.layers.Dense(10)(x))


def _grouped(layer) -> bool:
    return type(layer) is keras.layers.Conv2D and layer.groups > 1


CANDIDATES = {
    "Dense on 4-D -> 1x1 Conv2D": Rewrite("dense4d", _dense_on_4d, _to_conv1x1),
    "grouped Conv2D -> split + convs + concat": Rewrite("split", _grouped, _SplitGroups),
}


def _export(model, x, path, table) -> tuple[str, ...]:
    with mock.patch("tfprune.export.rewrite.REWRITES", table):
        result = tfprune.export.tflite(
            model, path, quantize="int8", representative_data=x, verify_data=x, shrink=False
        )
    scale = float(np.abs(model.predict(x, verbose=0)).max())
    return result.ops, result.verification.max_abs_error / scale


def _rewrites(*names: str) -> tuple[Rewrite, ...]:
    """The entries of `REWRITES` with these names."""
    return tuple(r for r in REWRITES if r.name in names)


# Without the LayerNormalization rewrite ConvNeXt's int8 file keeps a float NEG per
# LayerNormalization and `tfprune.export.tflite` refuses it, so every ConvNeXt row has it.
_LAYER_NORM = _rewrites("LayerNormalization -> centered, no NEG")
_DEPTHWISE = _rewrites("grouped Conv2D -> DepthwiseConv2D")
_SPLIT = "depthwise kernel > 5x5 -> sum of <= 5x5"


def _depthwise_layer(kernel: int) -> keras.Model:
    i = keras.Input((28, 28, 96))
    return keras.Model(i, keras.layers.Conv2D(96, kernel, padding="same", groups=96)(i))


def layers_table(rounds: int, write: bool) -> None:
    """Single depthwise layers: does LiteRT run the grouped form or the kernel size slowly?"""
    x = np.random.default_rng(0).uniform(size=(16, 28, 28, 96)).astype("float32")
    forms = {"grouped Conv2D": (), "DepthwiseConv2D": _DEPTHWISE, "split <= 5x5": REWRITES}
    cases = [
        (k, q, form)
        for k in (3, 5, 7)
        for q in ("int8", None)
        for form in forms
        if k > 5 or form != "split <= 5x5"
    ]
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for k, q, form in cases:
            path = os.path.join(tmp, f"{k}{q}{form[0]}.tflite")
            table = forms[form]
            with mock.patch("tfprune.export.rewrite.REWRITES", table):
                tfprune.export.tflite(
                    _depthwise_layer(k), path, quantize=q, representative_data=x, shrink=False
                )
            paths.append(path)
        times = latencies(paths, threads=1, rounds=rounds, runs=20, warmup=3)
    lines = ["| kernel | type | form | latency (ms) |", "| --- | --- | --- | --- |"]
    for (k, q, form), t in zip(cases, times):
        lines.append(f"| {k}x{k} | {q or 'float32'} | {form} | {t * 1e3:.3f} |")
    publish(
        [
            "## Export rewrites: single depthwise layers (benchmarks/rewrite.py --layers)",
            "",
            "Command: `PYTHONPATH=. python benchmarks/rewrite.py --layers`. Machine: "
            f"{machine()}. Date: {datetime.date.today().isoformat()}. One depthwise layer on a "
            "28x28x96 input, written as `Conv2D(96, k, groups=96)` (grouped) or rewritten to "
            "`DepthwiseConv2D` or (7x7) to a sum of four <= 5x5 depthwise convolutions "
            f"(`SplitDepthwise`); 1 thread, best of {rounds} interleaved rounds of the median "
            "of 20 invokes.",
            "",
            *lines,
            "",
        ],
        write=write,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="input size in pixels")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved latency rounds")
    parser.add_argument("--no-write", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument("--layers", action="store_true", help="time single depthwise layers")
    parser.add_argument("--no-candidates", action="store_true", help="skip candidate rewrites")
    args = parser.parse_args(argv)
    if args.layers:
        layers_table(args.rounds, write=not args.no_write)
        return 0
    cases = [
        ("ConvNeXtTiny", "none (LayerNormalization rewrite only)", _LAYER_NORM),
        ("ConvNeXtTiny", "grouped Conv2D -> DepthwiseConv2D", (*_LAYER_NORM, *_DEPTHWISE)),
        ("ConvNeXtTiny", f"DepthwiseConv2D + {_SPLIT} (REWRITES)", REWRITES),
        (
            "ConvNeXtTiny",
            "DepthwiseConv2D + Dense on 4-D -> 1x1 Conv2D (candidate)",
            (*_LAYER_NORM, *_DEPTHWISE, CANDIDATES["Dense on 4-D -> 1x1 Conv2D"]),
        ),
        ("ResNeXt blocks", "none", ()),
        (
            "ResNeXt blocks",
            "grouped Conv2D -> split + convs + concat (candidate)",
            (CANDIDATES["grouped Conv2D -> split + convs + concat"],),
        ),
    ]
    if args.no_candidates:
        cases = [case for case in cases if "(candidate)" not in case[1]]
    models, rows = {}, []
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (8, args.size, args.size, 3)).astype("float32")
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, (name, label, table) in enumerate(cases):
            if name not in models:
                keras.utils.set_random_seed(0)
                if name == "ConvNeXtTiny":
                    models[name] = keras.applications.ConvNeXtTiny(
                        weights=None, input_shape=(args.size, args.size, 3)
                    )
                else:
                    models[name] = resnext(args.size)
                randomise(models[name])  # LayerScale (1e-6) would hide ConvNeXt's branches
            path = os.path.join(tmp, f"{i}.tflite")
            ops, err = _export(models[name], x, path, table)
            paths.append(path)
            rows.append((name, label, ops, err, os.path.getsize(path)))
        times = latencies(paths, threads=1, rounds=args.rounds, runs=20, warmup=3)
    base = {}
    lines = [
        "| model | rewrite | int8 latency (ms) | vs none | CONV_2D / DEPTHWISE_CONV_2D / "
        "FULLY_CONNECTED | max error / max output |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for (name, label, ops, err, _), t in zip(rows, times):
        base.setdefault(name, t)
        counts = " / ".join(
            str(ops.count(op)) for op in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
        )
        lines.append(
            f"| {name} | {label} | {t * 1e3:.2f} | {t / base[name]:.3f}x | {counts} | {err:.3f} |"
        )
    publish(
        [
            "## Export rewrites: int8 latency (benchmarks/rewrite.py)",
            "",
            f"Command: `PYTHONPATH=. python benchmarks/rewrite.py --size {args.size}"
            f"{' --no-candidates' if args.no_candidates else ''}`. "
            f"Machine: {machine()}. "
            f"Date: {datetime.date.today().isoformat()}. Models with "
            f"random weights at {args.size}x{args.size} px, int8 (int8 I/O), 1 thread, best "
            f"of {args.rounds} interleaved rounds of the median of 20 invokes. Ratios against "
            "the same model's 'none' row (ConvNeXt: the LayerNormalization rewrite only, "
            "without which its int8 file is refused).",
            "",
            *lines,
            "",
        ],
        write=not args.no_write,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
