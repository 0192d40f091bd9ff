"""tfprune.budget_search: the width model of flash/MACs/activations and the greedy search."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tfprune.budget_search import Search, WidthModel
from tfprune.channel_pruning import prune_channels
from tfprune.export.micro import planned_peak

L = keras.layers


def _model(extra_dense: bool = False) -> keras.Model:
    inputs = keras.Input((8, 8, 1))
    x = L.Conv2D(4, 3, padding="same", name="c1")(inputs)
    x = L.ReLU()(L.BatchNormalization()(x))
    x = L.Conv2D(6, 1, name="c2")(x)
    x = L.GlobalAveragePooling2D()(x)
    if extra_dense:
        x = L.Dense(5, name="d1")(x)
    return keras.Model(inputs, L.Dense(3, name="out")(x))


@pytest.fixture(scope="module")
def width_model():
    return WidthModel(prune_channels(_model(), ratio=0.0))


def test_width_model_flash_macs_and_live_bytes_at_any_width(width_model):
    wm = width_model
    assert [g.producers for g in wm.groups] == [["c1"], ["c2"]]
    assert wm.full.tolist() == [4, 6]
    # kernels 3*3*1*4 + 1*1*4*6 + 6*3, and 28 B (bias, scales, zero points) per channel
    assert wm.flash(np.array([4, 6])) == 36 + 24 + 18 + 28 * 10
    assert wm.flash(np.array([2, 3])) == 18 + 6 + 9 + 28 * 5
    assert wm.macs(np.array([4, 6])) == 64 * 36 + 64 * 24 + 18
    assert wm.macs(np.array([2, 3])) == 64 * 18 + 64 * 6 + 9
    # ops c1, c2, mean, out (BatchNormalization and ReLU fold into c1): inputs + output
    assert wm.live(np.array([4, 6])).tolist() == [64 + 256, 256 + 384, 384 + 6, 6 + 3]
    assert wm.live(np.array([2, 3])).tolist() == [64 + 128, 128 + 192, 192 + 3, 3 + 3]
    # the arena adds 8 B (requantization multiplier and shift) per convolution output
    # channel, at every op; the Dense layer has none
    assert wm.arena(np.array([4, 6])).tolist() == [v + 80 for v in [320, 640, 390, 9]]
    assert wm.arena(np.array([2, 3])).tolist() == [v + 40 for v in [192, 320, 195, 6]]


def test_planned_peak_counts_what_uneven_sizes_do_not_pack():
    # A (ops 0-1) and B (1-2) of 64 B, G (2-3) of 48 B, I (3-4) of 80 B: at most 128 B are
    # live at once, but the planner puts I at 0, A at 0, B at 64, and G, alive with B and
    # I, fits neither below I nor between I and B: it goes at 128, a peak of 176 B.
    buffers = [(64, 0, 1), (64, 1, 2), (48, 2, 3), (80, 3, 4)]
    live = [sum(n for n, a, b in buffers if a <= op <= b) for op in range(5)]
    assert max(live) == 128 and planned_peak(buffers) == 176
    assert planned_peak([(60, 0, 1), (1, 1, 2)]) == 64 + 16  # 16-byte aligned


def _anchored(wm, limits, floor):
    search = Search(wm, limits, floor)
    w = wm.full
    search.anchor({"flash": wm.flash(w), "arena": wm.arena(w).max(), "macs": wm.macs(w)})
    return search


def test_flash_limit_removes_the_least_importance_per_byte(width_model):
    # c1 channels save 43 B each but matter 3x more than c2's (35 B): the optimum for
    # 100 B is three c2 channels (loss 3 x ~1) rather than three c1 channels (loss 9).
    search = _anchored(width_model, {"flash": 358 - 100}, [1, 1])
    scores = [np.full(4, 3.0), np.array([1.0, 0.5, 2.0, 0.8, 1.2, 0.9])]
    keeps = [np.ones(4, bool), np.ones(6, bool)]
    assert search.select(scores, keeps, quota=100) == 3
    assert search.widths.tolist() == [4, 3]
    assert np.flatnonzero(~keeps[1]).tolist() == [1, 3, 5] and keeps[0].all()
    assert search.excess(search.widths) == {}


def test_quota_bounds_a_step(width_model):
    search = _anchored(width_model, {"flash": 100}, [1, 1])
    keeps = [np.ones(4, bool), np.ones(6, bool)]
    assert search.select([np.ones(4), np.ones(6)], keeps, quota=2) == 2
    assert sum(int((~k).sum()) for k in keeps) == 2


def test_floor_protects_a_group_while_others_can_be_cut(width_model):
    # c1 is cheaper to cut but held at its floor of 4 while c2 can still be cut.
    search = _anchored(width_model, {"flash": 358 - 100}, [4, 1])
    keeps = [np.ones(4, bool), np.ones(6, bool)]
    assert search.select([np.full(4, 0.1), np.ones(6)], keeps, quota=100) == 3
    assert search.widths.tolist() == [4, 3]
    # Once every group is at its floor, groups go below it.
    search = _anchored(width_model, {"flash": 120}, [4, 6])
    keeps = [np.ones(4, bool), np.ones(6, bool)]
    search.select([np.ones(4), np.ones(6)], keeps, quota=100)
    assert search.excess(search.widths) == {} and search.widths.tolist() != [4, 6]


def test_arena_limit_cuts_only_groups_at_ops_over_the_limit():
    wm = WidthModel(prune_channels(_model(extra_dense=True), ratio=0.0))
    assert [g.producers for g in wm.groups] == [["c1"], ["c2"], ["d1"]]
    # Live bytes per op: c1 320, c2 640, mean 390, d1 11, out 8, plus 80 B of requantization
    # data (8 B per c1 and c2 channel); a 540 B limit is exceeded at c2 only (by 180 B): c1
    # and c2 channels save 72 B each there, d1's nothing, so d1 (least important) is left
    # alone and the three least important c2 channels go.
    assert wm.live(wm.full).tolist() == [320, 640, 390, 11, 8]
    assert wm.arena(wm.full).tolist() == [400, 720, 470, 91, 88]
    search = _anchored(wm, {"arena": 540}, [1, 1, 1])
    scores = [np.full(4, 5.0), np.arange(1.0, 7.0), np.full(5, 0.01)]
    keeps = [np.ones(4, bool), np.ones(6, bool), np.ones(5, bool)]
    assert search.select(scores, keeps, quota=100) == 3
    assert search.widths.tolist() == [4, 3, 5]
    assert np.flatnonzero(~keeps[1]).tolist() == [0, 1, 2]


def test_anchor_offsets_the_models_to_measured_values(width_model):
    wm = width_model
    search = Search(wm, {"flash": 400, "arena": 600, "latency": 1e-3}, [1, 1])
    search.anchor({"flash": 500, "arena": 700, "macs": wm.macs(wm.full), "latency": 2e-3})
    # flash 500 - 400; arena: op c2 (640 + 60 offset) is 100 over; latency twice the limit
    assert search.excess(wm.full) == pytest.approx({"flash": 100, "arena": 100, "latency": 1e-3})
    keeps = [np.ones(4, bool), np.ones(6, bool)]
    assert search.select([np.ones(4), np.ones(6)], keeps, quota=0) == 0


def test_give_back_restores_a_group_the_arena_does_not_limit():
    # Arena bytes per op: c1 64 + 64 w1, c2 64 (w1 + w2), mean 65 w2, d1 w2 + wd, out wd + 3,
    # each plus 8 (w1 + w2) of requantization data. A 576 B arena allows w1 + w2 <= 8 and
    # w2 <= 7: from (2, 4, 2), c2 comes back to 6 (more important than c1) and d1, at no
    # op near the limit, to its full 5.
    wm = WidthModel(prune_channels(_model(extra_dense=True), ratio=0.0))
    search = _anchored(wm, {"arena": 576}, [1, 1, 1])
    keeps = [np.array([1, 1, 0, 0], bool), np.array([1, 1, 1, 1, 0, 0], bool)]
    keeps.append(np.array([1, 0, 0, 1, 0], bool))
    search.widths = np.array([2, 4, 2])
    scores = [np.full(4, 1.0), np.full(6, 2.0), np.full(5, 0.01)]
    added = search.give_back(scores, keeps)
    assert search.widths.tolist() == [2, 6, 5]
    assert [k.all() for k in keeps] == [False, True, True]
    assert sorted(added) == [(1, 4), (1, 5), (2, 1), (2, 2), (2, 4)]
    assert search.excess(search.widths) == {}
    # d1's channels use no slack: they come back first, then c2's.
    assert [j for j, _ in added] == [2, 2, 2, 1, 1]
    search.undo(added[-2:], keeps)
    assert search.widths.tolist() == [2, 4, 5] and keeps[1].tolist() == [1, 1, 1, 1, 0, 0]


def test_give_back_takes_the_most_important_channel_per_slack_and_stops_at_the_limit(
    width_model,
):
    # Flash: a c1 channel costs 43 B, a c2 channel 35 B. 80 B of room: two c2 channels
    # (70 B) fit, or one c1 channel; c2's are worth 1.0 each per 35 B, c1's 1.2 per 43 B,
    # so c2's come back (1.0 / (35/80) > 1.2 / (43/80)), the most important first.
    wm = width_model
    search = _anchored(wm, {"flash": wm.flash(np.array([3, 3])) + 80}, [1, 1])
    search.widths = np.array([3, 3])
    keeps = [np.array([1, 1, 1, 0], bool), np.array([1, 0, 1, 0, 1, 0], bool)]
    scores = [np.full(4, 1.2), np.array([1.0, 1.0, 1.0, 0.9, 1.0, 1.1])]
    assert search.give_back(scores, keeps) == [(1, 5), (1, 1)]
    assert search.widths.tolist() == [3, 5]
    assert search.excess(search.widths) == {}
    assert search.excess(np.array([3, 6])) != {} and search.excess(np.array([4, 5])) != {}


def _best_of_same_size(wm, limit, scores, total):
    """Brute force: the highest kept importance over widths with `total` channels that fit."""
    best = -np.inf
    for w1 in range(1, 5):
        w = np.array([w1, total - w1])
        if 1 <= w[1] <= 6 and wm.flash(w) <= limit:
            kept = sum(np.sort(s)[::-1][:n].sum() for s, n in zip(scores, w))
            best = max(best, kept)
    return best


def test_swap_moves_channels_to_the_known_optimum_within_the_limits(width_model):
    # Flash: kernels 9 w1 + w1 w2 + 3 w2 and 28 B per channel. With 6 channels, (1, 5),
    # (2, 4), (3, 3) and (4, 2) cost 29, 38, 45 and 50 B + 168: all fit in 10 B above
    # (3, 3). (2, 4) keeps the most importance (2 + 2 + 1.6 + 1.5 + 1 + 1 = 9.1): one
    # move, c1's channel 0 (0.2) for c2's channel 3 (1.5).
    wm = width_model
    limit = wm.flash(np.array([3, 3])) + 10
    scores = [np.array([0.2, 2.0, 2.0, 0.1]), np.array([1.0, 1.0, 1.0, 1.5, 1.6, 0.05])]
    search = _anchored(wm, {"flash": limit}, [1, 1])
    search.widths = np.array([3, 3])
    keeps = [np.array([1, 1, 1, 0], bool), np.array([1, 0, 1, 0, 1, 0], bool)]
    assert search.swap(scores, keeps) == [((0, 0), (1, 3))]
    assert search.widths.tolist() == [2, 4] and search.excess(search.widths) == {}
    assert keeps[0].tolist() == [0, 1, 1, 0] and keeps[1].tolist() == [1, 0, 1, 1, 1, 0]
    kept = sum(s[k].sum() for s, k in zip(scores, keeps))
    assert kept == pytest.approx(9.1) == _best_of_same_size(wm, limit, scores, 6)
    # The floor keeps c1 at 3: no move gains (c2's least important kept channel, 1.0, is
    # worth more than c1's best dropped one, 0.2).
    search = _anchored(wm, {"flash": limit}, [3, 1])
    search.widths = np.array([3, 3])
    keeps = [np.array([1, 1, 1, 0], bool), np.array([1, 0, 1, 0, 1, 0], bool)]
    assert search.swap(scores, keeps) == [] and search.widths.tolist() == [3, 3]


def test_swap_never_breaks_a_limit(width_model):
    # c1's dropped channel 3 is worth 5 (c2's least kept 1): moving it in costs 5 B
    # ((4, 2) against (3, 3), see above). With 4 B of room nothing moves; with 5 B it moves
    # (and c1 is then full).
    wm = width_model
    assert wm.flash(np.array([4, 2])) - wm.flash(np.array([3, 3])) == 5
    scores = [np.array([1.0, 1.0, 1.0, 5.0]), np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0])]
    for room, moves in ((4, []), (5, [((1, 0), (0, 3))])):
        search = _anchored(wm, {"flash": wm.flash(np.array([3, 3])) + room}, [1, 1])
        search.widths = np.array([3, 3])
        keeps = [np.array([1, 1, 1, 0], bool), np.array([1, 0, 1, 0, 1, 0], bool)]
        assert search.swap(scores, keeps) == moves
        assert search.excess(search.widths) == {}


def _all_widths(wm):
    """Every width vector of `wm`, each group from 1 to its full width."""
    return [np.array(w) + 1 for w in np.ndindex(*wm.full)]


def test_flash_is_the_closed_form_at_every_width():
    # kernels 9 w1 + w1 w2 + w2 wd + 3 wd, and 28 B per output channel of c1, c2 and d1
    wm = WidthModel(prune_channels(_model(extra_dense=True), ratio=0.0))
    for w1, w2, wd in _all_widths(wm):
        expected = 9 * w1 + w1 * w2 + w2 * wd + 3 * wd + 28 * (w1 + w2 + wd)
        assert wm.flash(np.array([w1, w2, wd])) == expected


class _Uncached(WidthModel):
    """The width model computing every value afresh: the reference for the remembered one."""

    def _cached(self, kind, widths, compute):
        return compute(np.asarray(widths))


def test_remembered_values_equal_a_fresh_computation_in_any_order():
    model = prune_channels(_model(extra_dense=True), ratio=0.0)
    wm, ref = WidthModel(model), _Uncached(model)
    widths = _all_widths(wm)
    order = np.random.default_rng(0).permutation(2 * len(widths)) % len(widths)
    for k in order:  # every width vector twice, interleaved
        w = widths[k]
        assert wm.flash(w) == ref.flash(w) and wm.macs(w) == ref.macs(w)
        assert wm.arena(w).tolist() == ref.arena(w).tolist()
    w = widths[7]
    wm.arena(w)[:] = 0  # a caller changing the array it got does not change the model
    assert wm.arena(w).tolist() == ref.arena(w).tolist()


def _blocks() -> keras.Model:
    """Four channel groups of uneven cost: a stem and three depthwise-separable blocks."""
    inputs = keras.Input((12, 12, 1))
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(12, 3, strides=2, padding="same")(inputs)))
    for filters, stride in ((16, 1), (24, 2), (32, 1)):
        x = L.ReLU()(L.DepthwiseConv2D(3, strides=stride, padding="same")(x))
        x = L.ReLU()(L.Conv2D(filters, 1)(x))
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(10)(x))


def test_search_makes_the_same_choices_as_with_fresh_values():
    # select to 50 % of flash and arena, give back into 3 % more room, swap in 6 % more:
    # identical widths, channels and moves whether the width model remembers or not.
    model = prune_channels(_blocks(), ratio=0.0)
    runs = []
    for wm in (WidthModel(model), _Uncached(model)):
        w = wm.full
        scores = [np.random.default_rng(1).random(n) * (j + 1) for j, n in enumerate(w)]
        dense = {"flash": wm.flash(w) + 1000, "arena": wm.arena(w).max() + 200}
        limits = {k: v * 0.5 for k, v in dense.items()}
        search = _anchored(wm, limits, np.maximum(1, w // 4))
        search.anchor({**dense, "macs": wm.macs(w)})
        keeps = [np.ones(n, bool) for n in w]
        dropped = search.select(scores, keeps, quota=10**6)
        search.limits = {k: v * 1.03 for k, v in limits.items()}
        added = search.give_back(scores, keeps)
        search.limits = {k: v * 1.06 for k, v in limits.items()}
        moves = search.swap(scores, keeps)
        runs.append((dropped, added, moves, search.widths.tolist(), [k.tolist() for k in keeps]))
    assert runs[0] == runs[1]
    dropped, added, moves = runs[0][:3]
    assert dropped > 0 and added and moves  # every phase had something to do
