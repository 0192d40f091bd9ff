"""Granularities and allocation: exact counts, ties, patterns, errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tfprune import allocation, granularity
from tfprune.layers import WeightSpec

DENSE = WeightSpec("kernel", in_axes=(0,), out_axes=(1,))
CONV = WeightSpec("kernel", in_axes=(-2,), out_axes=(-1,))


def _keep(g, w, s, spec=DENSE, prev=None):
    prev = np.ones(g.mask_shape(w.shape, spec), bool) if prev is None else prev
    return g.keep_mask(np.abs(w), prev, s, spec)


@settings(max_examples=60, deadline=None)
@given(
    n_rows=st.integers(1, 12),
    n_cols=st.integers(1, 12),
    sparsity=st.floats(0.0, 0.99),
    levels=st.integers(1, 4),
)
def test_weight_granularity_prunes_exactly_round_s_n_with_ties(n_rows, n_cols, sparsity, levels):
    rng = np.random.default_rng(n_rows * 100 + n_cols)
    w = rng.integers(0, levels, (n_rows, n_cols)).astype("float32")  # heavy ties, zeros
    keep = _keep(granularity.Weight(), w, sparsity)
    n = w.size
    assert (~keep).sum() == allocation.count(sparsity, n)
    # Every pruned weight scores <= every kept one.
    if (~keep).any() and keep.any():
        assert np.abs(w)[~keep].max() <= np.abs(w)[keep].min()


def test_count_rounds_half_up():
    assert allocation.count(0.5, 5) == 3
    assert allocation.count(0.25, 6) == 2  # 1.5 -> 2
    assert allocation.count(0.9, 10) == 9
    assert allocation.count(0.0, 10) == 0


def test_all_zero_weights_prune_exact_count_deterministically():
    w = np.zeros((4, 5), "float32")
    keep = _keep(granularity.Weight(), w, 0.5)
    assert (~keep).sum() == 10
    # Ties are broken by position: the first ten flat positions go.
    assert not keep.reshape(-1)[:10].any() and keep.reshape(-1)[10:].all()


def test_ties_prefer_already_pruned_weights():
    w = np.ones((2, 4), "float32")
    prev = np.ones((2, 4), bool)
    prev[1, 3] = False
    keep = _keep(granularity.Weight(), w, 0.25, prev=prev)
    assert not keep[1, 3] and (~keep).sum() == 2 and not keep[0, 0]


@pytest.mark.parametrize(("m", "n"), [(2, 4), (1, 4), (3, 8), (1, 2)])
def test_m_n_groups_have_exactly_m_zeros_along_input_axis(m, n):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 3, 16, 5)).astype("float32")
    g = granularity.get(f"{m}:{n}")
    keep = g.keep_mask(np.abs(w), np.ones(w.shape, bool), 0.5, CONV)
    groups = np.moveaxis(keep, 2, -1).reshape(-1, n)
    assert ((~groups).sum(axis=1) == m).all()
    # The zeros are the m smallest of each group.
    mags = np.moveaxis(np.abs(w), 2, -1).reshape(-1, n)
    assert (mags[~groups].reshape(-1, m).max(1) <= mags[groups].reshape(-1, n - m).min(1)).all()


def test_m_n_with_zero_target_keeps_everything():
    w = np.ones((8, 2), "float32")
    assert granularity.get("2:4").keep_mask(w, np.ones_like(w, bool), 0.0, DENSE).all()


def test_block_granularity_prunes_whole_blocks():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(8, 6)).astype("float32")
    g = granularity.get((2, 3))
    keep = _keep(g, w, 0.5)
    blocks = keep.reshape(4, 2, 2, 3).transpose(0, 2, 1, 3).reshape(8, 6)
    assert all(b.all() or not b.any() for b in blocks)
    assert (~keep).sum() == 4 * 6  # round(0.5 * 8 blocks) = 4 blocks of 6


def test_block_granularity_on_conv_uses_matrix_view():
    w = np.arange(3 * 3 * 4 * 4, dtype="float32").reshape(3, 3, 4, 4) + 1
    g = granularity.get((4, 2))
    keep = _keep(g, w, 0.5, spec=CONV)
    assert keep.shape == w.shape and (~keep).sum() == w.size // 2


def test_channel_granularity_masks_whole_output_channels():
    w = np.ones((3, 3, 2, 4), "float32") * np.array([1, 4, 2, 3], "float32")
    g = granularity.get("channel")
    prev = np.ones(4, bool)
    keep = g.keep_mask(w, prev, 0.5, CONV)
    assert keep.tolist() == [False, True, False, True]
    assert g.expand(keep, w.shape, CONV)[..., 0].sum() == 0


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        ("3:3", ValueError, "0 < m < n"),
        ("5:4", ValueError, "0 < m < n"),
        ("sparse", ValueError, "Unknown `granularity`.*Received: granularity='sparse'"),
        ((0, 4), ValueError, "positive integers"),
        (3, TypeError, "Received: granularity=3"),
        ((1.5, 2), TypeError, "Received: granularity=\\(1.5, 2\\)"),
    ],
)
def test_bad_granularity_values(value, error, match):
    with pytest.raises(error, match=match):
        granularity.get(value)


def test_m_n_must_divide_input_axis():
    g = granularity.get("2:4")
    with pytest.raises(ValueError, match=r"n=4 to divide.*layer 'd'.*size 6"):
        g.check((6, 3), DENSE, "layer 'd'")
    depthwise = WeightSpec("kernel", in_axes=(), out_axes=(-2, -1))
    with pytest.raises(ValueError, match="needs an input-channel axis"):
        g.check((3, 3, 4, 1), depthwise, "layer 'dw'")
    with pytest.raises(ValueError, match=r"Block granularity \(3, 3\) must divide the 4x4"):
        granularity.get((3, 3)).check((4, 4), DENSE, "layer 'd'")


def test_select_global_exact_count_and_ceiling():
    scores = [np.array([0.1, 0.2, 0.3, 0.4]), np.array([5.0, 6.0]), np.array([0.05, 7.0])]
    prev = [np.ones(s.size, bool) for s in scores]
    keeps = allocation.select_global(scores, prev, 4, [4, 2, 2])
    assert [k.tolist() for k in keeps] == [
        [False, False, False, True],
        [True, True],
        [False, True],
    ]
    capped = allocation.select_global(scores, prev, 4, [2, 2, 1])
    assert sum((~k).sum() for k in capped) == 4
    assert (~capped[0]).sum() == 2 and (~capped[2]).sum() == 1 and (~capped[1]).sum() == 1
    with pytest.raises(ValueError, match="allow at most 3"):
        allocation.select_global(scores, prev, 4, [1, 1, 1])


def test_ceiling_count():
    assert allocation.ceiling_count(None, 7) == 7
    assert allocation.ceiling_count(0.98, 100) == 98
    assert allocation.ceiling_count(0.5, 5) == 2
