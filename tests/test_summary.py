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


def _raw_op_model():
    img = keras.Input((4, 4, 3), name="img")
    tok = keras.Input((None,), dtype="int32", name="tok")
    x = keras.layers.Conv2D(8, 1, name="conv")(img)
    y = x * 0.5 + x
    m = keras.ops.mean(y, axis=(1, 2))
    z = keras.ops.matmul(m[:, :, None], m[:, None, :])
    e = keras.ops.einsum("bij,bjk->bik", z[:, :2, :3], z[:, :3, :4])
    emb = keras.layers.Embedding(10, 3, name="emb")(tok)
    return keras.Model({"img": img, "tok": tok}, {"a": e, "b": emb})


def test_summary_lists_raw_ops_with_dict_inputs_and_unknown_lengths():
    result = tfprune.summary(_raw_op_model(), print_fn=None)
    types = [r.type for r in result.rows]
    assert types == [
        "Conv2D",
        *["ops.Multiply", "ops.Add", "ops.Mean", "ops.GetItem", "ops.GetItem", "ops.Matmul"],
        *["ops.GetItem", "ops.GetItem", "ops.Einsum", "Embedding"],
    ]
    by_type = {r.type: r for r in result.rows}
    assert by_type["Conv2D"].macs == 4 * 4 * 3 * 8
    assert by_type["ops.Matmul"].macs == 8 * 8 * 1  # (8, 1) @ (1, 8)
    assert by_type["ops.Einsum"].macs == 2 * 3 * 4
    assert by_type["ops.Add"].macs == 0 and by_type["ops.Add"].params == 0
    assert by_type["Embedding"].params == 30 and by_type["Embedding"].macs is None  # length None
    assert result.params == 32 + 30 and result.macs == 384 + 64 + 24


def test_summary_of_a_keras_hub_backbone():
    import keras_hub

    model = keras_hub.models.BertBackbone(
        vocabulary_size=50,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=12,
    )
    lines = []
    result = tfprune.summary(model, print_fn=lines.append)
    assert result.params == model.count_params()
    rows = {r.name: r for r in result.rows}
    assert rows["transformer_layer_0"].type == "TransformerEncoder"
    assert rows["transformer_layer_0"].macs is None  # its token axis has no length (None)
    assert rows["pooled_dense"].macs == 8 * 8 and rows["token_embedding"].params == 50 * 8
    assert any(r.type == "ops.GetItem" for r in result.rows)
    assert lines[0].splitlines()[-1].split()[:2] == ["total", f"{model.count_params():,}"]
