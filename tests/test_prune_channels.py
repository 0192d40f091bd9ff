"""Tests for tfprune.prune_channels, the channel criteria and channel-granularity wrapping."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import tfprune
from tfprune import criteria

L = keras.layers


def _kernel(model, name):
    return keras.ops.convert_to_numpy(model.get_layer(name).kernel)


def _alive(model, name):
    k = _kernel(model, name)
    return np.flatnonzero(np.abs(k.reshape(-1, k.shape[-1])).sum(axis=0) > 0)


def _cnn():
    i = keras.Input((6, 6, 2))
    x = L.Conv2D(16, 3, padding="same", name="c1")(i)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU()(x)
    y = L.Conv2D(16, 1, name="c2")(x)
    x = L.Add()([x, y])
    x = L.Conv2D(10, 1, name="c3")(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(i, L.Dense(3, name="out")(x))


def _set_filter_scale(model, name, scales):
    k = _kernel(model, name)
    k = np.ones_like(k) * np.asarray(scales, np.float32)
    model.get_layer(name).kernel.assign(k)


def test_layer_scope_prunes_exact_counts_and_lowest_l1():
    model = _cnn()
    _set_filter_scale(model, "c1", np.arange(1, 17))
    _set_filter_scale(model, "c2", np.zeros(16))
    _set_filter_scale(model, "c3", np.arange(10, 0, -1))
    for w in model.get_layer("bn1").weights:
        w.assign(np.ones(16, np.float32))
    pruned = tfprune.prune_channels(model, ratio=0.5, criterion="l1")
    # c1 and c2 are one group (residual add); c2 is all zero so c1's norms decide, except
    # that c3's input slices add the same amount to every channel.
    np.testing.assert_array_equal(_alive(pruned, "c1"), np.arange(8, 16))
    np.testing.assert_array_equal(_alive(pruned, "c3"), np.arange(5))
    bn = pruned.get_layer("bn1")
    assert np.count_nonzero(keras.ops.convert_to_numpy(bn.gamma)) == 8
    assert np.count_nonzero(keras.ops.convert_to_numpy(bn.beta)) == 8
    assert np.count_nonzero(keras.ops.convert_to_numpy(bn.moving_mean)) == 8
    assert _alive(pruned, "out").size == 3  # outputs are never pruned
    assert _alive(model, "c1").size == 16  # the input model is left as it was


def test_round_to_min_channels_ignore_and_ratio_overrides():
    model = _cnn()
    p = tfprune.prune_channels(model, ratio=0.7, round_to=8, criterion="l2")
    assert _alive(p, "c1").size == 8 and _alive(p, "c3").size == 8
    p = tfprune.prune_channels(model, ratio=0.9, min_channels=4, criterion="l2")
    assert _alive(p, "c1").size == 4 and _alive(p, "c3").size == 4
    p = tfprune.prune_channels(model, ratio=0.5, ignore=["c3"], ratios={"c1": 0.25})
    assert _alive(p, "c3").size == 10 and _alive(p, "c1").size == 12


def test_global_scope_prunes_total_count():
    model = _cnn()
    p = tfprune.prune_channels(model, ratio=0.5, scope="global", criterion="l1")
    assert _alive(p, "c1").size + _alive(p, "c3").size == 13  # 26 channels, 13 pruned


def _chain():
    """Three independent groups: a (8 channels), b (16), c (8); out is frozen (model output)."""
    i = keras.Input((6, 6, 2))
    x = L.Conv2D(8, 3, padding="same", name="a")(i)
    x = L.Conv2D(16, 1, name="b")(x)
    x = L.Conv2D(8, 1, name="c")(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(i, L.Dense(3, name="out")(x))


def test_global_ratios_override_one_group_and_rank_the_rest():
    model = _chain()
    # Before: the override became the global target (29 of 32 channels removed).
    p = tfprune.prune_channels(model, ratio=0.5, scope="global", ratios={"a": 0.9})
    assert _alive(p, "a").size == 1  # round(0.9 * 8) = 7 of its own 8 removed
    assert _alive(p, "b").size + _alive(p, "c").size == 12  # 50 % of the other 24
    # Scores are divided by their group's mean: b's are all equal (1 after that), c's are
    # one large filter and seven small ones (0.08), so the ranking takes c's small ones.
    _set_filter_scale(model, "b", np.ones(16))
    _set_filter_scale(model, "c", [1, 1, 1, 1, 1, 1, 1, 100])
    model.get_layer("out").kernel.assign(np.ones((8, 3), np.float32))
    p = tfprune.prune_channels(model, ratio=0.25, scope="global", ratios={"a": 0.5})
    assert _alive(p, "a").size == 4
    assert _alive(p, "c").size == 2 and _alive(p, "b").size == 16  # 6 of 24: c's lowest
    np.testing.assert_array_equal(_alive(p, "c"), [6, 7])


def test_global_ratios_on_several_groups():
    model = _chain()
    p = tfprune.prune_channels(
        model, ratio=0.5, scope="global", ratios={"a": 0.25, "c": 0.0}, criterion="l2"
    )
    assert (_alive(p, "a").size, _alive(p, "b").size, _alive(p, "c").size) == (6, 8, 8)
    # Layer scope: the same overrides, the rest at its own 50 %.
    p = tfprune.prune_channels(model, ratio=0.5, ratios={"a": 0.25, "c": 0.0})
    assert (_alive(p, "a").size, _alive(p, "b").size, _alive(p, "c").size) == (6, 8, 8)


def test_ratios_names_must_be_producers_of_prunable_groups():
    model = _chain()
    with pytest.raises(ValueError) as info:
        tfprune.prune_channels(model, scope="global", ratios={"nope": 0.5})
    assert str(info.value) == (
        "`ratios` names 'nope', which produces no channel group of the model. Use the name "
        "of a producer layer: ['a', 'b', 'c']. Received: ratios={'nope': 0.5}"
    )
    with pytest.raises(ValueError, match=r"`ratios` names 'out', whose channels cannot be pruned"):
        tfprune.prune_channels(model, ratios={"out": 0.5})
    with pytest.raises(ValueError, match=r"different values to layers of one channel group"):
        tfprune.prune_channels(_cnn(), ratios={"c1": 0.5, "c2": 0.25})
    with pytest.raises(ValueError, match=r"Received: ratios\['a'\]=1.0"):
        tfprune.prune_channels(model, ratios={"a": 1.0})


def test_select_channels_global_with_overrides():
    from tfprune.channel_pruning import select_channels

    scores = [np.arange(4.0), np.arange(1.0, 7.0), np.arange(1.0, 3.0)]
    keeps = select_channels(scores, [0.5, None, None], "global", ratio=0.5)
    assert [k.sum() for k in keeps] == [2, 3, 1]  # 4 of the 8 ranked channels go
    np.testing.assert_array_equal(keeps[0], [False, False, True, True])
    with pytest.raises(ValueError, match=r"Received: 2 ratios for 3 groups"):
        select_channels(scores, [None, None], "global")


@pytest.mark.parametrize("name", ["l1", "l2", "fpgm", "bn_scale", "random"])
def test_builtin_criteria_score_every_channel(name):
    model = _cnn()
    group = next(g for g in tfprune.graph.channel_groups(model) if "c1" in g.producers)
    scores = criteria.get_channel(name)(group, criteria.ChannelContext(seed=3))
    assert scores.shape == (16,) and np.all(np.isfinite(scores))


def test_fpgm_ranks_the_filter_at_the_median_lowest():
    i = keras.Input((3,))
    o = L.Dense(4, name="d")(i)
    model = keras.Model(i, L.Dense(2, name="out")(o))
    k = np.array([[0.0, 1.0, 2.0, 10.0]] * 3, np.float32)
    model.get_layer("d").kernel.assign(k)
    group = next(g for g in tfprune.graph.channel_groups(model) if "d" in g.producers)
    s = criteria.fpgm(group)
    # sum_j |k_i - k_j| * sqrt(3): channel 1 (value 1) is closest to the others.
    np.testing.assert_allclose(s, np.sqrt(3) * np.array([13.0, 11.0, 11.0, 27.0]), rtol=1e-6)


def test_bn_scale_uses_gamma_and_refuses_groups_without_bn():
    model = _cnn()
    gamma = np.linspace(0.1, 1.6, 16).astype("float32")[::-1].copy()
    model.get_layer("bn1").gamma.assign(gamma)
    p = tfprune.prune_channels(model, ratio=0.25, criterion="bn_scale", ignore=["c3"])
    np.testing.assert_array_equal(_alive(p, "c1"), np.arange(12))
    with pytest.raises(ValueError, match=r"Criterion 'bn_scale' needs a BatchNormalization"):
        tfprune.prune_channels(model, ratio=0.25, criterion="bn_scale")


def test_random_is_seeded_and_callable_criteria_work():
    model = _cnn()
    a = tfprune.prune_channels(model, criterion="random", seed=1)
    b = tfprune.prune_channels(model, criterion="random", seed=1)
    c = tfprune.prune_channels(model, criterion="random", seed=2)
    np.testing.assert_array_equal(_alive(a, "c1"), _alive(b, "c1"))
    assert not np.array_equal(_alive(a, "c1"), _alive(c, "c1"))
    p = tfprune.prune_channels(model, criterion=lambda g, ctx: np.arange(g.channels, 0, -1))
    np.testing.assert_array_equal(_alive(p, "c1"), np.arange(8))


def test_taylor_accumulates_over_batches():
    model = _cnn()
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    data = [(rng.normal(size=(4, 6, 6, 2)).astype("float32"), rng.integers(0, 3, 4))] * 2
    p = tfprune.prune_channels(model, ratio=0.5, criterion="taylor", data=data)
    assert _alive(p, "c1").size == 8
    small = tfprune.shrink(p)
    np.testing.assert_allclose(
        p.predict(data[0][0], verbose=0), small.predict(data[0][0], verbose=0), atol=1e-5
    )


def test_errors():
    model = _cnn()
    with pytest.raises(ValueError, match=r"`ratio` .* Received: ratio=1.5"):
        tfprune.prune_channels(model, ratio=1.5)
    with pytest.raises(ValueError, match=r"Received: scope='all'"):
        tfprune.prune_channels(model, scope="all")
    with pytest.raises(ValueError, match=r"Unknown channel `criterion`.*criterion='l3'"):
        tfprune.prune_channels(model, criterion="l3")
    with pytest.raises(TypeError, match=r"channel `criterion` to be a string.*criterion=3"):
        tfprune.prune_channels(model, criterion=3)
    with pytest.raises(ValueError, match=r"`ignore` names layers that are not in the model"):
        tfprune.prune_channels(model, ignore=["nope"])
    with pytest.raises(ValueError, match=r"Criterion 'taylor' needs `data`"):
        tfprune.prune_channels(model, criterion="taylor")
    with pytest.raises(ValueError, match=r"one score per channel"):
        tfprune.prune_channels(model, criterion=lambda g, ctx: np.zeros(2))
    with pytest.raises(ValueError, match=r"Received: round_to=0"):
        tfprune.prune_channels(model, round_to=0)
    with pytest.raises(TypeError, match=r"Received: model=1"):
        tfprune.prune_channels(1)


def test_wrap_channel_granularity_prunes_groups_during_fit():
    model = _cnn()
    schedule = tfprune.schedules.PolynomialDecay(0.0, 0.5, 0, 4, frequency=2)
    wrapped = tfprune.wrap(model, sparsity=schedule, granularity="channel")
    wrapped.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 6, 6, 2)).astype("float32"), rng.integers(0, 3, 32)
    wrapped.fit(
        x, y, batch_size=8, epochs=2, verbose=0, callbacks=[tfprune.callbacks.UpdateMasks()]
    )
    masks = {
        layer.name: keras.ops.convert_to_numpy(layer.target("channel").mask)
        for layer in tfprune.controller.prunable_layers(wrapped)
    }
    np.testing.assert_array_equal(masks["c1"], masks["c2"])  # one group, one decision
    assert masks["c1"].sum() == 8 and masks["c3"].sum() == 5 and masks["out"].all()
    small = tfprune.shrink(wrapped)
    # BN beta and the ReLU carry constants for the removed channels into 1x1 consumers:
    # shrink folds them into c2/c3's biases, so all 8 go.
    assert small.get_layer("c1").filters == small.get_layer("c2").filters == 8
    np.testing.assert_allclose(
        wrapped.predict(x, verbose=0), small.predict(x, verbose=0), atol=1e-4, rtol=1e-4
    )
