"""tfprune.export.tflite: conversion modes, calibration data, verification, atomic writes."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

import tfprune
from tfprune import export
from tfprune.export import convert


def _interp(path):
    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    return interp


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _files(folder):
    return sorted(os.listdir(folder))


def test_float_export_matches_keras_within_1e_5(digits_cnn, tmp_path):
    model, _, (x_test, _) = digits_cnn
    result = export.tflite(model, tmp_path / "m.tflite", shrink=False, verify_data=x_test[:100])
    interp = _interp(tmp_path / "m.tflite")
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    assert inp["dtype"] == np.float32 and tuple(inp["shape"]) == (1, 8, 8, 1)
    expected = model.predict(x_test[:100], verbose=0)
    got = []
    for x in x_test[:100]:
        interp.set_tensor(inp["index"], x[None])
        interp.invoke()
        got.append(interp.get_tensor(out["index"])[0])
    got = np.array(got)
    # Predictions (softmax probabilities) agree within 1e-5 absolute. The logits reach |15|,
    # where float32 summation order alone (XNNPACK vs oneDNN) moves them by ~1e-6
    # relative, so they are compared within 1e-5 of their scale.
    np.testing.assert_allclose(_softmax(got), _softmax(expected), atol=1e-5, rtol=0)
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(got, expected, atol=1e-5 * scale, rtol=0)
    assert result.verification.max_abs_error < 1e-5 * scale
    assert result.verification.agreement == 1.0
    assert result.verification.accuracy is None  # no labels given
    assert result.size == os.path.getsize(tmp_path / "m.tflite")
    assert result.ops == ("CONV_2D", "MAX_POOL_2D", "CONV_2D", "RESHAPE", "FULLY_CONNECTED",
                          "FULLY_CONNECTED")  # fmt: skip
    assert result.quantize is None and result.sparse is False and result.sparse_size is None


def test_int8_accuracy_within_one_point_of_float(digits_cnn, tmp_path):
    model, (x_train, _), (x_test, y_test) = digits_cnn
    result = export.tflite(
        model,
        tmp_path / "m.tflite",
        quantize="int8",
        representative_data=x_train[:300],
        shrink=False,
        verify_data=(x_test, y_test),
    )
    v = result.verification
    float_accuracy = float(np.mean(np.argmax(model.predict(x_test, verbose=0), -1) == y_test))
    assert v.examples == len(x_test) == 450
    assert v.reference_accuracy == pytest.approx(float_accuracy, abs=1e-9)
    assert float_accuracy > 0.9  # the fixture model learned the task
    assert abs(v.accuracy - float_accuracy) <= 0.01
    assert v.agreement >= 0.98
    interp = _interp(tmp_path / "m.tflite")
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    assert inp["dtype"] == np.int8 and out["dtype"] == np.int8
    assert inp["quantization"][0] > 0
    # Weights are int8 (biases int32): a quarter of the float file's constants, plus scales.
    export.tflite(model, tmp_path / "f.tflite", shrink=False)
    int8_weights = export.describe(tmp_path / "m.tflite").weight_bytes
    float_weights = export.describe(tmp_path / "f.tflite").weight_bytes
    assert 0.25 <= int8_weights / float_weights < 0.26


def test_int8_float_io(digits_cnn, tmp_path):
    model, (x_train, _), (x_test, y_test) = digits_cnn
    result = export.tflite(
        model,
        tmp_path / "m.tflite",
        quantize="int8",
        representative_data=x_train[:100],
        int8_io=False,
        shrink=False,
        verify_data=(x_test, y_test),
    )
    interp = _interp(tmp_path / "m.tflite")
    assert interp.get_input_details()[0]["dtype"] == np.float32
    assert interp.get_output_details()[0]["dtype"] == np.float32
    assert result.ops[0] == "QUANTIZE" and result.ops[-1] == "DEQUANTIZE"
    assert result.verification.agreement >= 0.98


@pytest.mark.parametrize(
    "quantize, io_dtype, mean_error",
    [("dynamic", np.float32, 0.1), ("float16", np.float32, 5e-3), ("int16x8", np.float32, 0.1)],
)
def test_other_modes_run_and_agree(digits_cnn, tmp_path, quantize, io_dtype, mean_error):
    model, (x_train, _), (x_test, y_test) = digits_cnn
    result = export.tflite(
        model,
        tmp_path / "m.tflite",
        quantize=quantize,
        representative_data=x_train[:100] if quantize == "int16x8" else None,
        shrink=False,
        verify_data=(x_test[:200], y_test[:200]),
    )
    assert _interp(tmp_path / "m.tflite").get_input_details()[0]["dtype"] == io_dtype
    # Mean, not max: outputs beyond the calibrated range saturate for a few examples.
    assert result.verification.mean_abs_error < mean_error
    assert result.verification.agreement >= 0.98


@pytest.mark.slow
def test_calibration_data_forms_give_the_same_file(digits_cnn, tmp_path):
    model, (x_train, y_train), _ = digits_cnn
    x = x_train[:64]
    forms = {
        "array": x,
        "xy": (x, y_train[:64]),
        "dataset": tf.data.Dataset.from_tensor_slices((x, y_train[:64])).batch(16),
        "generator": (x[i : i + 8] for i in range(0, 64, 8)),
        "examples": [xi for xi in x],  # single examples without a batch axis
    }
    sizes = {}
    blobs = {}
    for name, data in forms.items():
        path = tmp_path / f"{name}.tflite"
        sizes[name] = export.tflite(
            model, path, quantize="int8", representative_data=data, shrink=False
        ).size
        blobs[name] = path.read_bytes()
    assert len(set(blobs.values())) == 1, sizes


def test_calibration_size_limits_examples(digits_cnn, tmp_path):
    model, (x_train, _), _ = digits_cnn
    a = export.tflite(
        model, tmp_path / "a.tflite", quantize="int8", representative_data=x_train[:50],
        shrink=False,
    )  # fmt: skip
    b = export.tflite(
        model, tmp_path / "b.tflite", quantize="int8", representative_data=x_train,
        calibration_size=50, shrink=False,
    )  # fmt: skip
    assert a.size == b.size
    assert (tmp_path / "a.tflite").read_bytes() == (tmp_path / "b.tflite").read_bytes()


def test_int8_without_representative_data_is_an_error(digits_cnn, tmp_path):
    model = digits_cnn[0]
    with pytest.raises(ValueError, match=r"needs `representative_data`.*representative_data=None"):
        export.tflite(model, tmp_path / "m.tflite", quantize="int8", shrink=False)
    assert _files(tmp_path) == []


def test_unknown_quantize_is_an_error(digits_cnn, tmp_path):
    with pytest.raises(ValueError, match=r"Unknown `quantize`.*Received: quantize='int4'"):
        export.tflite(digits_cnn[0], tmp_path / "m.tflite", quantize="int4", shrink=False)


def test_calibration_shape_mismatch_is_an_error(digits_cnn, tmp_path):
    with pytest.raises(
        ValueError, match=r"does not fit the model's input: examples of shape \(28, 28, 1\)"
    ):
        export.tflite(
            digits_cnn[0],
            tmp_path / "m.tflite",
            quantize="int8",
            representative_data=np.zeros((4, 28, 28, 1), "float32"),
            shrink=False,
        )
    assert _files(tmp_path) == []


def test_verification_shape_mismatch_is_an_error(digits_cnn, tmp_path):
    with pytest.raises(ValueError, match=r"verification data does not fit the model"):
        export.tflite(
            digits_cnn[0],
            tmp_path / "m.tflite",
            shrink=False,
            verify_data=np.zeros((4, 9, 9, 1), "float32"),
        )
    assert _files(tmp_path) == []


def test_missing_output_folder_is_an_error(digits_cnn, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export.tflite(digits_cnn[0], tmp_path / "nope" / "m.tflite", shrink=False)


@pytest.mark.parametrize("error", [RuntimeError("converter exploded"), KeyboardInterrupt()])
def test_failed_or_interrupted_conversion_leaves_no_file(digits_cnn, tmp_path, monkeypatch, error):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(convert, "_convert", fail)
    with pytest.raises(type(error)):
        export.tflite(digits_cnn[0], tmp_path / "m.tflite", shrink=False)
    assert _files(tmp_path) == []


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_interrupted_write_keeps_the_old_file_and_no_temp_file(
    digits_cnn, tmp_path, monkeypatch, error
):
    target = tmp_path / "m.tflite"
    target.write_bytes(b"old contents")
    real_replace = os.replace

    def interrupted(src, dst):
        raise error

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(type(error)):
        export.tflite(digits_cnn[0], target, shrink=False)
    monkeypatch.setattr(os, "replace", real_replace)
    assert _files(tmp_path) == ["m.tflite"]
    assert target.read_bytes() == b"old contents"


def test_unrunnable_file_is_never_written(digits_cnn, tmp_path, monkeypatch):
    monkeypatch.setattr(convert._runtime, "check_runnable", lambda data: "Node 3 failed")
    with pytest.raises(
        RuntimeError, match=r"cannot run in the LiteRT interpreter \(Node 3 failed\)"
    ):
        export.tflite(digits_cnn[0], tmp_path / "m.tflite", shrink=False)
    assert _files(tmp_path) == []


def test_wrapped_model_is_stripped_and_verified_against_itself(digits_cnn, tmp_path):
    model, _, (x_test, _) = digits_cnn
    pruned = tfprune.wrap(model, sparsity=0.5, exclude=["logits"])
    tfprune.PruningController(pruned).update(0)
    result = export.tflite(pruned, tmp_path / "m.tflite", shrink=False, verify_data=x_test[:50])
    assert result.verification.max_abs_error < 1e-5
    stripped = export.tflite(tfprune.strip(pruned), tmp_path / "s.tflite", shrink=False)
    assert result.ops == stripped.ops
    assert (tmp_path / "m.tflite").read_bytes() == (tmp_path / "s.tflite").read_bytes()


def test_shrink_true_removes_pruned_channels(digits_cnn, tmp_path):
    # Needs tfprune.shrink (structured pruning); channel-pruned conv1 keeps 8 of 16 filters.
    model, _, (x_test, _) = digits_cnn
    pruned = tfprune.wrap(model, sparsity=0.5, granularity="channel", layers=["conv1"])
    tfprune.PruningController(pruned).update(0)
    result = export.tflite(pruned, tmp_path / "m.tflite", verify_data=x_test[:50])
    dense = export.tflite(pruned, tmp_path / "d.tflite", shrink=False)
    assert result.verification.max_abs_error < 1e-4
    assert result.size < dense.size
    shapes = {t.shape for t in export.describe(tmp_path / "m.tflite").tensors if t.constant}
    assert (8, 3, 3, 1) in shapes  # conv1 kernel with 8 output channels
    assert (32, 3, 3, 8) in shapes  # conv2 reads 8 channels


def test_subclassed_model_without_inputs_is_an_error(tmp_path):
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    with pytest.raises(ValueError, match=r"Model 'net' has no known inputs.*functional"):
        export.tflite(Net(), tmp_path / "m.tflite", shrink=False)
