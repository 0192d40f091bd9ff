"""tfprune.heads: scoring, zeroing and removing attention heads (MHA and grouped-query)."""

from __future__ import annotations

import keras
import keras_hub
import numpy as np
import pytest

import tfprune
from tfprune import heads as heads_lib

RNG = np.random.default_rng(0)


def _block_model(attention: keras.layers.Layer, causal: bool | None = False, dim: int = 16):
    inputs = keras.Input((6, dim))
    x = keras.layers.Dense(dim, name="embed")(inputs)
    h = keras.layers.LayerNormalization(name="ln")(x)
    h = attention(h, h) if causal is None else attention(h, h, use_causal_mask=causal)
    x = keras.layers.Add(name="add")([x, h])
    outputs = keras.layers.Dense(3, name="logits")(keras.layers.GlobalAveragePooling1D()(x))
    return keras.Model(inputs, outputs)


def _randomize(model: keras.Model, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    for w in model.weights:
        w.assign(rng.normal(size=w.shape).astype("float32") * 0.5)


def _x(n: int = 4, dim: int = 16) -> np.ndarray:
    return RNG.normal(size=(n, 6, dim)).astype("float32")


def _layer(model, name="attn"):
    return model.get_layer(name)


def _assert_same(a: keras.Model, b: keras.Model, x: np.ndarray) -> None:
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(a(x)), keras.ops.convert_to_numpy(b(x)), rtol=1e-5, atol=1e-5
    )


def test_zeroing_a_heads_value_equals_removing_it():
    model = _block_model(keras.layers.MultiHeadAttention(4, 4, name="attn"))
    _randomize(model)
    attn = _layer(model)
    for var in (attn.value_dense.kernel, attn.value_dense.bias):
        value = keras.ops.convert_to_numpy(var).copy()
        value[..., 2, :] = 0
        var.assign(value)
    small = tfprune.shrink(model)
    new = _layer(small)
    assert new.num_heads == 3
    assert tuple(new.query_dense.kernel.shape) == (16, 3, 4)
    assert tuple(new.output_dense.kernel.shape) == (3, 4, 16)
    x = _x()
    _assert_same(model, small, x)
    kept = [0, 1, 3]
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(new.key_dense.kernel),
        keras.ops.convert_to_numpy(attn.key_dense.kernel)[:, kept],
    )


def test_prune_heads_layer_scope_l2_drops_lowest_norms():
    model = _block_model(keras.layers.MultiHeadAttention(4, 4, name="attn"))
    _randomize(model)
    attn = _layer(model)
    expected = np.zeros(4)
    for var, axis in (
        (attn.query_dense.kernel, 1),
        (attn.query_dense.bias, 0),
        (attn.key_dense.kernel, 1),
        (attn.key_dense.bias, 0),
        (attn.value_dense.kernel, 1),
        (attn.value_dense.bias, 0),
        (attn.output_dense.kernel, 0),
    ):
        w = np.moveaxis(keras.ops.convert_to_numpy(var).astype(np.float64), axis, 0)
        expected += (w**2).reshape(4, -1).sum(axis=1)
    expected = np.sqrt(expected)
    np.testing.assert_allclose(tfprune.heads.head_scores(model, "l2")["attn"], expected)
    pruned = tfprune.prune_heads(model, ratio=0.5, criterion="l2")
    dead = heads_lib.attention_heads(pruned)[0].dead_heads()
    np.testing.assert_array_equal(np.flatnonzero(dead), np.sort(np.argsort(expected)[:2]))
    small = tfprune.shrink(pruned)
    assert _layer(small).num_heads == 2
    _assert_same(pruned, small, _x())
    # The input model is untouched.
    assert not heads_lib.attention_heads(model)[0].dead_heads().any()


def _gqa(q=8, kv=2, name="attn"):
    return keras.layers.GroupQueryAttention(
        head_dim=4, num_query_heads=q, num_key_value_heads=kv, name=name
    )


@pytest.mark.parametrize(("unit", "q", "kv"), [("head", 4, 2), ("group", 4, 1)])
def test_grouped_query_attention_units(unit, q, kv):
    model = _block_model(_gqa(), causal=True)
    _randomize(model)
    pruned = tfprune.prune_heads(model, ratio=0.5, criterion="l1", unit=unit)
    dead = heads_lib.attention_heads(pruned)[0].dead_heads().reshape(2, 4)
    if unit == "head":
        np.testing.assert_array_equal(dead.sum(axis=1), [2, 2])
    else:
        assert sorted(dead.sum(axis=1).tolist()) == [0, 4]
    small = tfprune.shrink(pruned)
    layer = _layer(small)
    assert (layer.num_query_heads, layer.num_key_value_heads) == (q, kv)
    _assert_same(pruned, small, _x())


def test_inconsistent_grouped_zeroing_is_padded_to_an_exact_layer():
    model = _block_model(_gqa())
    _randomize(model)
    heads = heads_lib.attention_heads(model)[0]
    keep = np.array([1, 0, 1, 1, 0, 0, 0, 1], bool)  # group 0 keeps 3 heads, group 1 keeps 1
    heads_lib.zero_heads(heads, keep)
    small = tfprune.shrink(model)
    layer = _layer(small)
    assert (layer.num_query_heads, layer.num_key_value_heads) == (6, 2)
    _assert_same(model, small, _x())


def test_all_heads_dead_keeps_one_zero_head():
    model = _block_model(keras.layers.MultiHeadAttention(2, 4, name="attn"))
    _randomize(model)
    heads_lib.zero_heads(heads_lib.attention_heads(model)[0], np.zeros(2, bool))
    small = tfprune.shrink(model)
    assert _layer(small).num_heads == 1
    _assert_same(model, small, _x())


def _two_layer_model():
    inputs = keras.Input((6, 16))
    x = keras.layers.Dense(16, name="embed")(inputs)
    for i in range(2):
        h = keras.layers.MultiHeadAttention(4, 4, name=f"attn{i}")(x, x)
        x = keras.layers.Add()([x, h])
    return keras.Model(inputs, x)


def test_global_scope_keeps_a_floor_per_layer():
    model = _two_layer_model()
    _randomize(model)
    # attn0 has one strong head and three weak ones; attn1's heads are alike. Global ranking
    # (scores divided by each layer's mean) removes attn0's weak heads first.
    for var, axis, _ in heads_lib.attention_heads(model)[0].slices:
        value = keras.ops.convert_to_numpy(var).copy()
        index = [slice(None)] * value.ndim
        index[axis] = [1, 2, 3]
        value[tuple(index)] *= 0.01
        var.assign(value)
    pruned = tfprune.prune_heads(model, ratio=0.5, scope="global", min_heads=1)
    dead = [h.dead_heads().sum() for h in heads_lib.attention_heads(pruned)]
    assert dead == [3, 1]
    small = tfprune.shrink(pruned)
    assert [small.get_layer(f"attn{i}").num_heads for i in range(2)] == [1, 3]
    _assert_same(pruned, small, _x())


@pytest.mark.parametrize(
    ("make", "causal"),
    [(lambda: keras.layers.MultiHeadAttention(4, 4, name="attn"), False), (_gqa, True)],
)
def test_activation_scores_equal_each_heads_contribution(make, causal):
    """Mean ||output - output without head h|| over positions: the head's contribution."""
    model = _block_model(make(), causal=causal)
    _randomize(model)
    x = _x(3)
    scores = tfprune.heads.head_scores(model, "activation", data=[x[:2], x[2:]])["attn"]
    probe = keras.Model(model.input, _layer(model).output)
    full = keras.ops.convert_to_numpy(probe(x))
    n = heads_lib.attention_heads(model)[0].query_heads
    expected = []
    for h in range(n):
        copy = keras.models.clone_model(model)
        copy.set_weights(model.get_weights())
        heads = heads_lib.attention_heads(copy)[0]
        for var, _, kind in heads.slices:
            if kind == "o":  # only the head's output rows: its contribution disappears
                value = keras.ops.convert_to_numpy(var).copy()
                value[h] = 0
                var.assign(value)
        without = keras.ops.convert_to_numpy(keras.Model(copy.input, _layer(copy).output)(x))
        expected.append(np.linalg.norm(full - without, axis=-1).mean())
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-6)


def test_taylor_scores_match_a_gradient_tape():
    import tensorflow as tf

    model = _block_model(keras.layers.MultiHeadAttention(2, 4, name="attn"))
    _randomize(model)
    x, y = _x(4), np.array([0, 1, 2, 0])
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    scores = tfprune.heads.head_scores(model, "taylor", data=[(x, y)], loss=loss)["attn"]
    attn = _layer(model)
    weights = [w for w in attn.weights if "attention_output/bias" not in w.path]
    with tf.GradientTape() as tape:
        value = loss(y, model(x))
    grads = tape.gradient(value, [w.value for w in weights])
    expected = np.zeros(2)
    for w, g in zip(weights, grads):
        t = keras.ops.convert_to_numpy(w) * g.numpy()
        axis = 0 if "attention_output" in w.path else t.ndim - 2
        expected += np.moveaxis(t, axis, 0).reshape(2, -1).sum(axis=1)
    np.testing.assert_allclose(scores, expected**2, rtol=1e-4)


def test_cached_multi_head_attention_and_saving(tmp_path):
    model = _block_model(keras_hub.layers.CachedMultiHeadAttention(4, 4, name="attn"), causal=None)
    _randomize(model)
    small = tfprune.shrink(tfprune.prune_heads(model, ratio=0.25))
    assert _layer(small).num_heads == 3
    path = tmp_path / "small.keras"
    small.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    _assert_same(small, loaded, _x())


def test_errors():
    model = _block_model(keras.layers.MultiHeadAttention(2, 4, name="attn"))
    with pytest.raises(ValueError, match="Received: unit='row'"):
        tfprune.prune_heads(model, unit="row")
    with pytest.raises(ValueError, match="Received: criterion='fpgm'"):
        tfprune.prune_heads(model, criterion="fpgm")
    with pytest.raises(ValueError, match="Criterion 'activation' needs `data`"):
        tfprune.prune_heads(model, criterion="activation")
    with pytest.raises(ValueError, match=r"not attention layers of the model: \['embed'\]"):
        tfprune.prune_heads(model, ignore=["embed"])
    with pytest.raises(ValueError, match="Received: min_heads=0"):
        tfprune.prune_heads(model, min_heads=0)
    dense = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="has no MultiHeadAttention"):
        tfprune.prune_heads(dense)
    with pytest.raises(TypeError, match="Received: model=3"):
        tfprune.prune_heads(3)
