"""The catalogue of bad inputs: each one is refused with the exception a Python user expects,
a message that names the argument (or layer) and says the fix, and no file left behind.

The same list, as a table for users, is `docs/troubleshooting.md`.
"""

from __future__ import annotations

import math
import os
import types
import warnings

import keras
import numpy as np
import pytest

import tfprune
from tfprune import cli, demo, export
from tfprune.lottery import Ticket


def _dense(name: str = "net") -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((4,), name="x"),
            keras.layers.Dense(6, name="d1"),
            keras.layers.Dense(3, name="out"),
        ],
        name=name,
    )


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(2)

    def call(self, x):
        return self.dense(x)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Input files shared by the cases: good, damaged and junk ones."""
    files = tmp_path_factory.mktemp("inputs")
    export.tflite(_dense(), files / "net.tflite")
    tflite = (files / "net.tflite").read_bytes()
    garbage = tflite[:8] + b"\xff" * 64  # a valid header, a garbage body
    (files / "garbage.tflite").write_bytes(garbage)
    (files / "junk.npz").write_bytes(b"this is not a zip archive")
    _dense().save(files / "net.keras")
    (files / "truncated.keras").write_bytes((files / "net.keras").read_bytes()[:300])
    (files / "a_file").write_text("x")
    return types.SimpleNamespace(files=files, tflite=tflite, garbage=garbage)


@pytest.fixture
def ctx(tmp_path, inputs):
    """A tiny model, the shared input files and an empty output folder for one case."""
    out = tmp_path / "out"
    out.mkdir()
    return types.SimpleNamespace(model=_dense(), out=out, **vars(inputs))


def _nan_model() -> keras.Model:
    model = _dense()
    model.get_layer("d1").kernel.assign(np.full((4, 6), np.nan, np.float32))
    return model


def _wrapped_update(model: keras.Model, **options) -> None:
    """Wraps `model` and runs one mask update (where schedules and criteria are applied)."""
    wrapped = tfprune.wrap(model, **options)
    tfprune.PruningController(wrapped).update(0)


_X = np.zeros((8, 4), np.float32)

# (id, exception, call(ctx), words the message must contain: the argument and the fix)
CASES = [
    # --- tfprune.wrap / Prunable ---------------------------------------------------------
    (
        "wrap-exclude-int",
        TypeError,
        lambda c: tfprune.wrap(c.model, 0.5, exclude=123),
        ["exclude=123", "list of layer names"],
    ),
    (
        "wrap-layers-missing",
        ValueError,
        lambda c: tfprune.wrap(c.model, 0.5, layers=["nope"]),
        ["`layers`", "'nope'", "Layers in the model"],
    ),
    (
        "wrap-sparsity-one",
        ValueError,
        lambda c: tfprune.wrap(c.model, 1.0),
        ["sparsity=1.0", "[0, 1)"],
    ),
    (
        "wrap-sparsity-negative",
        ValueError,
        lambda c: tfprune.wrap(c.model, -0.1),
        ["sparsity=-0.1", "[0, 1)"],
    ),
    (
        "wrap-sparsity-nan",
        ValueError,
        lambda c: tfprune.wrap(c.model, math.nan),
        ["sparsity=nan", "[0, 1)"],
    ),
    (
        "wrap-sparsity-str",
        TypeError,
        lambda c: tfprune.wrap(c.model, "0.5"),
        ["sparsity='0.5'", "float in [0, 1)"],
    ),
    (
        "wrap-scope",
        ValueError,
        lambda c: tfprune.wrap(c.model, 0.5, scope="all"),
        ["scope='all'", "'layer', 'global'"],
    ),
    (
        "wrap-criterion",
        ValueError,
        lambda c: tfprune.wrap(c.model, 0.5, criterion="biggest"),
        ["criterion='biggest'", "'magnitude'"],
    ),
    (
        "wrap-criterion-type",
        TypeError,
        lambda c: tfprune.wrap(c.model, 0.5, criterion=3),
        ["criterion=3", "callable"],
    ),
    (
        "wrap-granularity-mn",
        ValueError,
        lambda c: tfprune.wrap(c.model, 0.5, granularity="4:2"),
        ["granularity='4:2'", "0 < m < n"],
    ),
    (
        "wrap-max-layer-sparsity",
        ValueError,
        lambda c: tfprune.wrap(c.model, 0.5, scope="global", max_layer_sparsity=1.5),
        ["max_layer_sparsity=1.5", "[0, 1)"],
    ),
    (
        "wrap-twice",
        ValueError,
        lambda c: tfprune.wrap(tfprune.wrap(c.model, 0.5), 0.5),
        ["already wrapped", "tfprune.strip(model) first"],
    ),
    (
        "wrap-not-a-model",
        TypeError,
        lambda c: tfprune.wrap("model.keras", 0.5),
        ["model='model.keras'", "Keras model or layer"],
    ),
    (
        "wrap-subclassed",
        TypeError,
        lambda c: tfprune.wrap(_Subclassed(), 0.5),
        ["subclassed model", "Wrap its layers in its __init__"],
    ),
    (
        "prunable-unsupported",
        ValueError,
        lambda c: tfprune.Prunable(keras.layers.ReLU(name="act"), sparsity=0.5),
        ["'act'", "tfprune.layers.register"],
    ),
    (
        "strip-not-a-model",
        TypeError,
        lambda c: tfprune.strip(123),
        ["model=123", "tfprune.Prunable"],
    ),
    # --- schedules ---------------------------------------------------------------------
    (
        "constant-target-one",
        ValueError,
        lambda c: tfprune.schedules.ConstantSparsity(1.0),
        ["target=1.0", "[0, 1)"],
    ),
    (
        "constant-frequency-zero",
        ValueError,
        lambda c: tfprune.schedules.ConstantSparsity(0.5, frequency=0),
        ["frequency=0", "positive integer"],
    ),
    (
        "constant-begin-negative",
        ValueError,
        lambda c: tfprune.schedules.ConstantSparsity(0.5, begin_step=-1),
        ["begin_step=-1", "non-negative integer"],
    ),
    (
        "polynomial-power-nan",
        ValueError,
        lambda c: tfprune.schedules.PolynomialDecay(0.0, 0.5, 0, 100, power=math.nan),
        ["power=nan", "finite number > 0"],
    ),
    (
        "polynomial-power-negative",
        ValueError,
        lambda c: tfprune.schedules.PolynomialDecay(0.0, 0.5, 0, 100, power=-1),
        ["power=-1", "finite number > 0"],
    ),
    (
        "polynomial-power-str",
        TypeError,
        lambda c: tfprune.schedules.PolynomialDecay(0.0, 0.5, 0, 100, power="3"),
        ["power='3'", "positive number"],
    ),
    (
        "polynomial-end-equals-begin",
        ValueError,
        lambda c: tfprune.schedules.PolynomialDecay(0.0, 0.5, 10, 10),
        ["end_step=10", "`end_step` > `begin_step`"],
    ),
    (
        "polynomial-final-one",
        ValueError,
        lambda c: tfprune.schedules.PolynomialDecay(0.0, 1.0, 0, 100),
        ["final=1.0", "[0, 1)"],
    ),
    (
        "schedule-bare-float",
        TypeError,
        lambda c: _wrapped_update(c.model, sparsity=lambda step: 0.5),
        ["returned 0.5", "`(should_prune, sparsity)`", "return step % 100 == 0, 0.5"],
    ),
    (
        "schedule-returns-one",
        ValueError,
        lambda c: _wrapped_update(c.model, sparsity=lambda step: (True, 1.0)),
        ["sparsity=1.0", "[0, 1)"],
    ),
    # --- PruningController ----------------------------------------------------------------
    (
        "controller-update-str",
        TypeError,
        lambda c: tfprune.PruningController(tfprune.wrap(c.model, 0.5)).update("x"),
        ["step='x'", "integer >= 0"],
    ),
    (
        "controller-set-step-negative",
        ValueError,
        lambda c: tfprune.PruningController(tfprune.wrap(c.model, 0.5)).set_step(-1),
        ["step=-1", "integer >= 0"],
    ),
    (
        "controller-no-prunable",
        ValueError,
        lambda c: tfprune.PruningController(c.model),
        ["tfprune.wrap"],
    ),
    (
        "nan-weights",
        ValueError,
        lambda c: _wrapped_update(_nan_model(), sparsity=0.5),
        ["layer 'd1'", "NaN", "lower the learning rate"],
    ),
    (
        "nan-criterion",
        ValueError,
        lambda c: _wrapped_update(c.model, sparsity=0.5, criterion=lambda w: w * np.nan),
        ["layer 'd1'", "criterion scores", "fix the criterion"],
    ),
    # --- prune_channels -------------------------------------------------------------------
    (
        "channels-subclassed",
        TypeError,
        lambda c: tfprune.prune_channels(_Subclassed()),
        ["subclassed model", "tfprune.prune_channels"],
    ),
    (
        "channels-not-a-model",
        TypeError,
        lambda c: tfprune.prune_channels("m"),
        ["model='m'", "Sequential or functional"],
    ),
    (
        "channels-ratio-one",
        ValueError,
        lambda c: tfprune.prune_channels(c.model, ratio=1.0),
        ["ratio=1.0", "fraction of channels removed"],
    ),
    (
        "channels-ratio-str",
        TypeError,
        lambda c: tfprune.prune_channels(c.model, ratio="half"),
        ["ratio='half'", "fraction of channels removed"],
    ),
    (
        "channels-scope",
        ValueError,
        lambda c: tfprune.prune_channels(c.model, scope="model"),
        ["scope='model'", "'layer', 'global'"],
    ),
    (
        "channels-round-to",
        ValueError,
        lambda c: tfprune.prune_channels(c.model, round_to=0),
        ["round_to=0", "positive integer or None"],
    ),
    (
        "channels-min-channels",
        ValueError,
        lambda c: tfprune.prune_channels(c.model, min_channels=0),
        ["min_channels=0", "positive integer"],
    ),
    (
        "channels-ignore-missing",
        ValueError,
        lambda c: tfprune.prune_channels(c.model, ignore=["nope"]),
        ["`ignore`", "'nope'", "names of producer layers"],
    ),
    (
        "channels-criterion",
        ValueError,
        lambda c: tfprune.prune_channels(c.model, criterion="size"),
        ["criterion='size'", "'l1'"],
    ),
    # --- export.tflite ------------------------------------------------------------------
    (
        "tflite-batch-size-zero",
        ValueError,
        lambda c: export.tflite(c.model, c.out / "m.tflite", batch_size=0),
        ["batch_size=0", "integer >= 1 (or None)"],
    ),
    (
        "tflite-batch-size-negative",
        ValueError,
        lambda c: export.tflite(c.model, c.out / "m.tflite", batch_size=-3),
        ["batch_size=-3", "integer >= 1 (or None)"],
    ),
    (
        "tflite-batch-size-str",
        TypeError,
        lambda c: export.tflite(c.model, c.out / "m.tflite", batch_size="1"),
        ["batch_size='1'", "integer >= 1 or None"],
    ),
    (
        "tflite-calibration-size-zero",
        ValueError,
        lambda c: export.tflite(c.model, c.out / "m.tflite", "int8", _X, calibration_size=0),
        ["calibration_size=0", "integer >= 1 (or None)"],
    ),
    (
        "tflite-calibration-size-negative",
        ValueError,
        lambda c: export.tflite(c.model, c.out / "m.tflite", "int8", _X, calibration_size=-1),
        ["calibration_size=-1", "integer >= 1 (or None)"],
    ),
    (
        "tflite-path-int",
        TypeError,
        lambda c: export.tflite(c.model, 123),
        ["path=123", "file path"],
    ),
    (
        "tflite-path-is-folder",
        IsADirectoryError,
        lambda c: export.tflite(c.model, c.out),
        ["is a folder", "Give a file name inside it"],
    ),
    (
        "tflite-folder-missing",
        FileNotFoundError,
        lambda c: export.tflite(c.model, c.out / "no" / "m.tflite"),
        ["does not exist", "Create it first"],
    ),
    (
        "tflite-folder-is-file",
        NotADirectoryError,
        lambda c: export.tflite(c.model, c.files / "a_file" / "m.tflite"),
        ["is a file", "Choose another folder"],
    ),
    (
        "tflite-quantize",
        ValueError,
        lambda c: export.tflite(c.model, c.out / "m.tflite", "int4"),
        ["quantize='int4'", "'int8'"],
    ),
    (
        "tflite-int8-no-data",
        ValueError,
        lambda c: export.tflite(c.model, c.out / "m.tflite", "int8"),
        ["representative_data=None", "representative_data=x_train[:300]"],
    ),
    (
        "tflite-calibration-str",
        TypeError,
        lambda c: export.tflite(c.model, c.out / "m.tflite", "int8", "x_train.npy"),
        ["representative_data of type str", "numpy array"],
    ),
    (
        "tflite-calibration-nan",
        ValueError,
        lambda c: export.tflite(c.model, c.out / "m.tflite", "int8", _X * np.nan),
        ["`representative_data` contains NaN", "Pass finite training examples"],
    ),
    (
        "tflite-calibration-shape",
        ValueError,
        lambda c: export.tflite(c.model, c.out / "m.tflite", "int8", np.zeros((8, 5), "float32")),
        ["`representative_data` does not fit", "expects (4,)"],
    ),
    (
        "tflite-calibration-empty",
        ValueError,
        lambda c: export.tflite(c.model, c.out / "m.tflite", "int8", []),
        ["`representative_data` is empty", "100-500 training examples"],
    ),
    (
        "tflite-nan-weights",
        ValueError,
        lambda c: export.tflite(_nan_model(), c.out / "m.tflite", "int8", _X),
        ["'net/d1/kernel'", "NaN", "restart from a finite checkpoint"],
    ),
    (
        "tflite-not-a-model",
        TypeError,
        lambda c: export.tflite("m.keras", c.out / "m.tflite"),
        ["model of type str", "keras.Model"],
    ),
    (
        "tflite-on-sparse-failure",
        ValueError,
        lambda c: export.tflite(c.model, c.out / "m.tflite", on_sparse_failure="skip"),
        ["on_sparse_failure='skip'", "'dense' or 'raise'"],
    ),
    # --- export.verify / describe / latency ----------------------------------------------
    (
        "verify-y-length",
        ValueError,
        lambda c: export.verify(c.tflite, (_X, np.zeros(5, "int32"))),
        ["8 examples but 5 labels", "one integer label per example"],
    ),
    (
        "verify-x-shape",
        ValueError,
        lambda c: export.verify(c.tflite, np.zeros((8, 5), "f4")),
        ["x.shape=(8, 5)", "Pass data shaped (n, 4)"],
    ),
    (
        "describe-garbage-body",
        ValueError,
        lambda c: export.describe(c.files / "garbage.tflite"),
        ["garbage.tflite", "damaged or truncated; export it again"],
    ),
    (
        "describe-not-tflite",
        ValueError,
        lambda c: export.describe(b"not a flatbuffer"),
        ["'TFL3'", "tfprune.export.tflite"],
    ),
    (
        "describe-missing",
        FileNotFoundError,
        lambda c: export.describe(c.files / "no.tflite"),
        ["no.tflite", "No such .tflite file"],
    ),
    (
        "describe-int",
        TypeError,
        lambda c: export.describe(123),
        ["model of type int", "path to a .tflite file or its bytes"],
    ),
    (
        "latency-threads-zero",
        ValueError,
        lambda c: export.latency(c.tflite, threads=0),
        ["threads=0"],
    ),
    # --- export.micro --------------------------------------------------------------------
    (
        "micro-name-int",
        ValueError,
        lambda c: export.micro(c.tflite, c.out, "int"),
        ["name='int'", "keyword or reserved", "e.g. 'model'"],
    ),
    (
        "micro-name-main",
        ValueError,
        lambda c: export.micro(c.tflite, c.out, "main"),
        ["name='main'", "keyword or reserved"],
    ),
    (
        "micro-name-digit",
        ValueError,
        lambda c: export.micro(c.tflite, c.out, "1model"),
        ["name='1model'", "not starting with a digit"],
    ),
    (
        "micro-name-double-underscore",
        ValueError,
        lambda c: export.micro(c.tflite, c.out, "my__model"),
        ["name='my__model'", "reserved"],
    ),
    (
        "micro-name-dash",
        ValueError,
        lambda c: export.micro(c.tflite, c.out, "my-model"),
        ["name='my-model'", "not a C identifier"],
    ),
    (
        "micro-name-type",
        TypeError,
        lambda c: export.micro(c.tflite, c.out, 5),
        ["name=5", "C identifier"],
    ),
    (
        "micro-out-dir-is-file",
        NotADirectoryError,
        lambda c: export.micro(c.tflite, c.files / "a_file", "model"),
        ["out_dir=", "is a file", "Give a folder path"],
    ),
    (
        "micro-garbage",
        ValueError,
        lambda c: export.micro(c.garbage, c.out, "model"),
        ["the bytes given", "export it again"],
    ),
    # --- loading ---------------------------------------------------------------------------
    (
        "load-truncated",
        ValueError,
        lambda c: tfprune.load_model(c.files / "truncated.keras"),
        ["truncated.keras", "damaged or truncated", "Save the model again"],
    ),
    (
        "load-missing",
        FileNotFoundError,
        lambda c: tfprune.load_model(c.files / "no.keras"),
        ["no.keras", "Check the path"],
    ),
    (
        "load-int",
        TypeError,
        lambda c: tfprune.load_model(123),
        ["path=123", "path of a .keras file"],
    ),
    (
        "ticket-junk-npz",
        ValueError,
        lambda c: Ticket.load(c.files / "junk.npz"),
        ["junk.npz", "damaged or not written by np.savez", "Write it again"],
    ),
    (
        "ticket-missing",
        FileNotFoundError,
        lambda c: Ticket.load(c.files / "no.npz"),
        ["no.npz", "No such .npz file"],
    ),
    # --- demo ------------------------------------------------------------------------------
    (
        "demo-epochs-negative",
        ValueError,
        lambda c: demo.run(epochs=-1, out_dir=str(c.out)),
        ["epochs=-1", "integer >= 1"],
    ),
]


@pytest.mark.parametrize(
    ("exception", "call", "words"), [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
def test_refused(ctx, exception, call, words):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(exception) as info:
            call(ctx)
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in: {message}"
    assert os.listdir(ctx.out) == []


def test_catalogue_has_forty_more_than_the_issue():
    assert len(CASES) >= 16 + 40  # the issue's own list is ~16 entries


def test_numpy_scalars_are_accepted_as_fractions():
    wrapped = tfprune.wrap(_dense(), sparsity=np.float32(0.5))
    tfprune.PruningController(wrapped).update(0)
    assert tfprune.controller.sparsities(tfprune.wrapper.prunable_layers(wrapped)) == {
        "d1/kernel": 0.5,
        "out/kernel": 0.5,
        "global": 0.5,
    }
    schedule = tfprune.schedules.ConstantSparsity(np.float64(0.25))
    assert schedule.target == 0.25 and type(schedule.target) is float
    pruned = tfprune.prune_channels(_dense(), ratio=np.float32(0.5))
    assert pruned.get_layer("d1").kernel.shape == (4, 6)


def _kept(wrapped: keras.Model) -> dict[str, int]:
    return {
        layer.name: int(np.sum(keras.ops.convert_to_numpy(t.mask)))
        for layer in tfprune.wrapper.prunable_layers(wrapped)
        for t in layer.targets
    }


def test_sparsity_near_one_keeps_a_weight_per_layer_and_warns():
    wrapped = tfprune.wrap(_dense(), sparsity=0.999999)
    with pytest.warns(RuntimeWarning, match=r"rounds to pruning all of them; keeping 1"):
        tfprune.PruningController(wrapped).update(0)
    assert _kept(wrapped) == {"d1": 1, "out": 1}


def test_global_sparsity_near_one_keeps_a_weight_per_layer_and_warns():
    wrapped = tfprune.wrap(_dense(), sparsity=0.9999, scope="global")
    with pytest.warns(
        RuntimeWarning,
        match=r"each keeps at least one unit, so 40 of 42 units are pruned instead of 42",
    ):
        tfprune.PruningController(wrapped).update(0)
    assert _kept(wrapped) == {"d1": 1, "out": 1}


def test_user_ceiling_still_refuses_an_unreachable_global_target():
    wrapped = tfprune.wrap(_dense(), sparsity=0.9, scope="global", max_layer_sparsity=0.5)
    with pytest.raises(ValueError, match=r"Raise `max_layer_sparsity` or lower the target"):
        tfprune.PruningController(wrapped).update(0)


def test_read_only_folder_is_reported_before_conversion(ctx, monkeypatch):
    # As root, chmod cannot make a folder unwritable, so ask what a read-only folder answers.
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if str(p) == str(ctx.out) else real_access(p, mode)
    )
    with pytest.raises(PermissionError) as info:
        export.tflite(ctx.model, ctx.out / "m.tflite")
    assert str(ctx.out) in str(info.value) and "Choose a writable folder" in str(info.value)
    assert ".tfprune-tmp-" not in str(info.value)
    assert os.listdir(ctx.out) == []


# --- the command line: one line `tfprune <cmd>: error: ...`, exit status 2 ----------------


def _cli(capsys, *argv) -> tuple[int, str]:
    try:
        status = cli.main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own errors
        status = e.code
    err = capsys.readouterr().err
    return status, err


CLI_CASES = [
    (
        "demo-epochs",
        lambda c: ["demo", "--epochs", "-1", "--out", c.out],
        "tfprune demo: error: Expected `epochs` to be an integer >= 1. Received: epochs=-1",
    ),
    (
        "demo-epochs-str",
        lambda c: ["demo", "--epochs", "many", "--out", c.out],
        "tfprune demo: error: argument --epochs: invalid int value: 'many'",
    ),
    (
        "bench-threads",
        lambda c: ["bench", c.files / "net.tflite", "--threads", "0"],
        "tfprune bench: error: Expected `threads` to be an integer >= 1",
    ),
    (
        "bench-runs",
        lambda c: ["bench", c.files / "net.tflite", "--runs", "0"],
        "tfprune bench: error: Expected `runs` to be an integer >= 1",
    ),
    (
        "summary-garbage",
        lambda c: ["summary", c.files / "garbage.tflite"],
        "tfprune summary: error: Could not parse the TFLite flatbuffer",
    ),
    (
        "summary-truncated-keras",
        lambda c: ["summary", c.files / "truncated.keras"],
        "tfprune summary: error: could not load",
    ),
    (
        "export-micro-onto-file",
        lambda c: [
            "export",
            c.files / "net.keras",
            "-o",
            c.out / "d.tflite",
            "--quantize",
            "none",
            "--micro",
            c.files / "a_file",
        ],
        "tfprune export: error: --micro must be a folder (created if missing)",
    ),
    (
        "export-output-missing-folder",
        lambda c: [
            "export",
            c.files / "net.keras",
            "-o",
            c.out / "no" / "m.tflite",
            "--quantize",
            "none",
        ],
        "tfprune export: error: The folder of the output file does not exist",
    ),
    (
        "export-junk-calibration",
        lambda c: [
            "export",
            c.files / "net.keras",
            "-o",
            c.out / "m.tflite",
            "--calibration",
            c.files / "junk.npz",
        ],
        "tfprune export: error: could not read",
    ),
    (
        "export-truncated-keras",
        lambda c: [
            "export",
            c.files / "truncated.keras",
            "-o",
            c.out / "m.tflite",
            "--quantize",
            "none",
        ],
        "tfprune export: error: could not load",
    ),
    (
        "shrink-output-missing-folder",
        lambda c: ["shrink", c.files / "net.keras", c.out / "no" / "small.keras"],
        "tfprune shrink: error: The folder of the output file does not exist",
    ),
]


@pytest.mark.parametrize(
    ("argv", "expected"), [case[1:] for case in CLI_CASES], ids=[case[0] for case in CLI_CASES]
)
def test_cli_refuses_with_one_line(ctx, capsys, argv, expected):
    status, err = _cli(capsys, *argv(ctx))
    line = err.strip().splitlines()[-1]
    assert status == 2
    assert line.startswith(expected), err
    assert "Traceback" not in err
    assert os.listdir(ctx.out) == []
