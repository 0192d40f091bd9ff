"""Channel-id helpers shared by `tfprune.shrink` and its rules: which positions stay.

A tensor's channels are an array of ids (`tfprune.graph`; negative ids belong to no group
and always stay), and `keep_id[i]` says whether `tfprune.shrink` keeps channel id `i`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["kept", "positions"]


def kept(ids: np.ndarray, keep_id: np.ndarray) -> np.ndarray:
    """Per position of `ids`: True unless it holds a channel that shrink removes.

    Args:
        ids: Channel ids of a tensor's positions (negative: no group).
        keep_id: Per channel id, whether it is kept.

    Returns:
        A boolean array of `ids`' shape.
    """
    out = np.ones(ids.size, bool)
    sel = ids >= 0
    out[sel] = keep_id[ids[sel]]
    return out


def positions(ids: np.ndarray, keep_id: np.ndarray) -> np.ndarray:
    """The indices of the positions of `ids` that shrink keeps.

    Args:
        ids: Channel ids of a tensor's positions (negative: no group).
        keep_id: Per channel id, whether it is kept.

    Returns:
        The kept positions, in increasing order.
    """
    return np.flatnonzero(kept(ids, keep_id))
