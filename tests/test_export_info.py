"""tfprune.export.describe, verify and latency on small files."""

from __future__ import annotations

import gzip

import keras
import numpy as np
import pytest

from tfprune import export


@pytest.fixture(scope="module")
def dense_file(tmp_path_factory):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,), name="x")
    hidden = keras.layers.Dense(8, bias_initializer="ones", name="hidden")(inputs)
    outputs = keras.layers.Dense(3, bias_initializer="ones", name="out")(hidden)
    model = keras.Model(inputs, outputs)
    path = tmp_path_factory.mktemp("info") / "chain.tflite"
    export.tflite(model, path, shrink=False)
    return model, path


def test_describe_ops_tensors_and_sizes(dense_file):
    _, path = dense_file
    data = path.read_bytes()
    info = export.describe(path)
    assert info.size == len(data)
    assert info.gzip_size == len(gzip.compress(data, compresslevel=9, mtime=0))
    assert info.ops == ("FULLY_CONNECTED", "FULLY_CONNECTED")
    assert info.op_counts == {"FULLY_CONNECTED": 2}
    assert info.subgraphs == 1
    (inp,) = (info.tensors[i] for i in info.inputs)
    (out,) = (info.tensors[i] for i in info.outputs)
    assert (inp.shape, inp.dtype, inp.constant) == ((1, 4), "float32", False)
    assert (out.shape, out.dtype, out.nbytes) == ((1, 3), "float32", 12)
    # Constants: kernels 4x8 + 8x3 and biases 8 + 3, float32.
    assert info.weight_bytes == 4 * (4 * 8 + 8 * 3 + 8 + 3)
    text = info.format()
    assert "FULLY_CONNECTED x2" in text and f"{info.size:,} bytes" in text


def test_verify_without_labels_and_with_reference_outputs(dense_file):
    model, path = dense_file
    x = np.random.default_rng(0).random((10, 4), dtype=np.float32)
    reference = model.predict(x, verbose=0)
    v = export.verify(path, x, reference=reference)
    assert v.examples == 10 and v.accuracy is None and v.reference_accuracy is None
    assert v.max_abs_error < 1e-5 and v.agreement == 1.0
    v = export.verify(path, (x, np.argmax(reference, -1)), reference=model)
    assert v.accuracy == 1.0 and v.reference_accuracy == 1.0
    v = export.verify(path.read_bytes(), x)
    assert np.isnan(v.max_abs_error) and v.agreement is None


def test_latency_result(dense_file):
    _, path = dense_file
    result = export.latency(path, threads=2, runs=15, warmup=2)
    assert result.threads == 2 and result.runs == 15
    assert 0 < result.min <= result.median
    assert "2 threads, 15 runs" in result.format()


@pytest.mark.parametrize("kwargs, name", [({"threads": 0}, "threads"), ({"runs": 0}, "runs"),
                                          ({"warmup": -1}, "warmup")])  # fmt: skip
def test_latency_arguments_are_checked(dense_file, kwargs, name):
    with pytest.raises(ValueError, match=rf"`{name}`.*Received: {name}="):
        export.latency(dense_file[1], **kwargs)


def test_reading_bad_inputs(tmp_path):
    with pytest.raises(TypeError, match=r"Received: model of type int"):
        export.describe(3)
    with pytest.raises(ValueError, match=r"not a TFLite flatbuffer"):
        export.latency(b"\0" * 64)
    truncated = tmp_path / "t.tflite"
    truncated.write_bytes(b"\x18\0\0\0TFL3" + b"\0" * 4)
    with pytest.raises(ValueError, match=r"damaged or truncated"):
        export.describe(truncated)
