"""Tests for tfprune.graph on raw keras.ops nodes, any input structure and registration."""

from __future__ import annotations

import importlib.util
import pathlib

import keras
import numpy as np
import pytest

import tfprune

L = keras.layers
ops = keras.ops


def _op(model, type_name):
    """The name Keras gave the model's raw op of that type (`add`, `add_3`, ...)."""
    return next(op.name for op in model.operations if type(op).__name__ == type_name)


def _group(groups, producer):
    return next(g for g in groups if producer in g.producers)


def _input_index(group, layer):
    m = next(m for m in group.members if m.layer.name == layer and m.role == "input")
    return m.index.tolist()


def test_arithmetic_and_activation_ops_keep_channels():
    i = keras.Input((4, 4, 3))
    x = L.Conv2D(4, 1, name="c1")(i)
    x = x * ops.relu6(x + 3.0) / 6.0
    x = ops.sigmoid(x) * np.arange(1, 5, dtype="float32")
    o = L.Conv2D(2, 1, name="c2")(x)
    groups = tfprune.graph.channel_groups(keras.Model(i, o))
    g = _group(groups, "c1")
    assert (g.channels, g.prunable) == (4, True)
    assert _input_index(g, "c2") == [0, 1, 2, 3]


def test_tensor_arithmetic_ties_both_producers():
    i = keras.Input((4, 4, 3))
    a = L.Conv2D(4, 1, name="a")(i)
    b = L.Conv2D(4, 1, name="b")(i)
    o = L.Conv2D(2, 1, name="out")(ops.maximum(a - b, 0.0))
    g = _group(tfprune.graph.channel_groups(keras.Model(i, o)), "a")
    assert g.producers == ["a", "b"] and g.prunable


def test_constant_varying_over_space_freezes_with_reason():
    i = keras.Input((4, 4, 3))
    x = L.Conv2D(4, 1, name="c1")(i)
    x = x + np.ones((4, 4, 4), "float32")
    model = keras.Model(i, L.Conv2D(2, 1, name="c2")(x))
    g = _group(tfprune.graph.channel_groups(model), "c1")
    assert g.reason == (
        f"op '{_op(model, 'Add')}' (Add): its constant of shape (4, 4, 4) varies over "
        "non-channel axes"
    )


def test_broadcast_product_freezes_the_narrow_tensor_only():
    i = keras.Input((4, 4, 3))
    x = L.Conv2D(4, 1, name="wide")(i)
    s = L.Conv2D(1, 1, name="gate")(i)
    model = keras.Model(i, L.Conv2D(2, 1, name="out")(x * ops.sigmoid(s)))
    groups = tfprune.graph.channel_groups(model)
    assert _group(groups, "wide").prunable
    gate = _group(groups, "gate")
    assert gate.reason == f"Multiply '{_op(model, 'Multiply')}' broadcasts it over 4 channels"


def test_broadcast_sum_freezes_with_reason():
    i = keras.Input((4, 4, 3))
    x = L.Conv2D(4, 1, name="wide")(i)
    s = L.Conv2D(1, 1, name="narrow")(i)
    model = keras.Model(i, L.Conv2D(2, 1, name="out")(x + s))
    g = _group(tfprune.graph.channel_groups(model), "wide")
    assert g.reason == f"op '{_op(model, 'Add')}' (Add): it broadcasts 1 channel(s) over 4"


_ALL = [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("fn", "index"),
    [
        (lambda x: ops.mean(x, axis=(1, 2)), _ALL),
        (lambda x: ops.max(x, axis=1, keepdims=True), _ALL),
        (lambda x: ops.sum(x, axis=2), _ALL),
        (lambda x: x[:, 0], _ALL),
        (lambda x: x[:, 1:, ::2, :], _ALL),
        (lambda x: x[..., :], _ALL),
        (lambda x: x[..., 1:3], [1, 2]),
        (lambda x: x[:, :, 2:, -3:], [1, 2, 3]),
        (lambda x: ops.transpose(x, (0, 2, 1, 3)), _ALL),
        (lambda x: ops.transpose(ops.transpose(x, (0, 3, 1, 2)), (0, 2, 3, 1)), _ALL),
        (lambda x: ops.moveaxis(ops.swapaxes(x, 1, 3), 1, -1), _ALL),
        (lambda x: ops.reshape(x, (-1, 16, 4)), _ALL),
        (lambda x: ops.reshape(x, (-1, 4, 4, 2, 2)), [0, 1]),  # heads tied
        (lambda x: ops.reshape(ops.reshape(x, (-1, 4, 4, 2, 2)), (-1, 4, 16)), [0, 1] * 8),
        (lambda x: ops.expand_dims(x, 1), _ALL),
        (lambda x: ops.squeeze(ops.expand_dims(x, 1), 1), _ALL),
        (lambda x: ops.mean(x, axis=-1, keepdims=True), None),
        (lambda x: x[..., ::2], None),
        (lambda x: x[..., 2], None),
        (lambda x: ops.transpose(x, (0, 3, 1, 2)), None),
        (lambda x: ops.reshape(x, (-1, 4, 2, 6)), None),
    ],
)
def test_axis_rules(fn, index):
    i = keras.Input((4, 4, 3))
    x = L.Conv2D(4, 1, name="c1")(i)
    y = fn(x)
    o = L.Dense(2, name="d")(y)
    g = _group(tfprune.graph.channel_groups(keras.Model(i, o)), "c1")
    assert g.prunable is (index is not None)
    if index is not None:
        assert _input_index(g, "d") == index


def test_reasons_name_the_op_and_its_axis():
    i = keras.Input((4, 4, 3))
    x = L.Conv2D(4, 1, name="c1")(i)
    model = keras.Model(i, L.Dense(2, name="d")(ops.transpose(x, (0, 3, 1, 2))))
    g = _group(tfprune.graph.channel_groups(model), "c1")
    assert g.reason == "Dense 'd' receives them on axis -3, where it does not follow them"
    model = keras.Model(i, L.Dense(2, name="d")(x[..., 0:4:2]))
    g = _group(tfprune.graph.channel_groups(model), "c1")
    assert g.reason == (
        f"op '{_op(model, 'GetItem')}' (GetItem): it indexes the channel (last) axis with "
        "slice(0, 4, 2)"
    )
    model = keras.Model(i, L.Dense(2, name="d")(ops.reshape(x, (-1, 4, 2, 6))))
    g = _group(tfprune.graph.channel_groups(model), "c1")
    assert g.reason == (
        f"op '{_op(model, 'Reshape')}' (Reshape): it reshapes (None, 4, 4, 4) to "
        "(None, 4, 2, 6), which mixes the channel axis with others"
    )


def test_flattening_reshape_op_maps_positions():
    i = keras.Input((2, 2, 3))
    x = L.Conv2D(3, 1, name="c1")(i)
    o = L.Dense(2, name="d")(ops.reshape(x, (-1, 12)))
    g = _group(tfprune.graph.channel_groups(keras.Model(i, o)), "c1")
    assert _input_index(g, "d") == [0, 1, 2] * 4


def test_concatenate_split_and_stack_ops():
    i = keras.Input((4, 4, 3))
    a = L.Conv2D(2, 1, name="a")(i)
    b = L.Conv2D(4, 1, name="b")(i)
    x = ops.concatenate([a, b], axis=-1)
    p, q = ops.split(x, [2], axis=-1)
    s = ops.stack([p, L.Conv2D(2, 1, name="c")(i)], axis=1)
    o = L.Dense(3, name="d")(ops.mean(s, axis=1))
    groups = tfprune.graph.channel_groups(keras.Model(i, [o, L.Dense(3, name="e")(q)]))
    ac = _group(groups, "a")
    assert ac.producers == ["a", "c"] and ac.prunable
    assert _input_index(ac, "d") == [0, 1]
    assert _input_index(_group(groups, "b"), "e") == [0, 1, 2, 3]


def test_matmul_and_einsum_as_in_attention():
    i = keras.Input((5, 3))
    q = L.Dense(4, name="q")(i)
    k = L.Dense(4, name="k")(i)
    v = L.Dense(6, name="v")(i)
    scores = ops.softmax(ops.einsum("bqd,bkd->bqk", q, k), axis=-1)
    out = ops.matmul(scores, v)
    model = keras.Model(i, L.Dense(2, name="o")(out))
    groups = tfprune.graph.channel_groups(model)
    assert _group(groups, "q").reason == (
        f"Einsum '{_op(model, 'Einsum')}' contracts or moves its channel axis (bqd,bkd->bqk)"
    )
    assert _group(groups, "k").reason == _group(groups, "q").reason
    assert _group(groups, "v").prunable
    assert _input_index(_group(groups, "v"), "o") == list(range(6))


def test_op_without_rule_freezes_with_the_op_and_node_named():
    i = keras.Input((4, 4, 3))
    x = L.Conv2D(4, 1, name="c1")(i)
    model = keras.Model(i, L.Conv2D(2, 1, name="c2")(ops.cumsum(x, axis=1)))
    g = _group(tfprune.graph.channel_groups(model), "c1")
    assert g.reason == (
        f"op '{_op(model, 'Cumsum')}' (Cumsum): tfprune.graph has no channel rule for its "
        "type Cumsum; channels that reach it are kept"
    )


def test_merge_with_unknown_output_names_that_op():
    # On main this said "it is merged with a channel of the model input".
    i = keras.Input((4, 4, 3))
    x = L.Conv2D(4, 1, name="c1")(i)
    y = L.Conv2D(4, 1, name="c2")(i)
    model = keras.Model(i, L.Conv2D(2, 1, name="c3")(x + ops.cumsum(y, axis=1)))
    g = _group(tfprune.graph.channel_groups(model), "c1")
    assert g.reason == (
        f"Add '{_op(model, 'Add')}' merges it with a channel of the output of Cumsum "
        f"'{_op(model, 'Cumsum')}', which has no channel mapping"
    )


def test_merge_with_model_input_names_the_input():
    i = keras.Input((4, 4, 3), name="img")
    x = L.Conv2D(3, 1, name="c1")(i)
    o = L.Conv2D(2, 1, name="c2")(L.Add(name="res")([i, x]))
    g = _group(tfprune.graph.channel_groups(keras.Model(i, o)), "c1")
    assert g.reason == "Add 'res' merges it with a channel of the model input 'img'"


def test_dict_and_nested_inputs_outputs_with_token_ids():
    # On main: RecursionError (dict) and TypeError (None last dimension).
    tok = keras.Input((None,), dtype="int32", name="tok")
    img = keras.Input((6, 6, 3), name="img")
    e = ops.mean(L.Embedding(20, 8, name="emb")(tok), axis=1)
    x = L.GlobalAveragePooling2D()(L.Conv2D(8, 1, name="c")(img))
    h = L.Dense(8, name="h")(ops.concatenate([x, e], axis=-1))
    outputs = {"a": L.Dense(2, name="a")(h), "b": [L.Dense(3, name="b")(h)]}
    model = keras.Model({"tok": tok, "img": img}, outputs)
    groups = tfprune.graph.channel_groups(model)
    assert [(g.producers, g.prunable) for g in groups] == [
        (["c"], True),
        (["h"], True),
        (["a"], False),
        (["b"], False),
    ]
    small = tfprune.shrink(tfprune.prune_channels(model, 0.5))
    assert small.get_layer("c").filters == 4 and small.get_layer("h").units == 4
    feed = {"tok": np.array([[1, 2, 3]]), "img": np.ones((1, 6, 6, 3), "float32")}
    assert small(feed)["b"][0].shape == (1, 3)


def test_token_input_reaching_an_unknown_layer_is_frozen_not_an_error():
    tok = keras.Input((None,), dtype="int32")
    x = L.Dense(4, name="d")(ops.cast(ops.expand_dims(tok, -1), "float32"))
    model = keras.Model(tok, L.Dense(2, name="o")(ops.cumsum(x, axis=1)))
    groups = tfprune.graph.channel_groups(model)
    assert _group(groups, "d").reason.startswith(f"op '{_op(model, 'Cumsum')}' (Cumsum): ")


class _Scale(L.Layer):
    """A custom per-channel scale (for the registration test)."""

    def build(self, input_shape):
        self.factor = self.add_weight(shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.factor


def test_register_a_rule_for_a_custom_layer():
    i = keras.Input((4, 4, 3))
    x = L.Conv2D(4, 1, name="c1")(i)
    o = L.Conv2D(2, 1, name="c2")(_Scale(name="scale")(x))
    model = keras.Model(i, o)
    assert not _group(tfprune.graph.channel_groups(model), "c1").prunable

    def scale_rule(graph, call):
        graph.record(call.layer, "factor", 0, call.ids[0], "norm")
        return call.ids[0]

    tfprune.graph.register(_Scale, scale_rule, kind="elementwise")
    try:
        g = _group(tfprune.graph.channel_groups(model), "c1")
        assert g.prunable and ("scale", "factor") in [(m.layer.name, m.weight) for m in g.members]
    finally:
        tfprune.graph.table._TABLE.pop(_Scale)


def test_register_rejects_bad_arguments():
    with pytest.raises(TypeError, match="Received: target=3"):
        tfprune.graph.register(3, lambda g, c: c.ids[0])
    with pytest.raises(TypeError, match="Received: rule=None"):
        tfprune.graph.register(_Scale, None)
    with pytest.raises(ValueError, match="Received: kind='bogus'"):
        tfprune.graph.register(_Scale, lambda g, c: c.ids[0], kind="bogus")


def test_grouped_convolution_freezes_with_reason_and_depthwise_groups_is_depthwise():
    i = keras.Input((4, 4, 4))
    x = L.Conv2D(4, 1, name="c0")(i)
    g2 = L.Conv2D(4, 3, groups=2, padding="same", name="grouped")(x)
    dw = L.Conv2D(4, 3, groups=4, padding="valid", name="dw")(g2)
    o = L.Conv2D(2, 1, name="out")(dw)
    groups = tfprune.graph.channel_groups(keras.Model(i, o))
    assert _group(groups, "c0").reason == (
        "layer 'grouped' (Conv2D): it is a grouped convolution (groups=2): removing channels "
        "would make its groups unequal"
    )
    assert _group(groups, "grouped").reason == _group(groups, "c0").reason
    groups = tfprune.graph.channel_groups(
        keras.Model(i, L.Conv2D(2, 1, name="o2")(L.Conv2D(4, 3, groups=4, name="dw2")(x)))
    )
    g = _group(groups, "c0")
    assert g.prunable and g.producers == ["c0", "dw2"]


def test_channels_first_convolution_freezes_with_reason():
    i = keras.Input((3, 4, 4))
    x = L.Conv2D(4, 1, data_format="channels_first", name="cf")(i)
    o = L.Conv2D(2, 1, data_format="channels_first", name="cf2")(x)
    groups = tfprune.graph.channel_groups(keras.Model(i, o))
    reason = (
        "layer 'cf' (Conv2D): it uses data_format='channels_first' (tfprune.graph follows "
        "channels on the last axis)"
    )
    assert [(g.producers, g.channels, g.reason) for g in groups] == [
        (["cf"], 4, reason),
        (["cf2"], 2, reason.replace("'cf'", "'cf2'")),
    ]
    i2 = keras.Input((4, 4, 3))
    y = L.Conv2D(3, 1, name="last")(i2)
    o2 = L.Conv2D(2, 1, data_format="channels_first", name="cf3")(y)
    g2 = _group(tfprune.graph.channel_groups(keras.Model(i2, o2)), "last")
    assert g2.reason == (
        "layer 'cf3' (Conv2D): it uses data_format='channels_first' (tfprune.graph follows "
        "channels on the last axis)"
    )


def test_custom_graph_rule_example(capsys):
    path = pathlib.Path(__file__).resolve().parent.parent / "examples" / "custom_graph_rule.py"
    spec = importlib.util.spec_from_file_location("custom_graph_rule", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    try:
        small = example.main()
    finally:
        tfprune.graph.table._TABLE.pop(example.ChannelScale, None)
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == [
        "before: [(['conv1'], False), (['conv2'], True), (['logits'], False)]",
        "after:  [(['conv1'], True), (['conv2'], True), (['logits'], False)]",
    ]
    assert small.get_layer("conv1").filters == 16 and small.get_layer("conv2").filters == 32
    assert small.get_layer("scale").factor.shape == (16,)
