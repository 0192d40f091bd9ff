"""tfprune.budget_importance: the measured loss prices behind fit_budget(criterion="loss")."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
from conftest import small_cnn, toy_data

import tfprune
from tfprune import budget as budget_lib
from tfprune import criteria
from tfprune.budget_importance import loss_prices
from tfprune.budget_search import WidthModel
from tfprune.channel_pruning import zero_channels


def _cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
    shifted = logits - logits.max(-1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return float(-log_p[np.arange(len(y)), y].mean())


@pytest.fixture()
def zeroable():
    model = tfprune.prune_channels(small_cnn(), ratio=0.0)
    bn = model.get_layer("bn1")
    rng = np.random.default_rng(3)
    bn.moving_mean.assign(rng.normal(0, 0.5, 8).astype("float32"))
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, 8).astype("float32"))
    bn.gamma.assign(rng.uniform(0.5, 1.5, 8).astype("float32"))
    return model


@pytest.mark.backend  # also under JAX and torch: model calls, weights, shrink
def test_loss_prices_match_a_recomputation_and_leave_the_weights(zeroable):
    x, y = toy_data(200, seed=4)
    groups = WidthModel(zeroable).groups
    keeps = [np.ones(g.channels, bool) for g in groups]
    l1 = criteria.get_channel("l1")
    reference = [np.asarray(l1(g, None)) for g in groups]
    keeps[0][[2, 5]] = False  # two channels already dropped in the first group
    zero_channels(groups[0], keeps[0])
    before = [w.copy() for w in zeroable.get_weights()]

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    scores = loss_prices(groups, keeps, zeroable, (x, y), loss, 0.25, reference)

    after = zeroable.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    assert len(scores) == len(groups) == 3  # c1 (with bn1), c2, d1
    base = _cross_entropy(np.asarray(zeroable.predict(x, verbose=0)), y)
    prices, orders = [], []
    for group, keep, ref in zip(groups, keeps, reference):
        norms = np.where(keep, l1(group, None), ref)  # a dropped channel: its L1 before
        order = np.argsort(norms, kind="stable")
        kept = order[keep[order]]
        k = min(kept.size - 1, max(1, math.ceil(0.25 * kept.size)))
        probe = keras.models.clone_model(zeroable)
        probe.set_weights(zeroable.get_weights())
        fewer = keep.copy()
        fewer[kept[:k]] = False
        zero_channels(WidthModel(probe).groups[groups.index(group)], fewer)
        prices.append((_cross_entropy(np.asarray(probe.predict(x, verbose=0)), y) - base) / k)
        orders.append(order)
    floor = max(1e-9, 1e-6 * max(abs(p) for p in prices))
    for group, got, order, price in zip(groups, scores, orders, prices):
        expected = np.zeros(group.channels)
        expected[order] = max(price, floor) * (1 + np.arange(order.size) / order.size)
        np.testing.assert_allclose(got, expected, rtol=2e-4, atol=1e-12)


def test_fit_budget_loss_criterion_needs_labels_and_a_loss(digits_cnn):
    model, (x_train, y_train), _ = digits_cnn
    with pytest.raises(
        ValueError,
        match=r"Criterion 'loss' needs labelled data: pass data=\(x, y\)\. "
        r"Received: data of type ndarray",
    ):
        tfprune.fit_budget(model, tfprune.Budget(flash=1000), x_train, criterion="loss")
    plain = keras.Model(model.inputs, model.outputs)  # not compiled: no loss
    with pytest.raises(ValueError, match=r"Criterion 'loss' needs a loss\..*Received: loss=None"):
        tfprune.fit_budget(plain, tfprune.Budget(flash=1000), (x_train, y_train), criterion="loss")


@pytest.mark.slow  # several int8 conversions (about 50 s on 2 shared cores)
def test_fit_budget_with_loss_prices_meets_the_limits(digits_cnn):
    model, (x_train, y_train), _ = digits_cnn
    before = budget_lib.measure(model, x_train, arena="estimate")
    limits = tfprune.Budget(flash=int(before.flash * 0.6))
    small, report = tfprune.fit_budget(
        model, limits, (x_train, y_train), criterion="loss", arena="estimate", verbose=False
    )
    assert report.met == {"flash": True} and report.after.flash <= limits.flash
    assert report.after.flash == budget_lib.measure(small, x_train, arena="estimate").flash
    widths = {name: kept for name, (_, kept) in report.widths.items()}
    assert [
        small.get_layer(n).get_config()["filters" if "conv" in n else "units"] for n in widths
    ] == list(widths.values())
