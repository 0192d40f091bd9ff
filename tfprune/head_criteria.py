"""Importance of attention heads: weight norms, Taylor, activations on calibration data.

`tfprune.heads.head_scores` is the public entry point; this module holds one function per
criterion, each giving one score per query head of an `AttentionHeads` (higher is more
important). Criteria (Michel et al. 2019; Voita et al. 2019; Muralidharan et al. 2024,
Minitron): `"l1"` / `"l2"` of the head's weights, `"taylor"` (first order, `sum_batches
(sum w * dL/dw)^2` over the head's weights), `"activation"` (mean L2 norm of the head's
contribution to the layer output on calibration data), `"random"`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import keras
import numpy as np

from tfprune.call_hooks import recording
from tfprune.channel_pruning import taylor_terms

if TYPE_CHECKING:
    from tfprune.heads import AttentionHeads

__all__ = ["CRITERIA", "scores", "variable_key"]

CRITERIA = ("l1", "l2", "taylor", "activation", "random")


def variable_key(var) -> str:
    """`"<projection>/<weight>"` of an attention layer's variable, e.g. `"query/kernel"`."""
    return "/".join(var.path.split("/")[-2:])


def _norm_scores(heads: AttentionHeads, power: int) -> np.ndarray:
    """Sum of |w|^p over each query head's weights (its group's shared ones split evenly)."""
    total = np.zeros(heads.query_heads)
    for var, axis, var_kind in heads.slices:
        w = np.abs(np.moveaxis(keras.ops.convert_to_numpy(var).astype(np.float64), axis, 0))
        per = (w**power).reshape(w.shape[0], -1).sum(axis=1)
        total += per[heads.group_of()] / heads.ratio if var_kind == "kv" else per
    return np.sqrt(total) if power == 2 else total


def _taylor_scores(heads: AttentionHeads, terms: dict) -> np.ndarray:
    """`sum_batches (sum over the head's weights of w * dL/dw)^2`, shared slices split."""
    batches = len(next(iter(terms.values())))
    total = np.zeros(heads.query_heads)
    for b in range(batches):
        per_batch = np.zeros(heads.query_heads)
        for var, axis, var_kind in heads.slices:
            if var.path not in terms:
                continue
            t = np.moveaxis(terms[var.path][b].astype(np.float64), axis, 0)
            per = t.reshape(t.shape[0], -1).sum(axis=1)
            per_batch += per[heads.group_of()] / heads.ratio if var_kind == "kv" else per
        total += per_batch**2
    return total


def _call_kwargs(model: keras.Model, layer) -> dict:
    """The non-tensor keyword arguments of the layer's (single) call in a functional model."""
    for config in model.get_config().get("layers", []):
        if config["name"] == layer.name and config["inbound_nodes"]:
            kwargs = dict(config["inbound_nodes"][0].get("kwargs", {}))
            for key, value in kwargs.items():
                if isinstance(value, dict):
                    raise ValueError(
                        f"Criterion 'activation' cannot replay the call of attention layer "
                        f"'{layer.name}': its argument `{key}` is a tensor. Use criterion "
                        "'l2' or 'taylor' for this model."
                    )
            return kwargs
    return {}


def _replayed_activations(model: keras.Model, heads: AttentionHeads, data) -> np.ndarray:
    """Mean over batches and positions of `||context_h @ W_o[h]||_2` (Minitron).

    The attention layer is a node of the functional model: its inputs are probed and the
    call is replayed with `return_attention_scores=True`.
    """
    layer = heads.layer
    try:
        probe = keras.Model(model.input, layer.input)
    except (AttributeError, ValueError) as error:
        raise ValueError(
            f"Criterion 'activation' needs the inputs of attention layer '{layer.name}' in "
            "a functional model it is called once in. Use criterion 'l2' or 'taylor'."
        ) from error
    kwargs = _call_kwargs(model, layer)
    causal = bool(kwargs.pop("use_causal_mask", False))
    weights = {variable_key(v): v for v in layer.weights}
    if "gate/kernel" in weights:
        raise ValueError(
            f"Criterion 'activation' does not support the gated attention layer "
            f"'{layer.name}' (use_gate=True). Use criterion 'l2' or 'taylor'."
        )
    wv = keras.ops.convert_to_numpy(weights["value/kernel"])
    bv = weights.get("value/bias")
    wo = keras.ops.convert_to_numpy(weights["attention_output/kernel"])
    total, count = np.zeros(heads.query_heads), 0
    for batch in data:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        ins = probe(x)
        ins = list(ins) if isinstance(ins, (list, tuple)) else [ins]
        query, value = ins[0], ins[1] if len(ins) > 1 else ins[0]
        key = ins[2] if len(ins) > 2 else value
        if len(query.shape) != 3:
            raise ValueError(
                f"Criterion 'activation' supports attention over one sequence axis; layer "
                f"'{layer.name}' receives inputs of shape {tuple(query.shape)}."
            )
        mask = None
        if causal:
            t_q, t_k = int(query.shape[1]), int(key.shape[1])
            mask = np.tril(np.ones((t_q, t_k), bool))[None].repeat(int(query.shape[0]), 0)
        _, scores = layer(
            query, value, key=key, attention_mask=mask, return_attention_scores=True, **kwargs
        )
        scores = keras.ops.convert_to_numpy(scores)
        v = np.einsum("btd,dhk->bthk", keras.ops.convert_to_numpy(value), wv)
        if bv is not None:
            v = v + keras.ops.convert_to_numpy(bv)
        v = np.repeat(v, heads.ratio, axis=2)
        context = np.einsum("bhqk,bkhd->bqhd", scores, v)
        contribution = np.einsum("bqhd,hdo->bqho", context, wo)
        norms = np.linalg.norm(contribution, axis=-1)
        total += norms.reshape(-1, heads.query_heads).sum(axis=0)
        count += norms.shape[0] * norms.shape[1]
    if count == 0:
        raise ValueError("Criterion 'activation' received empty `data`. Pass at least one batch.")
    return total / count


def _recorded_activations(model: keras.Model, heads: AttentionHeads, data) -> np.ndarray:
    """Mean over batches and positions of `||context_h @ W_o[h]||_2` (Minitron).

    For an attention layer inside another layer (a keras-hub block): the context of every
    head, `(..., heads, head size)`, is the input of the output projection, recorded while
    the model runs on the batches (`tfprune.call_hooks`).
    """
    wo = next(keras.ops.convert_to_numpy(v) for v, _, kind in heads.slices if kind == "o")
    wo = wo.astype(np.float64).reshape(heads.query_heads, wo.shape[1], -1)
    contexts: list[np.ndarray] = []
    total, count = np.zeros(heads.query_heads), 0
    for batch in data:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        with recording(
            [heads.output_layer], lambda _, c: contexts.append(keras.ops.convert_to_numpy(c))
        ):
            model(x, training=False)
        for context in contexts:
            context = context.astype(np.float64).reshape(-1, heads.query_heads, wo.shape[1])
            norms = np.linalg.norm(np.einsum("nhd,hdo->nho", context, wo), axis=-1)
            total += norms.sum(axis=0)
            count += norms.shape[0]
        contexts.clear()
    if count == 0:
        raise ValueError(
            f"Criterion 'activation' saw no call of attention layer '{heads.name}': `data` "
            "is empty or the layer does not run. Pass at least one batch of model inputs."
        )
    return total / count


def scores(
    model: keras.Model,
    all_heads: list[AttentionHeads],
    criterion: str,
    data: Iterable | None,
    loss,
    seed: int,
) -> dict[str, np.ndarray]:
    """`{heads.name: one score per query head}` for every layer of `all_heads`.

    Args:
        model: The model the heads belong to.
        all_heads: Its attention layers (`tfprune.heads.attention_heads`).
        criterion: One of `CRITERIA` (checked by the caller, with `data`).
        data: Calibration batches for `"taylor"` and `"activation"`.
        loss: Loss for `"taylor"`.
        seed: Seed for `"random"`.

    Returns:
        The scores, higher is more important.
    """
    terms = taylor_terms(model, data, loss) if criterion == "taylor" else None
    rng = np.random.default_rng(seed)
    out = {}
    for heads in all_heads:
        if criterion in ("l1", "l2"):
            s = _norm_scores(heads, 1 if criterion == "l1" else 2)
        elif criterion == "taylor":
            s = _taylor_scores(heads, terms)
        elif criterion == "activation" and heads.output_layer is not None:
            s = _recorded_activations(model, heads, data)
        elif criterion == "activation":
            s = _replayed_activations(model, heads, data)
        else:
            s = rng.random(heads.query_heads)
        out[heads.name] = s
    return out
