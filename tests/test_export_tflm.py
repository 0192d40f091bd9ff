"""tfprune.export.tflm: the real TFLite Micro interpreter, arena measured, crashes caught."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import tfprune
from tfprune import export
from tfprune.export import tflm

pytestmark = pytest.mark.skipif(not tflm.available(), reason="needs tflite-micro")


@pytest.fixture(scope="module")
def files(digits_cnn, tmp_path_factory):
    """int8 files of the digits CNN: dense, channel-pruned and with float I/O."""
    model, (x_train, _), _ = digits_cnn
    folder = tmp_path_factory.mktemp("tflm")
    pruned = tfprune.prune_channels(model, ratio=0.5)
    out = {}
    for name, m, io in (
        ("dense", model, True),
        ("pruned", pruned, True),
        ("float_io", model, False),
    ):
        path = folder / f"{name}.tflite"
        export.tflite(m, path, quantize="int8", representative_data=x_train[:100], int8_io=io)
        out[name] = path
    return out


def test_outputs_equal_litert_reference_kernels_and_arena_is_confirmed(files, digits_cnn):
    x_test = digits_cnn[2][0]
    result = tflm.run(files["dense"], x_test[:40])
    assert result.examples == 40
    # Measured with tflite-micro 0.dev and LiteRT 2.x: TFLite Micro equals LiteRT's reference
    # kernels except for one int8 step on a few outputs (conv-only files matched exactly).
    assert result.max_diff <= 1 and result.exact is (result.max_diff == 0)
    assert result.outputs.shape == (40, 10) and result.outputs.dtype == np.int8
    assert result.arena % 16 == 0 and result.arena >= result.recorded
    assert result.recorded == result.head + result.tail
    assert ("equal LiteRT's reference kernels" in result.format()) is result.exact
    # The measured arena is the smallest that runs: 16 bytes less fails with a message.
    assert tflm.run(files["dense"], arena_size=result.arena).arena == result.arena
    with pytest.raises(RuntimeError, match=rf"arena_size={result.arena - 16:,} bytes"):
        tflm.run(files["dense"], arena_size=result.arena - 16)


def test_interpreter_crash_becomes_an_exception(files):
    with pytest.raises(RuntimeError, match=r"TFLite Micro interpreter .* arena_size=64 bytes"):
        tflm.run(files["dense"], arena_size=64)


@pytest.mark.parametrize(
    "name",
    [
        "dense",
        pytest.param("pruned", marks=pytest.mark.slow),
        pytest.param("float_io", marks=pytest.mark.slow),
    ],
)
def test_estimate_matches_tflm(files, name):
    measured = tflm.run(files[name])
    estimate = export.arena_estimate(files[name])
    assert estimate.activations == measured.head
    assert abs(estimate.total - measured.recorded) <= 0.05 * measured.recorded


def test_micro_header_has_the_measured_arena(files, tmp_path, digits_cnn):
    result = export.micro(files["pruned"], tmp_path, "m", verify_data=digits_cnn[2][0][:10])
    header = (tmp_path / "m.h").read_text()
    assert result.measured is not None and result.measured.max_diff <= 1
    assert result.arena_source == "measured by TFLite Micro"
    assert f"#define M_ARENA_SIZE {result.measured.arena}\n" in header
    assert "measured by the TFLite Micro interpreter" in header


def test_without_tflite_micro_the_header_says_estimate(files, tmp_path, monkeypatch):
    monkeypatch.setattr(tflm, "available", lambda: False)
    result = export.micro(files["dense"], tmp_path, "m")
    header = (tmp_path / "m.h").read_text()
    assert result.measured is None and result.arena_source == "estimate"
    assert f"#define M_ARENA_SIZE {result.arena.total}\n" in header
    assert "Tensor arena ESTIMATE (tflite-micro not installed)" in header
    with pytest.raises(ImportError, match=r"pip install 'tfprune\[micro\]'"):
        tflm.run(files["dense"])


def test_bad_arguments(files):
    with pytest.raises(ValueError, match=r"Received: arena_size=-1"):
        tflm.run(files["dense"], arena_size=-1)
    with pytest.raises(ValueError, match=r"expects \(8, 8, 1\).*x.shape=\(2, 4\)"):
        tflm.run(files["dense"], np.zeros((2, 4), np.float32))


def test_tflite_export_verifies_in_tflm(digits_cnn, tmp_path):
    model, (x_train, _), (x_test, y_test) = digits_cnn
    result = export.tflite(
        model,
        tmp_path / "m.tflite",
        quantize="int8",
        representative_data=x_train[:100],
        verify_data=(x_test[:20], y_test[:20]),
        verify_micro=True,
    )
    assert result.micro is not None and result.micro.max_diff <= 1
    assert result.micro.examples == 20
    assert "TFLite Micro arena" in result.format()
    with pytest.raises(ValueError, match=r"verify_micro=True needs `verify_data`"):
        export.tflite(
            keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]),
            tmp_path / "n.tflite",
            verify_micro=True,
        )


@pytest.mark.slow  # a keras.applications model: conversion and TFLite Micro take ~30 s
def test_mobilenet_v1_runs_in_tflm_and_the_estimate_holds(tmp_path):
    model = keras.applications.MobileNet(
        input_shape=(32, 32, 3), alpha=0.25, weights=None, classes=10
    )
    rng = np.random.default_rng(0)
    for layer in model.layers:  # random BatchNorm statistics, as after training
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.1, n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
    x = rng.random((20, 32, 32, 3), dtype=np.float32)
    path = tmp_path / "mobilenet.tflite"
    export.tflite(model, path, quantize="int8", representative_data=x)
    measured = tflm.run(path, x[:5])
    estimate = export.arena_estimate(path)
    assert measured.max_diff <= 1
    assert estimate.activations == measured.head
    assert abs(estimate.total - measured.recorded) <= 0.05 * measured.recorded
