"""Tests for tfprune.shrink: pruned channels physically removed, outputs unchanged."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tfprune

L = keras.layers
TOL = 1e-5  # max |difference| relative to the largest |output| of the pruned model


def _randomize_norms(model, seed=0):
    """Nonzero BN statistics and betas, so folding and slicing are really exercised."""
    rng = np.random.default_rng(seed)
    for layer in tfprune.layers.iter_layers(model):
        if isinstance(layer, L.BatchNormalization):
            for w in layer.weights:
                w.assign(rng.uniform(0.5, 1.5, w.shape).astype("float32"))


def _assert_same(a, b, x):
    ya, yb = a.predict(x, verbose=0), b.predict(x, verbose=0)
    assert ya.shape == yb.shape
    # Relative to the output's scale, plus float32 rounding of values near zero.
    assert np.abs(ya - yb).max() <= TOL * np.abs(ya).max() + 1e-6


def _check(model, shape, ratio=0.5, seed=0):
    _randomize_norms(model, seed)
    pruned = tfprune.prune_channels(model, ratio=ratio, criterion="random", seed=seed)
    small = tfprune.shrink(pruned)
    x = np.random.default_rng(seed).normal(size=(2, *shape)).astype("float32")
    _assert_same(pruned, small, x)
    assert small.count_params() < model.count_params()
    before, after = tfprune.summary(pruned, print_fn=None), tfprune.summary(small, print_fn=None)
    assert after.macs < before.macs
    return pruned, small


def _seq_cnn():
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            L.Conv2D(8, 3, activation="relu", name="c1"),
            L.MaxPooling2D(),
            L.Conv2D(16, 3, padding="same", name="c2"),
            L.Flatten(),
            L.Dense(10, name="out"),
        ]
    )


def _vgg():
    i = keras.Input((16, 16, 3))
    x = i
    for k, f in enumerate((8, 8, 16)):
        x = L.Conv2D(f, 3, padding="same", use_bias=False, name=f"conv{k}")(x)
        x = L.BatchNormalization()(x)
        x = L.ReLU()(x)
        x = L.MaxPooling2D()(x)
    x = L.Flatten()(x)
    x = L.Dense(16, activation="relu", name="fc")(x)
    x = L.Dropout(0.5)(x)
    return keras.Model(i, L.Dense(5, name="out")(x))


def _resnet():
    i = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", name="stem")(i)
    x = L.BatchNormalization()(x)
    x = L.ReLU()(x)
    y = L.Conv2D(8, 3, padding="same", name="id_a")(x)
    y = L.ReLU()(L.BatchNormalization()(y))
    y = L.Conv2D(8, 3, padding="same", name="id_b")(y)
    x = L.ReLU()(L.Add()([x, L.BatchNormalization()(y)]))
    y = L.Conv2D(16, 3, strides=2, padding="same", name="proj_a")(x)
    y = L.ReLU()(L.BatchNormalization()(y))
    y = L.Conv2D(16, 3, padding="same", name="proj_b")(y)
    s = L.Conv2D(16, 1, strides=2, name="shortcut")(x)
    x = L.ReLU()(L.Add()([L.BatchNormalization()(s), L.BatchNormalization()(y)]))
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(i, L.Dense(4, name="out")(x))


def _densenet():
    i = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", name="stem")(i)
    for k in range(3):
        y = L.ReLU()(L.BatchNormalization()(x))
        y = L.Conv2D(4, 3, padding="same", name=f"grow{k}")(y)
        x = L.Concatenate()([x, y])
    x = L.Conv2D(8, 1, name="transition")(L.ReLU()(L.BatchNormalization()(x)))
    x = L.AveragePooling2D(2)(x)
    return keras.Model(i, L.Dense(3, name="out")(L.GlobalAveragePooling2D()(x)))


def _mobilenet():
    i = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(i)
    x = L.ReLU(6.0)(L.BatchNormalization()(x))
    for k in range(2):
        y = L.Conv2D(24, 1, use_bias=False, name=f"expand{k}")(x)
        y = L.ReLU(6.0)(L.BatchNormalization()(y))
        y = L.ZeroPadding2D()(y)
        y = L.DepthwiseConv2D(3, use_bias=False, name=f"dw{k}")(y)
        y = L.ReLU(6.0)(L.BatchNormalization()(y))
        y = L.Conv2D(8, 1, use_bias=False, name=f"project{k}")(y)
        x = L.Add()([x, L.BatchNormalization()(y)])
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(i, L.Dense(3, name="out")(x))


def _se():
    i = keras.Input((8, 8, 3))
    x = L.Conv2D(16, 3, padding="same", name="feat")(i)
    s = L.GlobalAveragePooling2D()(x)
    s = L.Dense(4, activation="relu", name="squeeze")(s)
    s = L.Dense(16, activation="sigmoid", name="excite")(s)
    s = L.Reshape((1, 1, 16))(s)
    x = L.Multiply()([x, s])
    x = L.Conv2D(8, 1, name="post")(x)
    return keras.Model(i, L.Dense(3, name="out")(L.Flatten()(x)))


def _conv1d():
    return keras.Sequential(
        [
            keras.Input((40, 1)),
            L.Conv1D(16, 5, activation="relu", name="c1"),
            L.Conv1D(16, 3, padding="same", activation="relu", name="c2"),
            L.MaxPooling1D(),
            L.Conv1D(8, 3, activation="relu", name="c3"),
            L.GlobalAveragePooling1D(),
            L.Dense(10, name="out"),
        ]
    )


def _mlp():
    return keras.Sequential(
        [
            keras.Input((20,)),
            L.Dense(32, activation="relu", name="h1"),
            L.Dense(16, activation="tanh", name="h2"),
            L.Dense(4, name="out"),
        ]
    )


def _nested():
    inner_in = keras.Input((8, 8, 3))
    h = L.Conv2D(8, 3, name="inner_a")(inner_in)
    h = L.BatchNormalization()(h)
    h = L.Conv2D(8, 3, name="inner_b")(L.ReLU()(h))
    backbone = keras.Model(inner_in, h, name="backbone")
    i = keras.Input((8, 8, 3))
    x = backbone(i)
    x = L.Conv2D(6, 1, activation="relu", name="head")(x)
    x = L.Flatten()(x)
    return keras.Model(i, L.Dense(3, name="out")(x))


def _transposed():
    i = keras.Input((4, 4, 4, 2))
    x = L.Conv3D(6, 1, activation="relu", name="c3d")(i)
    x = L.Conv3DTranspose(6, 2, strides=2, name="ct")(x)
    x = L.Conv3D(3, 1, name="mix")(x)
    return keras.Model(i, L.GlobalAveragePooling3D()(x))


def _separable_transpose():
    i = keras.Input((6, 6, 3))
    x = L.Conv2D(6, 1, name="stem")(i)
    x = L.SeparableConv2D(8, 3, depth_multiplier=2, padding="same", name="sep")(x)
    x = L.ReLU()(L.BatchNormalization()(x))
    x = L.Conv2DTranspose(6, 2, strides=2, name="up")(x)
    x = L.Conv2D(3, 1, name="mix")(x)
    return keras.Model(i, L.Dense(2, name="out")(L.GlobalAveragePooling2D()(x)))


ARCHITECTURES = {
    "separable_conv2d_transpose": (_separable_transpose, (6, 6, 3)),
    "sequential_cnn": (_seq_cnn, (8, 8, 1)),
    "vgg": (_vgg, (16, 16, 3)),
    "resnet": (_resnet, (8, 8, 3)),
    "densenet": (_densenet, (8, 8, 3)),
    "mobilenet_v2_block": (_mobilenet, (8, 8, 3)),
    "se_block": (_se, (8, 8, 3)),
    "conv1d_mnist1d": (_conv1d, (40, 1)),
    "mlp": (_mlp, (20,)),
    "nested": (_nested, (8, 8, 3)),
    "conv3d_transpose": (_transposed, (4, 4, 4, 2)),
}


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_shrink_equals_pruned_model(name):
    build, shape = ARCHITECTURES[name]
    _check(build(), shape)


def test_mlp_params_and_macs_shrink_in_proportion():
    model = _mlp()
    pruned = tfprune.prune_channels(model, ratio=0.5, criterion="l1")
    small = tfprune.shrink(pruned)
    stats = tfprune.summary(small, print_fn=None)
    assert [small.get_layer(n).units for n in ("h1", "h2", "out")] == [16, 8, 4]
    assert stats["h1"].params == 20 * 16 + 16 and stats["h1"].macs == 20 * 16
    assert stats["h2"].params == 16 * 8 + 8 and stats["h2"].macs == 16 * 8
    assert stats["out"].params == 8 * 4 + 4
    assert stats.macs == 20 * 16 + 16 * 8 + 8 * 4


@pytest.mark.slow
def test_keras_application_mobilenet_v2_small_input():
    model = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), alpha=0.35)
    _, small = _check(model, (32, 32, 3))
    assert small.get_layer("predictions").units == 1000  # the output is never pruned


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,shape",
    [
        ("ResNet50", (32, 32, 3)),
        ("DenseNet121", (32, 32, 3)),
        ("VGG16", (32, 32, 3)),
        ("EfficientNetB0", (32, 32, 3)),
        ("MobileNet", (32, 32, 3)),
        ("Xception", (71, 71, 3)),
        ("MobileNetV3Small", (32, 32, 3)),
    ],
)
def test_keras_applications(name, shape):
    _check(getattr(keras.applications, name)(weights=None, input_shape=shape), shape)


def test_wrapped_model_with_channel_masks():
    model = _resnet()
    wrapped = tfprune.wrap(model, sparsity=0.5, granularity="channel")
    tfprune.PruningController(wrapped).update(0)
    small = tfprune.shrink(wrapped)
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    _assert_same(wrapped, small, x)
    # One keep decision for the whole residual stage: stem, id_b share 4 of 8 channels.
    assert small.get_layer("stem").filters == 4 and small.get_layer("id_b").filters == 4
    assert small.get_layer("shortcut").filters == small.get_layer("proj_b").filters == 8


def _zero_filters(layer, channels):
    k = keras.ops.convert_to_numpy(layer.kernel).copy()
    k[..., channels] = 0
    layer.kernel.assign(k)


def test_bn_beta_is_folded_into_consumer_bias_added_when_missing():
    i = keras.Input((6, 6, 2))
    x = L.Conv2D(4, 3, use_bias=False, name="c")(i)
    x = L.BatchNormalization(name="bn")(x)
    x = L.Activation("sigmoid")(x)
    o = L.Conv2D(3, 1, use_bias=False, name="consumer")(x)
    model = keras.Model(i, L.GlobalAveragePooling2D()(o))
    _randomize_norms(model)
    _zero_filters(model.get_layer("c"), [1, 2])
    small = tfprune.shrink(model)
    assert small.get_layer("c").filters == 2
    assert small.get_layer("consumer").use_bias
    x = np.random.default_rng(1).normal(size=(3, 6, 6, 2)).astype("float32")
    _assert_same(model, small, x)


def test_constant_into_same_padded_conv_keeps_the_channel():
    i = keras.Input((6, 6, 2))
    x = L.Conv2D(4, 1, name="c", bias_initializer="ones")(i)
    o = L.Conv2D(3, 3, padding="same", name="consumer")(x)
    model = keras.Model(i, o)
    _zero_filters(model.get_layer("c"), [0, 1])
    b = keras.ops.convert_to_numpy(model.get_layer("c").bias).copy()
    b[1] = 0.0  # channel 1 carries 0: removable; channel 0 carries 1: border effects
    model.get_layer("c").bias.assign(b)
    small = tfprune.shrink(model)
    assert small.get_layer("c").filters == 3
    x = np.random.default_rng(2).normal(size=(2, 6, 6, 2)).astype("float32")
    _assert_same(model, small, x)


def test_groups_reaching_unknown_layers_are_not_shrunk():
    i = keras.Input((6, 6, 2))
    x = L.Conv2D(4, 1, name="c1")(i)
    x = L.Lambda(lambda t: t + 1.0, name="shift")(x)
    x = L.Conv2D(4, 1, name="c2")(x)
    model = keras.Model(i, L.Conv2D(2, 1, name="out")(x))
    _zero_filters(model.get_layer("c1"), [0, 1])
    _zero_filters(model.get_layer("c2"), [0, 1])
    small = tfprune.shrink(model)
    assert small.get_layer("c1").filters == 4  # frozen: the Lambda's semantics are unknown
    assert small.get_layer("c2").filters == 2
    x = np.random.default_rng(3).normal(size=(2, 6, 6, 2)).astype("float32")
    _assert_same(model, small, x)


def test_shrink_errors():
    with pytest.raises(TypeError, match="Received: model=None"):
        tfprune.shrink(None)
    with pytest.raises(ValueError, match="is not built"):
        tfprune.shrink(keras.Sequential([L.Dense(2)]))


def _block(draw, x, k, width):
    kind = draw(st.sampled_from(["conv", "conv_bn", "add", "concat", "depthwise", "grouped"]))
    if kind == "conv":
        return L.Conv2D(width, draw(st.sampled_from([1, 3])), padding="same", name=f"c{k}")(x)
    if kind == "conv_bn":
        y = L.Conv2D(width, 1, use_bias=False, name=f"c{k}")(x)
        return L.ReLU()(L.BatchNormalization(name=f"bn{k}")(y))
    if kind == "add":
        y = L.Conv2D(int(x.shape[-1]), 1, name=f"c{k}")(x)
        return L.Add()([x, y])
    if kind == "concat":
        y = L.Conv2D(width, 1, name=f"c{k}")(x)
        return L.Concatenate()([x, y])
    if kind == "grouped":  # depthwise written as Conv2D(groups=C), as ConvNeXt does
        c = int(x.shape[-1])
        y = L.Conv2D(c, 3, groups=c, padding="valid", name=f"g{k}")(L.ZeroPadding2D()(x))
        return L.BatchNormalization(name=f"bn{k}")(y)
    y = L.DepthwiseConv2D(3, padding="valid", name=f"dw{k}")(L.ZeroPadding2D()(x))
    return L.BatchNormalization(name=f"bn{k}")(y)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.data())
def test_random_models_shrink_to_equal_outputs(data):
    width = data.draw(st.integers(2, 6))
    i = keras.Input((5, 5, 2))
    x = L.Conv2D(width, 1, name="stem")(i)
    for k in range(data.draw(st.integers(1, 4))):
        x = _block(data.draw, x, k, data.draw(st.integers(2, 6)))
    o = L.Conv2D(3, 1, name="head")(x)
    model = keras.Model(i, o)
    _randomize_norms(model, seed=data.draw(st.integers(0, 9)))
    groups = [g for g in tfprune.graph.channel_groups(model) if g.prunable]
    keeps = []
    for g in groups:
        keep = np.array(
            data.draw(st.lists(st.booleans(), min_size=g.channels, max_size=g.channels))
        )
        keep[data.draw(st.integers(0, g.channels - 1))] = True
        tfprune.channel_pruning.zero_channels(g, keep)
        keeps.append(keep)
    small = tfprune.shrink(model)
    x = np.random.default_rng(0).normal(size=(2, 5, 5, 2)).astype("float32")
    _assert_same(model, small, x)
    removed = sum(int((~k).sum()) for k in keeps)
    assert small.count_params() <= model.count_params()
    if removed:
        assert small.count_params() < model.count_params()


def test_a_concatenated_branch_that_loses_all_its_channels_keeps_one():
    # stem and c0 are concatenated and added to c1, so all their channels form one group;
    # keeping only a stem channel would leave c0 with no filters, which Keras refuses.
    i = keras.Input((5, 5, 2))
    x = L.Conv2D(2, 1, name="stem")(i)
    x = L.Concatenate()([x, L.Conv2D(2, 1, name="c0")(x)])
    x = L.Add()([x, L.Conv2D(4, 1, name="c1")(x)])
    model = keras.Model(i, L.Conv2D(3, 1, name="head")(x))
    (group,) = [g for g in tfprune.graph.channel_groups(model) if g.prunable]
    assert group.channels == 4
    tfprune.channel_pruning.zero_channels(group, np.array([True, False, False, False]))
    small = tfprune.shrink(model)
    assert (small.get_layer("stem").filters, small.get_layer("c0").filters) == (1, 1)
    assert small.get_layer("c1").filters == 2
    x = np.random.default_rng(0).normal(size=(2, 5, 5, 2)).astype("float32")
    _assert_same(model, small, x)
