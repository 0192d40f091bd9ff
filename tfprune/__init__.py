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
    allocation,
    budget,
    callbacks,
    controller,
    criteria,
    export,
    gates,
    granularity,
    graph,
    latency_table,
    layers,
    lottery,
    regularizers,
    schedules,
)
from tfprune.budget import Budget, fit_budget
from tfprune.channel_pruning import prune_channels
from tfprune.controller import PruningController
from tfprune.shrink import shrink
from tfprune.summary import summary
from tfprune.surgery import strip, wrap
from tfprune.wrapper import Prunable

__version__ = "0.1.0"

__all__ = [
    "Budget",
    "Prunable",
    "PruningController",
    "allocation",
    "budget",
    "callbacks",
    "controller",
    "criteria",
    "export",
    "fit_budget",
    "gates",
    "granularity",
    "graph",
    "latency_table",
    "layers",
    "lottery",
    "prune_channels",
    "regularizers",
    "schedules",
    "shrink",
    "strip",
    "summary",
    "wrap",
]
