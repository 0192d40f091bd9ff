"""`tfprune.call_hooks.recording`: inputs of nested layers while a model runs."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tfprune.call_hooks import recording


def test_recording_hooks_are_removed_when_the_model_fails():
    dense = keras.layers.Dense(2)
    x = np.ones((3, 4), np.float32)
    seen = []
    record = recording([dense], lambda i, t: seen.append((i, t.shape)))
    with pytest.raises(RuntimeError, match="stop"), record:
        dense(x)
        raise RuntimeError("stop")
    assert seen == [(0, (3, 4))]
    assert "call" not in vars(dense)
    dense(x)
    assert len(seen) == 1
