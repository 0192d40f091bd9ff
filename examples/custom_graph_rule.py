"""Teach tfprune.graph a custom layer, then prune and shrink through it.

`ChannelScale` multiplies each channel by a learned factor. tfprune.graph knows nothing
about it, so the channels that reach it are frozen; one rule (channel c in, channel c
out, and the factor vector holds the channels) makes them prunable.

Run: python examples/custom_graph_rule.py
"""

from __future__ import annotations

import keras
import numpy as np

import tfprune


# --8<-- [start:rule]
class ChannelScale(keras.layers.Layer):
    """`x * factor`, one learned factor per channel."""

    def build(self, input_shape):
        self.factor = self.add_weight(shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.factor


def channel_scale_rule(graph, call):
    """Channel c of the output is channel c of the input; `factor` holds the channels."""
    graph.record(call.layer, "factor", 0, call.ids[0], "norm")
    return call.ids[0]


# --8<-- [end:rule]


def build_model() -> keras.Model:
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(32, 3, activation="relu", name="conv1")(inputs)
    x = ChannelScale(name="scale")(x)
    x = keras.layers.Conv2D(64, 3, activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x))


def prunable(model: keras.Model) -> list[tuple[list[str], bool]]:
    return [(g.producers, g.prunable) for g in tfprune.graph.channel_groups(model)]


def main() -> keras.Model:
    model = build_model()
    # --8<-- [start:use]
    print("before:", prunable(model))
    tfprune.graph.register(ChannelScale, channel_scale_rule, kind="elementwise")
    print("after: ", prunable(model))
    small = tfprune.shrink(tfprune.prune_channels(model, ratio=0.5))
    # --8<-- [end:use]
    print("conv1 filters:", small.get_layer("conv1").filters)
    print("parameters:", model.count_params(), "->", small.count_params())
    x = np.random.default_rng(0).normal(size=(1, 16, 16, 3)).astype("float32")
    print("output shape:", tuple(small(x).shape))
    return small


if __name__ == "__main__":
    main()
