"""tfprune.budget_give_back: channels added back once every limit is met, checked on the file."""

from __future__ import annotations

import keras
import numpy as np

from tfprune.budget import Resources
from tfprune.budget_give_back import (
    Refinement,
    give_back,
    restore_channels,
    snapshot_weights,
    swap,
)
from tfprune.budget_search import Search, WidthModel
from tfprune.channel_pruning import prune_channels, zero_channels

L = keras.layers


def _model() -> keras.Model:
    inputs = keras.Input((8, 8, 1))
    x = L.Conv2D(4, 3, padding="same", name="c1")(inputs)
    x = L.ReLU()(L.BatchNormalization(name="bn")(x))
    x = L.Conv2D(6, 1, name="c2")(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(3, name="out")(x))


def _randomised(model: keras.Model) -> keras.Model:
    rng = np.random.default_rng(0)
    for w in model.weights:
        w.assign(rng.uniform(0.5, 1.5, w.shape).astype("float32"))
    return model


def test_restore_channels_gives_back_exactly_the_zeroed_weights():
    model = _randomised(prune_channels(_model(), ratio=0.0))
    groups = WidthModel(model).groups
    before = [w.numpy().copy() for w in model.weights]
    snapshot = snapshot_weights(groups)
    keep = np.array([1, 0, 0, 1], bool)
    zero_channels(groups[0], keep)
    kernel = model.get_layer("c1").kernel.numpy()
    assert (kernel[..., 1:3] == 0).all() and (model.get_layer("bn").gamma.numpy()[1:3] == 0).all()
    restore_channels(groups, [(0, 2)], snapshot)
    after = model.get_layer("c1").kernel.numpy()
    assert (after[..., 1] == 0).all()
    np.testing.assert_array_equal(after[..., [0, 2, 3]], before[0][..., [0, 2, 3]])
    restore_channels(groups, [(0, 1)], snapshot)
    for w, value in zip(model.weights, before):
        np.testing.assert_array_equal(w.numpy(), value)


def _resources(flash: float) -> Resources:
    return Resources(flash=flash, arena=0, macs=0, latency=None, arena_source="estimate")


def _setup(limit_true: float):
    """c1 at 1 of 4 channels, c2 at 6 of 6; a flash limit the models think allows c1 = 4."""
    model = _randomised(prune_channels(_model(), ratio=0.0))
    wm = WidthModel(model)
    full = wm.full
    search = Search(wm, {"flash": wm.flash(full)}, [1, 1])
    search.widths = np.array([1, 6])
    keeps = [np.array([1, 0, 0, 0], bool), np.ones(6, bool)]
    snapshot = snapshot_weights(wm.groups)
    zero_channels(wm.groups[0], keeps[0])
    measured = []

    def remeasure():  # the "file": the model's flash, with a true limit tighter than thought
        width = int((np.abs(model.get_layer("c1").kernel.numpy()).sum(axis=(0, 1, 2)) > 0).sum())
        measured.append(width)
        return _resources(wm.flash(np.array([width, 6])))

    def broken(res):
        return res.flash > limit_true

    start = _resources(wm.flash(search.widths))
    scores = [np.array([1.0, 0.5, 3.0, 2.0]), np.ones(6)]
    return wm, search, keeps, snapshot, remeasure, broken, start, scores, measured


def test_give_back_keeps_what_the_file_confirms():
    wm, search, keeps, snapshot, remeasure, broken, start, scores, measured = _setup(1e9)
    state = Refinement(search, scores, keeps, wm.groups, snapshot, remeasure, broken)
    current, total = give_back(state, start)
    assert total == 3 and keeps[0].all() and measured == [4]
    assert current.flash == wm.flash(wm.full)


def test_give_back_undoes_the_last_additions_while_the_file_breaks_a_limit():
    # The true limit allows c1 = 2, the models think 4: they add c1's channels 2, 3, 1
    # (most important first); the file at 4 channels breaks the limit, the later half
    # (3, 1) is undone, and the file at 2 channels fits. The second round adds 3 and 1
    # again; 4 and then 3 channels break the limit, so the whole round is undone.
    limit = WidthModel(prune_channels(_model(), ratio=0.0)).flash(np.array([2, 6]))
    wm, search, keeps, snapshot, remeasure, _, start, scores, measured = _setup(limit)
    state = Refinement(
        search, scores, keeps, wm.groups, snapshot, remeasure, lambda r: r.flash > limit
    )
    current, total = give_back(state, start)
    assert measured == [4, 2, 4, 3] and total == 1
    assert keeps[0].tolist() == [True, False, True, False] and search.widths.tolist() == [2, 6]
    assert current.flash == limit
    kernel = wm.groups[0].members[0].layer.kernel.numpy()
    assert (kernel[..., [1, 3]] == 0).all() and (kernel[..., [0, 2]] != 0).all()


def test_swap_undoes_the_last_moves_while_the_file_breaks_a_limit():
    # c1 at 1 of 4 channels, c2 full; the models allow any widths. c1's dropped channels 2
    # (3.0) and 3 (2.0) are worth more than c2's (1.0): two moves, to (3, 4). The file's
    # true limit allows (2, 5) only: the second move is undone (c1's channel 3 zeroed
    # again, c2's channel 1 given back its weights) and the file at (2, 5) fits.
    model = _randomised(prune_channels(_model(), ratio=0.0))
    wm = WidthModel(model)
    groups = wm.groups
    limit = wm.flash(np.array([2, 5]))
    search = Search(wm, {"flash": wm.flash(wm.full)}, [1, 1])
    search.widths = np.array([1, 6])
    keeps = [np.array([1, 0, 0, 0], bool), np.ones(6, bool)]
    snapshot = snapshot_weights(groups)
    zero_channels(groups[0], keeps[0])
    measured = []

    def alive(name):
        kernel = model.get_layer(name).kernel.numpy()
        return np.abs(kernel).sum(axis=tuple(range(kernel.ndim - 1))) > 0

    def remeasure():
        widths = (int(alive("c1").sum()), int(alive("c2").sum()))
        measured.append(widths)
        return _resources(wm.flash(np.array(widths)))

    scores = [np.array([1.0, 0.5, 3.0, 2.0]), np.ones(6)]
    start = _resources(wm.flash(search.widths))
    state = Refinement(
        search, scores, keeps, groups, snapshot, remeasure, lambda r: r.flash > limit
    )
    current, moved = swap(state, start)
    assert measured == [(3, 4), (2, 5)] and moved == 1 and current.flash == limit
    assert search.widths.tolist() == [2, 5]
    assert keeps[0].tolist() == [1, 0, 1, 0] and keeps[1].tolist() == [0, 1, 1, 1, 1, 1]
    assert alive("c1").tolist() == [1, 0, 1, 0] and alive("c2").tolist() == [0, 1, 1, 1, 1, 1]
    np.testing.assert_array_equal(
        model.get_layer("c1").kernel.numpy()[..., 2], snapshot["c1/kernel"][..., 2]
    )
    np.testing.assert_array_equal(
        model.get_layer("c2").kernel.numpy()[..., 1], snapshot["c2/kernel"][..., 1]
    )
