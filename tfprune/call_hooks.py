"""Recording what sublayers receive while a model runs (calibration statistics).

Layers nested inside other layers (the projections of an attention layer, the Dense layers
of a keras-hub block) are not nodes of the functional graph, so their inputs cannot be
probed with a sub-model. `recording` hooks their `call` for the duration of a `with` block.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import keras

__all__ = ["recording"]


@contextlib.contextmanager
def recording(
    sublayers: list[keras.layers.Layer], record: Callable, outputs: bool = False
) -> Iterator[None]:
    """Calls `record(i, x)` with the first input `x` (or output) of every call of `sublayers[i]`.

    A temporary `call` attribute on each instance wraps the class's method; it is removed in
    `finally`. The layers must not have a `call` attribute of their own (Keras layers
    don't).

    Args:
        sublayers: The layers to record.
        record: Called with the index of the layer and its first input, on every call.
        outputs: Record each call's output instead of its first input.

    Yields:
        Nothing; the hooks are in place inside the `with` block.
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
