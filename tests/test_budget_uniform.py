"""tfprune.budget_uniform: the uniform candidate fit_budget weighs against its search."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import tfprune
from tfprune import criteria
from tfprune.budget_search import Search, WidthModel
from tfprune.budget_uniform import prefer_uniform, uniform_keeps, uniform_point
from tfprune.channel_pruning import prune_channels, zero_channels

L = keras.layers


def _model() -> keras.Model:
    inputs = keras.Input((8, 8, 1))
    x = L.Conv2D(8, 3, padding="same", name="c1")(inputs)
    x = L.ReLU()(L.BatchNormalization(name="bn")(x))
    x = L.Conv2D(12, 1, name="c2")(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(3, name="out")(x))


def _setup():
    model = _model()
    zeroable = prune_channels(model, ratio=0.0)
    wm = WidthModel(zeroable)
    reference = [np.asarray(criteria.get_channel("l1")(g, None)) for g in wm.groups]
    return model, zeroable, wm, reference


def test_uniform_keeps_are_the_channels_prune_channels_keeps():
    model, zeroable, _, reference = _setup()
    for ratio in (0.25, 0.5, 40 / 64):
        keeps = uniform_keeps(reference, ratio)
        assert [int(k.sum()) for k in keeps] == [
            8 - round(8 * ratio),
            12 - round(12 * ratio),
        ]
        probe = keras.models.clone_model(zeroable)
        probe.set_weights(zeroable.get_weights())
        for group, keep in zip(WidthModel(probe).groups, keeps):
            zero_channels(group, keep)
        pruned = prune_channels(model, ratio=ratio)
        for a, b in zip(probe.get_weights(), pruned.get_weights()):
            np.testing.assert_array_equal(a, b)


def _fake_file(wm, offset):
    """A 'file' whose flash is the width model's plus `offset`; records the widths measured."""
    calls = []

    def measure(keeps):
        widths = np.array([k.sum() for k in keeps])
        calls.append(widths.tolist())
        return {"flash": wm.flash(widths) + offset}

    return measure, calls


def test_uniform_point_walks_from_the_models_guess_to_the_smallest_ratio_that_fits():
    _, _, wm, reference = _setup()
    limit = wm.flash(np.array([5, 7]))  # widths at ratio 24/64 (5 of 8, 7 of 12 kept)

    def walk(anchor_error):
        # the anchored model is exact, or off by `anchor_error` bytes against the file
        search = Search(wm, {"flash": limit}, [1, 1])
        search.anchor({"flash": wm.flash(wm.full) + anchor_error, "arena": 0.0, "macs": 0.0})
        measure, calls = _fake_file(wm, 0.0)
        point = uniform_point(search, reference, measure, lambda r: r["flash"] > limit)
        assert [int(k.sum()) for k in point.keeps] == [5, 7]
        assert point.ratio == 24 / 64 and point.resources == {"flash": limit}
        return calls

    # exact: the guess fits, one step down does not
    assert walk(0.0) == [[5, 7], [5, 8]]
    # the model overestimates: thinner guess, down while the file fits
    calls = walk(60.0)
    assert len(calls) > 2 and calls[-2:] == [[5, 7], [5, 8]]
    # the model underestimates: the guess breaks, up until the file fits, then stop
    calls = walk(-60.0)
    assert len(calls) >= 2 and calls[-1] == [5, 7]
    assert all(sum(c) > 12 for c in calls[:-1])
    # nothing fits: even the thinnest uniform model is over
    search = Search(wm, {"flash": 1.0}, [1, 1])
    search.anchor({"flash": wm.flash(wm.full), "arena": 0.0, "macs": 0.0})
    measure, calls = _fake_file(wm, 0.0)
    assert uniform_point(search, reference, measure, lambda r: r["flash"] > 1.0) is None
    assert calls == [[1, 1]]


@pytest.mark.backend  # also under JAX and torch: model calls, weights, shrink
def test_prefer_uniform_returns_a_dominating_uniform_point_only():
    _, zeroable, wm, reference = _setup()
    groups, initial = wm.groups, zeroable.get_weights()

    def run(keeps, limit_widths):
        for group, keep in zip(groups, keeps):
            zero_channels(group, keep)
        limit = wm.flash(np.array(limit_widths))
        search = Search(wm, {"flash": limit}, [1, 1])
        search.anchor({"flash": wm.flash(wm.full), "arena": 0.0, "macs": 0.0})

        def remeasure():  # the file of the model as prefer_uniform left it
            return {"flash": wm.flash(np.array(_kept(zeroable)))}

        return prefer_uniform(
            zeroable,
            groups,
            keeps,
            initial,
            reference,
            search,
            remeasure,
            lambda r: r["flash"] > limit,
        )

    # the search kept the 3 and 5 weakest channels; uniform [4, 6] fits: it dominates
    weakest = [np.argsort(np.argsort(r)) < n for r, n in zip(reference, (3, 5))]
    point = run(weakest, [4, 6])
    assert point is not None and point.ratio == 30 / 64  # the least pruning to [4, 6]
    assert [int(k.sum()) for k in point.keeps] == [4, 6] and _kept(zeroable) == [4, 6]
    expected = prune_channels(_model_with(initial), ratio=30 / 64).get_weights()
    for a, b in zip(zeroable.get_weights(), expected):
        np.testing.assert_array_equal(a, b)
    # the search kept 8 and 2: more in c1 than any uniform model that fits ([4, 6] at most
    # here); nothing dominates, the search's (fine-tuned) weights are left as they were
    zeroable.set_weights(initial)
    uneven = [np.ones(8, bool), np.arange(12) < 2]
    zeroable.get_layer("out").kernel.assign(zeroable.get_layer("out").kernel * 1.5)
    for group, keep in zip(groups, uneven):
        zero_channels(group, keep)
    tuned = zeroable.get_weights()
    assert run(uneven, [4, 6]) is None
    for a, b in zip(zeroable.get_weights(), tuned):
        np.testing.assert_array_equal(a, b)
    # the same widths as the uniform point: not more anywhere, the search's result stays
    zeroable.set_weights(initial)
    same = uniform_keeps(reference, 0.5)
    assert run(same, [4, 6]) is None


def _model_with(weights):
    model = _model()
    model.set_weights(weights)
    return model


@pytest.mark.backend  # also under JAX and torch: model calls, weights, shrink
def test_prefer_uniform_asks_the_judge_when_neither_dominates():
    _, zeroable, wm, reference = _setup()
    groups, initial = wm.groups, zeroable.get_weights()
    limit = wm.flash(np.array([4, 6]))
    uneven = [np.ones(8, bool), np.arange(12) < 2]  # 8 and 2 against uniform's 4 and 6

    def run(judge):
        zeroable.set_weights(initial)
        for group, keep in zip(groups, uneven):
            zero_channels(group, keep)
        search = Search(wm, {"flash": limit}, [1, 1])
        search.anchor({"flash": wm.flash(wm.full), "arena": 0.0, "macs": 0.0})
        widths = []

        def scored(small):
            widths.append([small.get_layer(n).get_config()["filters"] for n in ("c1", "c2")])
            return judge(small)

        point = prefer_uniform(
            zeroable,
            groups,
            uneven,
            initial,
            reference,
            search,
            lambda: {"flash": wm.flash(np.array(_kept(zeroable)))},
            lambda r: r["flash"] > limit,
            scored,
        )
        return point, widths

    # parameters: c1 8 -> 9*8+8 (+BN 4*8), c2 2 -> 8*2+2, out 2*3+3 against 4 / 6
    point, widths = run(lambda small: small.count_params())
    assert widths == [[8, 2], [4, 6]] and point is None  # the search's model is larger
    assert _kept(zeroable) == [8, 2]  # left at the search's result
    point, widths = run(lambda small: -small.count_params())
    assert widths == [[8, 2], [4, 6]] and point is not None
    assert [int(k.sum()) for k in point.keeps] == [4, 6] and _kept(zeroable) == [4, 6]


def _kept(model) -> list[int]:
    """Output channels of c1 and c2 whose kernel is not all zero."""
    kernels = [model.get_layer(n).kernel.numpy() for n in ("c1", "c2")]
    return [int((np.abs(k) > 0).any(axis=(0, 1, 2)).sum()) for k in kernels]


def test_fit_budget_rejects_a_compare_uniform_that_is_neither_bool_nor_callable():
    model = _model()
    with pytest.raises(
        TypeError,
        match=r"`compare_uniform` to be a bool or a callable `fn\(small\) -> score`\. "
        r"Received: compare_uniform='yes'",
    ):
        tfprune.fit_budget(
            model, tfprune.Budget(flash=1000), np.zeros((4, 8, 8, 1)), compare_uniform="yes"
        )
