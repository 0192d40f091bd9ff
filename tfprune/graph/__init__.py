"""Channel dependency graph: which channels of which weights must be removed together.

`channel_groups(model)` walks a Sequential or functional model (nested models, keras-hub
backbones and inputs/outputs of any structure included) and returns `ChannelGroup`s. A
group is the output channels of one or more producers (layers whose registry entry has
output channels: Dense, Conv1D/2D/3D, transposed convolutions, SeparableConv) that are tied
to each other by the layers and raw `keras.ops` operations between them, plus every weight
slice that consumes or mirrors those channels: the producers' kernels and biases, the
depthwise kernels they pass through, the four BatchNormalization vectors, and the input
slices of the consumers (with Concatenate offsets and Flatten/Reshape -> Dense position
maps).

Every channel is an integer id (negative ids are channels of no group: model inputs and
outputs of unknown calls); merges (Add, Multiply, `x + y`, ...) unite ids with a
union-find. Each layer or operation call runs one small rule from a table (`table.py`)
keyed by class or registered name: it maps the channel ids of the call's input tensors to
those of its output(s) and records the weight slices it owns. A call without a rule (a
Lambda, a custom layer, an unsupported op) freezes the channels that reach it: the groups
they belong to are marked unprunable with a reason naming the call. The model's output
channels are frozen too.

Package layout:

- `_state.py`: the data (`Graph`, `Call`, `Node`, `Slice`, `ChannelGroup`).
- `table.py`: the rule table, `register` and `lookup`.
- `walk.py`: the walker (node traversal) and group formation (`channel_groups`).
- `rules/`: rule families (`layers.py`, `ops.py`, `hub.py`, `hidden.py`: the hidden width
  of transformers, `through_norms=True`). To add a family, write a module there whose
  rules take `(graph, call)` and return the output channel ids (or a reason string),
  register them with `register(cls_or_name, rule, kind)`, and import the module in
  `rules/__init__.py`. `kind` tells `tfprune.shrink` how the constants of
  removed channels flow through the call (`table.KINDS`).

A user registers a rule for a custom layer the same way:

```python
def scale_rule(graph, call):  # MyScale multiplies each channel by a learned factor
    graph.record(call.layer, "factor", 0, call.ids[0], "norm")
    return call.ids[0]

tfprune.graph.register(MyScale, scale_rule, kind="elementwise")
```

Examples:
    >>> import keras, tfprune
    >>> inputs = keras.Input((8, 8, 3))
    >>> x = keras.layers.Conv2D(4, 3, name="c1")(inputs)
    >>> x = keras.layers.BatchNormalization(name="bn")(x)
    >>> outputs = keras.layers.Conv2D(2, 1, name="c2")(x)
    >>> groups = tfprune.graph.channel_groups(keras.Model(inputs, outputs))
    >>> [(g.channels, g.prunable) for g in groups]
    [(4, True), (2, False)]
"""

from __future__ import annotations

from tfprune.graph import rules
from tfprune.graph._state import Call, ChannelGroup, Graph, Slice, Tensor
from tfprune.graph.rules.layers import CONVOLUTIONS
from tfprune.graph.table import KINDS, register
from tfprune.graph.walk import channel_groups

__all__ = [
    "CONVOLUTIONS",
    "KINDS",
    "Call",
    "ChannelGroup",
    "Graph",
    "Slice",
    "Tensor",
    "channel_groups",
    "register",
    "rules",
]
