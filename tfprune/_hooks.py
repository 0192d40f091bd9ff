"""Temporary hooks on the calls of layers inside other layers (keras-hub block sublayers).

A sublayer called inside a block's `call` has no symbolic output in the model's graph, so
what it sees or computes on data can only be recorded while the model runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import keras


@contextlib.contextmanager
def recording(
    sublayers: list[keras.layers.Layer], record: Callable, outputs: bool = False
) -> Iterator[None]:
    """Calls `record(i, x)` with the first input `x` (or output) of each call of `sublayers[i]`.

    A temporary `call` attribute on each instance wraps the class's method; it is removed in
    `finally`. (The layers must not have a `call` attribute of their own.)

    Args:
        sublayers: The layers to watch.
        record: `record(index in sublayers, tensor)`.
        outputs: Record each call's output instead of its first input.
    """
    hooked = []
    try:
        for i, sublayer in enumerate(sublayers):

            def call(*args, _i=i, _call=sublayer.call, **kwargs):
                if not outputs:
                    record(_i, args[0] if args else kwargs["inputs"])
                result = _call(*args, **kwargs)
                if outputs:
                    record(_i, result)
                return result

            sublayer.call = call
            hooked.append(sublayer)
        yield
    finally:
        for sublayer in hooked:
            del sublayer.call
