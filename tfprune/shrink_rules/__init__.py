"""Rules of `tfprune.shrink`: what each layer, operation and node kind does when channels go.

`tfprune.shrink` (the driver) decides which channels go, clones the model and slices its
weights along the axes the channel graph (`tfprune.graph`) recorded. These tables say what
that means for each piece of the model:

- `configs.py`: per layer class (or registered name), the config update that rebuilds a
  layer at its kept width (`Dense.units`, `Conv2D.filters`, `Reshape.target_shape`, ...):
  `register(target, rule)` and `lookup(layer)`.
- `ops.py`: raw `keras.ops` operations whose arguments hold widths (reshape and split
  configs, `x[..., a:b]` keys, per-channel constant arguments), by node kind.
- `constants.py`: per node kind (`tfprune.graph.KINDS`), how the constant a removed
  channel still carries flows through a call, folds into a consumer's bias, or forces the
  channel to be kept.
- `channels.py`: the channel-id helpers they share (`kept`, `positions`).

A new layer whose config holds its width registers a config rule
(`configs.register(MyLayer, configs.width("units"))`); a new node kind adds a method to
`constants.Constants` and an entry to `constants.RULES`.
"""

from __future__ import annotations

from tfprune.shrink_rules import channels, configs, constants, ops

__all__ = ["channels", "configs", "constants", "ops"]
