"""tfprune.export.tflite(sparse=True): TFLite's sparse weight encoding and its fallback."""

from __future__ import annotations

import os
import warnings

import pytest

import tfprune
from tfprune import export
from tfprune.export import _runtime, convert


@pytest.fixture(scope="module")
def pruned_90(digits_cnn):
    """The digits CNN with 90 % of every kernel zeroed (logits kept dense), stripped."""
    model, *_ = digits_cnn
    pruned = tfprune.wrap(model, sparsity=0.9, exclude=["logits"])
    tfprune.PruningController(pruned).update(0)
    return tfprune.strip(pruned)


def test_float_sparse_encoding_is_smaller_and_exact(pruned_90, digits_cnn, tmp_path):
    _, _, (x_test, _) = digits_cnn
    result = export.tflite(
        pruned_90, tmp_path / "m.tflite", sparse=True, shrink=False, verify_data=x_test[:50]
    )
    assert result.sparse is True and result.sparse_fallback is None
    assert result.size == result.sparse_size == os.path.getsize(tmp_path / "m.tflite")
    assert result.sparse_saved_bytes == result.dense_size - result.sparse_size
    assert result.sparse_size < 0.5 * result.dense_size  # 90 % zeros in the big kernels
    assert "DENSIFY" in result.ops
    assert result.verification.max_abs_error < 1e-4
    assert _runtime.check_runnable((tmp_path / "m.tflite").read_bytes()) is None


def test_sparse_on_dense_weights_saves_nothing_and_says_so(digits_cnn, tmp_path):
    result = export.tflite(digits_cnn[0], tmp_path / "m.tflite", sparse=True, shrink=False)
    assert result.sparse is False  # nothing was sparse enough to encode
    assert result.sparse_saved_bytes == 0
    assert "DENSIFY" not in result.ops


def test_int8_sparse_file_that_runs_is_returned_or_replaced_by_dense(
    pruned_90, digits_cnn, tmp_path
):
    # On LiteRT 2.3 the int8 sparse FULLY_CONNECTED fails to prepare in XNNPACK: whichever
    # file is written must run in the default configuration, and a fallback says why.
    _, (x_train, _), (x_test, y_test) = digits_cnn
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = export.tflite(
            pruned_90,
            tmp_path / "m.tflite",
            quantize="int8",
            representative_data=x_train[:100],
            sparse=True,
            shrink=False,
            verify_data=(x_test, y_test),
        )
    data = (tmp_path / "m.tflite").read_bytes()
    assert _runtime.check_runnable(data) is None
    assert result.sparse_size is not None and result.sparse_size < result.dense_size
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    if result.sparse:
        assert result.sparse_fallback is None and messages == []
    else:
        assert len(data) == result.dense_size
        assert "cannot run in LiteRT's default configuration" in result.sparse_fallback
        assert len(messages) == 1 and "Writing the dense encoding instead" in messages[0]
    assert result.verification.accuracy is not None


def _fail_sparse(monkeypatch):
    real = _runtime.check_runnable

    def check(data):
        if export.describe(data).ops.count("DENSIFY"):
            return "failed to delegate FULLY_CONNECTED node #7"
        return real(data)

    monkeypatch.setattr(convert._runtime, "check_runnable", check)


def test_fallback_to_dense_when_sparse_cannot_run(pruned_90, tmp_path, monkeypatch):
    _fail_sparse(monkeypatch)
    with pytest.warns(RuntimeWarning, match=r"Writing the dense encoding instead.*FULLY_CONNECTED"):
        result = export.tflite(pruned_90, tmp_path / "m.tflite", sparse=True, shrink=False)
    assert result.sparse is False
    assert result.size == result.dense_size == os.path.getsize(tmp_path / "m.tflite")
    assert "DENSIFY" not in result.ops
    assert "failed to delegate FULLY_CONNECTED" in result.sparse_fallback
    assert result.sparse_saved_bytes > 0  # reported, though not used


def test_on_sparse_failure_raise_writes_nothing(pruned_90, tmp_path, monkeypatch):
    _fail_sparse(monkeypatch)
    with pytest.raises(RuntimeError, match=r"Sparse encoding failed.*Export with sparse=False"):
        export.tflite(
            pruned_90, tmp_path / "m.tflite", sparse=True, shrink=False, on_sparse_failure="raise"
        )
    assert os.listdir(tmp_path) == []


def test_on_sparse_failure_is_validated(pruned_90, tmp_path):
    with pytest.raises(ValueError, match=r"Received: on_sparse_failure='ignore'"):
        export.tflite(pruned_90, tmp_path / "m.tflite", on_sparse_failure="ignore")
