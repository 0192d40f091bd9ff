"""Rule families of `tfprune.graph`; importing this package registers all of them.

- `layers`: Keras layers (producers, normalizations, merges, reshapes, pass-through).
- `ops`: raw `keras.ops` operations in functional models (arithmetic, activations,
  reductions, slicing, reshape/transpose, concatenate/split/stack, matmul/einsum).
- `hub`: keras-hub layers, keyed by registered name so keras-hub is not imported.
- `hidden`: the hidden width of transformers (embeddings, attention, LayerNormalization
  and RMSNormalization, which pass channels only with `through_norms=True`).

A new family is a module here that calls `tfprune.graph.table.register` for each class or
registered name it knows, imported below.
"""

from tfprune.graph.rules import hidden, hub, layers, ops

__all__ = ["hidden", "hub", "layers", "ops"]
