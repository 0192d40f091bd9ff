"""Huffman codes: the entropy coding stage of Deep Compression.

Only the code lengths matter for a size: a canonical Huffman code is fully described by
the length of each symbol's code, and the coded size of a message is
`sum(count[s] * length[s])`.

Example:

>>> from tfprune import huffman
>>> huffman.code_lengths({"a": 5, "b": 2, "c": 1, "d": 1})
{'a': 1, 'b': 2, 'c': 3, 'd': 3}
>>> huffman.coded_bits({"a": 5, "b": 2, "c": 1, "d": 1})
15
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Mapping

__all__ = ["code_lengths", "coded_bits"]


def code_lengths(counts: Mapping[Hashable, int]) -> dict[Hashable, int]:
    """Length in bits of each symbol's Huffman code.

    The two least frequent groups are merged until one is left; each merge adds one bit
    to the codes of every symbol in the two groups (ties are broken by first appearance,
    so the result is deterministic). A message of a single distinct symbol gets a 1-bit
    code.

    Args:
        counts: How often each symbol occurs. Symbols with a zero count get no code.

    Returns:
        `{symbol: bits}` for every symbol with a positive count, in the order of `counts`.

    Raises:
        ValueError: If a count is negative or not an integer.
    """
    for symbol, count in counts.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(
                f"Huffman counts must be integers >= 0. Received: counts[{symbol!r}]={count!r}"
            )
    used = [s for s, c in counts.items() if c > 0]
    lengths = dict.fromkeys(used, 0)
    if len(used) == 1:
        lengths[used[0]] = 1
    heap = [(counts[s], i, [s]) for i, s in enumerate(used)]
    heapq.heapify(heap)
    order = len(heap)
    while len(heap) > 1:
        c1, _, g1 = heapq.heappop(heap)
        c2, _, g2 = heapq.heappop(heap)
        for s in g1 + g2:
            lengths[s] += 1
        heapq.heappush(heap, (c1 + c2, order, g1 + g2))
        order += 1
    return lengths


def coded_bits(counts: Mapping[Hashable, int]) -> int:
    """Bits of a message with these symbol counts, Huffman-coded (the code table excluded).

    Args:
        counts: How often each symbol occurs.

    Returns:
        `sum(count * code length)`.

    Raises:
        ValueError: If a count is negative or not an integer.
    """
    lengths = code_lengths(counts)
    return sum(counts[s] * bits for s, bits in lengths.items())
