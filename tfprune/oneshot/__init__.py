"""One-shot pruning: prune a trained model from calibration data, without training.

`tfprune.oneshot(model, data, sparsity=0.5, method="sparsegpt")` wraps the model and sets
its masks layer by layer from a few hundred calibration examples (SparseGPT, Wanda or
magnitude). The modules: `views` (each kernel as a matrix product over its inputs),
`solvers` (the SparseGPT and Wanda math on those matrices), `prune` (capture and the
public function).
"""

from __future__ import annotations

from tfprune.oneshot.prune import METHODS, oneshot

__all__ = ["METHODS", "oneshot"]
