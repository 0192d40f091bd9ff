"""summary: exact parameters, nonzeros and MACs on wrapped, stripped and plain models."""

from __future__ import annotations

import keras
import pytest
from conftest import small_cnn

import tfprune


def test_summary_counts_exactly():
    model = small_cnn()
    lines = []
    result = tfprune.summary(model, print_fn=lines.append)
    assert [r.name for r in result.rows] == ["c1", "bn1", "c2", "d1", "out"]
    assert [r.params for r in result.rows] == [80, 32, 1168, 8224, 330]
    # c1: 6*6 positions x 3*3*1*8; c2: 4*4 x 3*3*8*16; d1: 256*32; out: 32*10
    assert [r.macs for r in result.rows] == [36 * 72, 0, 16 * 1152, 8192, 320]
    assert result.params == 9834 and result.macs == 2592 + 18432 + 8192 + 320
    assert lines[0].split()[:6] == ["layer", "type", "params", "nonzeros", "sparsity", "MACs"]
    assert lines[0].splitlines()[-1].split()[:2] == ["total", "9,834"]


def test_summary_of_wrapped_and_stripped_models_agree():
    wrapped = tfprune.wrap(small_cnn(), sparsity=0.5, exclude=["out"])
    tfprune.PruningController(wrapped).update(0)
    s_wrapped = tfprune.summary(wrapped, print_fn=None)
    s_plain = tfprune.summary(tfprune.strip(wrapped), print_fn=None)
    assert s_wrapped["d1"].type == "Prunable(Dense)" and s_plain["d1"].type == "Dense"
    assert s_wrapped["d1"].params == 8224  # masks and step are not counted
    # 4096 kept kernel weights; the 32 biases are still at their zero initial value.
    assert s_wrapped["d1"].nonzeros == s_plain["d1"].nonzeros == 4096
    assert s_wrapped["d1"].sparsity == pytest.approx(1 - 4096 / 8224)
    assert [r.macs for r in s_wrapped.rows] == [r.macs for r in s_plain.rows]
    assert s_wrapped.nonzeros == s_plain.nonzeros


def test_summary_errors_and_unknown_macs():
    with pytest.raises(TypeError, match="expects a Keras model or layer"):
        tfprune.summary("model.keras")
    with pytest.raises(ValueError, match="is not built"):
        tfprune.summary(keras.Sequential([keras.layers.Dense(2)]))
    with pytest.raises(KeyError, match="No layer named 'zz'"):
        tfprune.summary(small_cnn(), print_fn=None)["zz"]
    layer = keras.layers.Dense(3)
    layer.build((None, 4))
    assert tfprune.summary(layer, print_fn=None).rows[0].macs is None
