"""tfprune.budget_uniform: the uniform candidate fit_budget weighs against its search."""

from __future__ import annotations

import keras
import numpy as np
from conftest import toy_data

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


def test_prefer_uniform_returns_the_lower_loss_and_leaves_those_weights():
    _, zeroable, wm, reference = _setup()
    rng = np.random.default_rng(0)
    bn = zeroable.get_layer("bn")
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, 8).astype("float32"))
    x, _ = toy_data(128, seed=1)
    y = np.argmax(np.asarray(zeroable.predict(x, verbose=0)), -1)  # the dense model's labels
    groups, initial = wm.groups, zeroable.get_weights()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    limit = wm.flash(np.array([4, 6]))

    def run(keeps):
        for group, keep in zip(groups, keeps):
            zero_channels(group, keep)
        search = Search(wm, {"flash": limit}, [1, 1])
        search.anchor({"flash": wm.flash(wm.full), "arena": 0.0, "macs": 0.0})
        return prefer_uniform(
            zeroable,
            groups,
            keeps,
            initial,
            reference,
            search,
            (x, y),
            loss,
            None,
            lambda: {"flash": 0},  # every uniform candidate fits: ratio 0 is found
            lambda r: r["flash"] > limit,
        )

    # the search kept the weakest channels: the uniform point (ratio 0) has a lower loss
    weakest = [np.argsort(np.argsort(r)) < n for r, n in zip(reference, (4, 6))]
    point = run(weakest)
    assert point is not None and point.ratio == 0.0
    assert all(k.all() for k in point.keeps)
    for a, b in zip(zeroable.get_weights(), initial):
        np.testing.assert_array_equal(a, b)
    # the search kept every channel, with sharper logits (a lower loss on the model's own
    # labels): no uniform point beats it, and its weights are left as they were
    everything = [np.ones(8, bool), np.ones(12, bool)]
    zeroable.get_layer("out").kernel.assign(zeroable.get_layer("out").kernel * 1.5)
    tuned = zeroable.get_weights()
    assert run(everything) is None
    for a, b in zip(zeroable.get_weights(), tuned):
        np.testing.assert_array_equal(a, b)
