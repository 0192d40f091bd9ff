"""tfprune: pruning for Keras 3 that ends in smaller, faster TFLite models.

Wrap a model, train it with a callback, and get back a plain Keras model:

```python
import tfprune

pruned = tfprune.wrap(model, sparsity=tfprune.schedules.PolynomialDecay(0.0, 0.9, 0, 2000))
pruned.compile(...)
pruned.fit(x, y, callbacks=[tfprune.callbacks.UpdateMasks()])
final = tfprune.strip(pruned)
tfprune.summary(final)
```
"""

from tfprune import (
    _native_log,  # noqa: F401  (first: quiets TensorFlow's C++ logs for the CLI)
    activation_scores,
    allocation,
    backends,
    budget,
    callbacks,
    clustering,
    controller,
    criteria,
    deep_compression,
    depth,
    distill,
    export,
    gates,
    granularity,
    graph,
    heads,
    hub_blocks,
    hub_hidden,
    huffman,
    latency_table,
    layers,
    lottery,
    regularizers,
    schedules,
    sharing,
)
from tfprune.budget import Budget, fit_budget
from tfprune.budget_sharing import WeightSharing
from tfprune.channel_pruning import prune_channels
from tfprune.clustering import Clustered
from tfprune.controller import PruningController
from tfprune.deep_compression import SharingReport, sharing_report
from tfprune.depth import prune_blocks
from tfprune.distill import Distiller
from tfprune.heads import prune_heads
from tfprune.oneshot import oneshot
from tfprune.saving import load_model
from tfprune.sharing import cluster
from tfprune.shrink import shrink
from tfprune.summary import summary
from tfprune.surgery import strip, wrap
from tfprune.wrapper import Prunable

__version__ = "0.1.0"

__all__ = [
    "Budget",
    "Clustered",
    "Distiller",
    "Prunable",
    "PruningController",
    "SharingReport",
    "WeightSharing",
    "activation_scores",
    "allocation",
    "backends",
    "budget",
    "callbacks",
    "cluster",
    "clustering",
    "controller",
    "criteria",
    "deep_compression",
    "depth",
    "distill",
    "export",
    "fit_budget",
    "gates",
    "granularity",
    "graph",
    "heads",
    "hub_blocks",
    "hub_hidden",
    "huffman",
    "latency_table",
    "layers",
    "load_model",
    "lottery",
    "oneshot",
    "prune_blocks",
    "prune_channels",
    "prune_heads",
    "regularizers",
    "schedules",
    "sharing",
    "sharing_report",
    "shrink",
    "strip",
    "summary",
    "wrap",
]
