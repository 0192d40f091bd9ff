"""Tests for benchmarks/_transformers.py's text helpers: the split, windows, n-gram baseline."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from conftest import load_benchmark

T = load_benchmark("_transformers")


def test_ngram_perplexity_matches_witten_bell_by_hand():
    # Unigram (add-one): a and b seen twice in 4 bytes -> 3 / 260 each.
    # Bigram counts: ab twice, ba once; after a: 2 bytes, 1 distinct; after b: 1, 1.
    p_b_after_a = (2 + 1 * 3 / 260) / (2 + 1)
    p_a_after_b = (1 + 1 * 3 / 260) / (1 + 1)
    expected = math.exp(-(math.log(p_b_after_a) + math.log(p_a_after_b)) / 2)
    got = T.ngram_perplexity(b"abab", b"aba", 2, np.array([1, 2]))
    assert got == pytest.approx(expected, rel=1e-12)
    assert T.ngram_perplexity(b"abab", b"aba", 1, np.array([1, 2])) == pytest.approx(
        260 / 3, rel=1e-12
    )


def test_ngram_unseen_context_and_text_start_fall_back_to_lower_order():
    # Position 0 has no context: the unigram probability, whatever n is.
    assert T.ngram_perplexity(b"abab", b"b", 3, np.array([0])) == pytest.approx(260 / 3)
    # Context "c" never seen in training: the unigram probability of a (3 / 260).
    assert T.ngram_perplexity(b"abab", b"ca", 2, np.array([1])) == pytest.approx(260 / 3)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_ngram_probabilities_sum_to_one(n):
    train = b"abracadabra, abracadabra!"
    total = sum(
        1 / T.ngram_perplexity(train, b"abr" + bytes([w]), n, np.array([3])) for w in range(256)
    )
    assert total == pytest.approx(1.0, abs=1e-12)


def test_ngram_order_out_of_range_raises():
    with pytest.raises(ValueError, match=re.escape("n must be between 1 and 8. Received: n=9")):
        T.ngram_perplexity(b"ab", b"ab", 9, np.array([1]))


def test_windows_start_where_window_starts_says():
    text = bytes(range(40))
    x, y = T.byte_windows(text, 8)
    starts = T.window_starts(len(text), 8)
    assert starts.tolist() == [0, 8, 16, 24]
    assert x[:, 0].tolist() == starts.tolist()
    assert (y == x + 1).all()


def test_stdlib_split_is_disjoint_by_file_and_sized():
    split = T.stdlib_split(train_bytes=50_000, heldout_bytes=20_000)
    names = {key: {p.name for p in files} for key, (files, _) in split.items()}
    assert not names["train"] & names["validation"]
    assert not names["train"] & names["test"]
    assert not names["validation"] & names["test"]
    assert len(split["train"][1]) == 50_000
    for key in ("validation", "test"):
        files, text = split[key]
        chunk = 20_000 // len(files)
        assert text == b"".join(p.read_bytes()[:chunk] for p in files)
