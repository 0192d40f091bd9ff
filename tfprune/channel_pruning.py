"""One-shot channel pruning: score channel groups, pick the channels to drop, zero them.

`prune_channels` returns a plain Keras model (a copy) in which every pruned channel is
zeroed in all the weights that produce or mirror it: kernels, biases, depthwise kernels and
BatchNormalization gamma, beta and moving mean. The pruned channels therefore carry
exactly zero, the copy predicts like the shrunk model, it can be fine-tuned as it is, and
`tfprune.shrink` removes the channels:

```python
pruned = tfprune.prune_channels(model, ratio=0.5, criterion="l1", scope="global")
small = tfprune.shrink(pruned)
```
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping

import keras
import numpy as np

from tfprune import allocation, backends, surgery
from tfprune import criteria as criteria_lib
from tfprune import gates as gates_lib
from tfprune import graph as graph_lib
from tfprune import layers as registry
from tfprune._validate import fraction
from tfprune.graph.rules import hidden
from tfprune.wrapper import prunable_layers

__all__ = ["prune_channels", "select_channels", "zero_channels", "zeroed_slices"]

SCOPES = ("layer", "global")


def check_ratio(name: str, value: float) -> None:
    fraction(name, value, what="a float in [0, 1) (the fraction of channels removed)")


def _rounded_keep(n_keep: int, channels: int, round_to: int | None, floor: int) -> int:
    n_keep = max(n_keep, min(floor, channels))
    if round_to:
        n_keep = min(channels, math.ceil(n_keep / round_to) * round_to)
    return n_keep


def select_channels(
    scores: list[np.ndarray],
    ratios: list[float | None],
    scope: str = "layer",
    round_to: int | None = None,
    min_channels: int = 1,
    ratio: float = 0.0,
) -> list[np.ndarray]:
    """Keep decisions per group from channel scores.

    A group whose `ratios` entry is a number drops `round(ratios[i] * channels)` of its own
    lowest-scored channels, under either scope. The groups whose entry is `None` take the
    default `ratio`: under `"layer"` scope each drops `round(ratio * channels)` of its own
    channels; under `"global"` scope their scores are divided by their group's mean (so
    groups of different sizes and scales compare) and the lowest `round(ratio * total)`
    channels of all of them (`total` = their channel count) are dropped together. Each group
    keeps at least `min_channels`, and with `round_to` its kept count is rounded up to a
    multiple of it.

    Args:
        scores: One 1-D score array per group.
        ratios: Per group, its own fraction of channels to drop, or `None` for `ratio`.
        scope: `"layer"` or `"global"`.
        round_to: Keep a multiple of this many channels (e.g. 8 for hardware), or `None`.
        min_channels: Fewest channels a group keeps.
        ratio: The fraction for the groups without their own entry.

    Returns:
        One boolean keep array per group.

    Raises:
        ValueError: For an unknown `scope`, or `ratios` of another length than `scores`.
    """
    if scope not in SCOPES:
        raise ValueError(f"Expected `scope` to be one of {SCOPES}. Received: scope={scope!r}")
    if len(ratios) != len(scores):
        raise ValueError(
            "Expected one entry of `ratios` per group of `scores`. "
            f"Received: {len(ratios)} ratios for {len(scores)} groups"
        )
    ones = [np.ones(s.size, bool) for s in scores]

    def own_count(s: np.ndarray, r: float) -> int:
        return _rounded_keep(s.size - allocation.count(r, s.size), s.size, round_to, min_channels)

    n_keep = [own_count(s, ratio if r is None else r) for s, r in zip(scores, ratios)]
    ranked = [i for i, r in enumerate(ratios) if r is None]
    if scope == "global" and ranked:
        group_scores = [scores[i] for i in ranked]
        normed = [s / (s.mean() if s.size and s.mean() > 0 else 1.0) for s in group_scores]
        total = sum(s.size for s in group_scores)
        caps = [max(s.size - min(min_channels, s.size), 0) for s in group_scores]
        n_prune = min(allocation.count(ratio, total), sum(caps))
        keeps = allocation.select_global(normed, [ones[i] for i in ranked], n_prune, caps)
        for i, k in zip(ranked, keeps):
            n_keep[i] = _rounded_keep(int(k.sum()), k.size, round_to, min_channels)
    return [allocation.select_keep(s, o, k) for s, o, k in zip(scores, ones, n_keep)]


def zeroed_slices(group: graph_lib.ChannelGroup) -> list[tuple[graph_lib.Slice, keras.Variable]]:
    """The slices of a group that `zero_channels` zeroes, each with its variable.

    Every slice but the consumers' input slices (they multiply zeros) and
    BatchNormalization moving variances (a zero variance would divide by zero).

    Args:
        group: A group from `tfprune.graph.channel_groups`.

    Returns:
        `(slice, variable)` pairs, in the group's member order.
    """
    return [
        (m, registry.resolve(m.layer, m.weight))
        for m in group.members
        if m.role != "input" and m.weight != "moving_variance"
    ]


def zero_channels(group: graph_lib.ChannelGroup, keep: np.ndarray) -> None:
    """Zeroes the dropped channels of a group in every weight that produces or mirrors them.

    Kernels, biases and depthwise kernels (`"output"` slices) and BatchNormalization gamma,
    beta and moving mean (`"norm"` slices) are zeroed, so the channels carry exactly zero;
    consumers' input slices are left as they are (they multiply zeros).

    Args:
        group: A group from `tfprune.graph.channel_groups` of the model to modify.
        keep: Boolean array, one entry per channel of the group.
    """
    for m, var in zeroed_slices(group):
        value = keras.ops.convert_to_numpy(var).copy()
        drop = np.flatnonzero((m.index >= 0) & ~keep[np.maximum(m.index, 0)])
        index = [slice(None)] * value.ndim
        index[m.axis] = drop
        value[tuple(index)] = 0
        var.assign(value)


def _matches(selector, group: graph_lib.ChannelGroup) -> bool:
    if selector is None:
        return False
    if callable(selector):
        return any(selector(m.layer) for m in group.members if m.role == "output")
    return bool(set(group.producers) & set(selector))


def taylor_terms(model: keras.Model, data, loss) -> dict[str, list[np.ndarray]]:
    """Per batch, `w * dL/dw` of every trainable weight (on any backend)."""
    if loss is None:
        loss = getattr(model, "loss", None)
    if loss is None:
        raise ValueError(
            "Criterion 'taylor' needs a loss. Compile the model first or pass "
            "`loss=keras.losses.SparseCategoricalCrossentropy(...)`. Received: loss=None"
        )
    loss_fn = keras.losses.get(loss)
    terms: dict[str, list[np.ndarray]] = {}
    for batch in data:
        if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
            raise ValueError(
                "Criterion 'taylor' needs batches `(x, y)`. Received a batch of type "
                f"{type(batch).__name__}; pass data=[(x, y), ...] or a tf.data.Dataset of "
                "(x, y) pairs."
            )
        grads = backends.gradients(model, loss_fn, batch[0], batch[1])
        for w in model.trainable_variables:
            if w.path in grads:
                terms.setdefault(w.path, []).append(keras.ops.convert_to_numpy(w) * grads[w.path])
    if not terms:
        raise ValueError("Criterion 'taylor' received empty `data`. Pass at least one batch.")
    return terms


def prune_channels(
    model: keras.Model,
    ratio: float = 0.5,
    criterion: str | Callable = "l1",
    scope: str = "layer",
    data: Iterable | None = None,
    round_to: int | None = None,
    min_channels: int = 1,
    ignore: Iterable[str] | Callable | None = None,
    ratios: Mapping[str, float] | None = None,
    loss=None,
    seed: int = 0,
    through_norms: bool = False,
) -> keras.Model:
    """Removes the least important channel groups of a model in one shot (zeroed copy).

    Every prunable group of `tfprune.graph.channel_groups(model)` is scored by `criterion`
    and the lowest-scored channels are zeroed in all the weights of the group; the
    returned copy is a plain Keras model that `tfprune.shrink` makes smaller.

    Args:
        model: A built Sequential or functional model (wrapped models are stripped first).
        ratio: Fraction of channels to remove, in [0, 1): per group under `"layer"` scope,
            of all prunable channels without a `ratios` entry under `"global"` scope.
        criterion: `"l1"`, `"l2"`, `"fpgm"`, `"taylor"`, `"bn_scale"`, `"random"`, or a
            callable `(group, context) -> scores` (see `tfprune.criteria.ChannelContext`).
        scope: `"layer"` or `"global"`.
        data: Batches `(x, y)` for `"taylor"`.
        round_to: Keep a multiple of this many channels per group (e.g. 8), or `None`.
        min_channels: Fewest channels any group keeps.
        ignore: Names of producer layers whose groups are left whole, or a predicate.
        ratios: Per-group overrides of `ratio`, keyed by the name of a layer that produces
            the group's channels: that group drops this fraction of its own channels, under
            either scope; under `"global"` scope the other groups are ranked together and
            drop `ratio` of their channels.
        loss: Loss for `"taylor"` (default: the compiled loss).
        seed: Seed for `"random"`.
        through_norms: Opt in to pruning the hidden (embedding) width of transformers:
            LayerNormalization and RMSNormalization pass channels through (their
            gamma/beta are zeroed with the channels) instead of freezing them, so the
            residual stream becomes one prunable group. Not exact: the norms compute their
            statistics over all channels, so removing some changes the others (a
            `UserWarning` says so); fine-tune or distil the result, and pass the same flag
            to `tfprune.shrink`.

    Returns:
        A new plain model with the pruned channels zeroed.

    Raises:
        ValueError: For a ratio outside [0, 1), an unknown scope or criterion, a name in
            `ignore` that is not a layer, a name in `ratios` that is not the producer of a
            prunable group, or a criterion returning wrong shapes.
        TypeError: If `model` is not a Sequential or functional Keras model, or
            `through_norms` is not a bool.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(
            "tfprune.prune_channels expects a Sequential or functional Keras model. "
            f"Received: model={model!r} of type {type(model).__name__}"
        )
    surgery.check_rebuildable(model, "prune_channels")
    check_ratio("ratio", ratio)
    for name, value in (ratios or {}).items():
        check_ratio(f"ratios['{name}']", value)
    if scope not in SCOPES:
        raise ValueError(f"Expected `scope` to be one of {SCOPES}. Received: scope={scope!r}")
    if round_to is not None and (not isinstance(round_to, int) or round_to < 1):
        raise ValueError(
            f"Expected `round_to` to be a positive integer or None. Received: round_to={round_to!r}"
        )
    if not isinstance(min_channels, int) or min_channels < 1:
        raise ValueError(
            "Expected `min_channels` to be a positive integer. "
            f"Received: min_channels={min_channels!r}"
        )
    fn = criteria_lib.get_channel(criterion)
    context = criteria_lib.ChannelContext(seed=seed, scales=_learned_scales(model))
    if prunable_layers(model):
        model = surgery.strip(model)
    copy = surgery.copy_model(model)
    known = {layer.name for layer in registry.iter_layers(copy)}
    if ignore is not None and not callable(ignore):
        missing = sorted(set(ignore) - known)
        if missing:
            raise ValueError(
                f"`ignore` names layers that are not in the model: {missing}. Use the "
                f"names of producer layers, e.g. {sorted(known)[:5]}."
            )
    all_groups = graph_lib.channel_groups(copy, through_norms=through_norms)
    groups = [g for g in all_groups if g.prunable and not _matches(ignore, g)]
    group_ratios = _group_ratios(all_groups, groups, ratios or {})
    if criterion == "taylor":
        if data is None:
            raise ValueError("Criterion 'taylor' needs `data`: batches (x, y). Received: data=None")
        context.gradients = taylor_terms(copy, data, loss)
    scores = []
    for group in groups:
        s = np.asarray(fn(group, context), np.float64)
        if s.shape != (group.channels,):
            raise ValueError(
                f"Channel criterion {criterion!r} returned scores of shape {s.shape} for the "
                f"group of {group.producers}; it must return one score per channel "
                f"({group.channels},)."
            )
        scores.append(s)
    keeps = select_channels(scores, group_ratios, scope, round_to, min_channels, ratio=ratio)
    for group, keep in zip(groups, keeps):
        zero_channels(group, keep)
    hidden.warn_inexact(
        "tfprune.prune_channels",
        [
            hidden.norm_name(m.layer, m.weight)
            for group, keep in zip(groups, keeps)
            if not keep.all()
            for m in group.members
            if hidden.norm_name(m.layer, m.weight)
        ],
    )
    return copy


def _group_ratios(
    all_groups: list[graph_lib.ChannelGroup],
    groups: list[graph_lib.ChannelGroup],
    ratios: Mapping[str, float],
) -> list[float | None]:
    """Each pruned group's override from `ratios` (keyed by producer name), or `None`.

    Raises:
        ValueError: If a name is not the producer of any group, names a group that cannot
            be pruned, or two names of one group give different values.
    """
    owner = {p: g for g in all_groups for p in g.producers}
    producers = sorted(p for g in all_groups if g.prunable for p in g.producers)
    for name in ratios:
        group = owner.get(name)
        if group is None:
            raise ValueError(
                f"`ratios` names {name!r}, which produces no channel group of the model. Use "
                f"the name of a producer layer: {producers}. Received: ratios={dict(ratios)!r}"
            )
        if not group.prunable:
            raise ValueError(
                f"`ratios` names {name!r}, whose channels cannot be pruned ({group.reason}). "
                f"Remove it from `ratios`. Received: ratios={dict(ratios)!r}"
            )
    out: list[float | None] = []
    for group in groups:
        values = {p: ratios[p] for p in group.producers if p in ratios}
        if len(set(values.values())) > 1:
            raise ValueError(
                f"`ratios` gives different values to layers of one channel group (they share "
                f"their channels and are pruned together): {values}. Give them one value."
            )
        out.append(next(iter(values.values())) if values else None)
    return out


def _learned_scales(model: keras.Model) -> dict[str, np.ndarray]:
    """The channel `tfprune.gates.Scale` values of a model's wrapped layers, by layer name."""
    return {
        layer.layer.name: target.gate.inference_values().reshape(-1)
        for layer in prunable_layers(model)
        for target in layer.targets
        if isinstance(target.gate, gates_lib.Scale) and target.name == "channel"
    }


# --- channel-granularity wrappers (driven by tfprune.PruningController) -----------------


def _group_wrappers(model: keras.Model, layers: list) -> list[tuple]:
    """Groups whose producing kernels all sit in channel-granularity `Prunable` layers.

    Returns `(group, [(wrapper, index), ...])` pairs, where `index` maps the wrapper's
    channel-mask entries along its first mask axis to channels of the group.
    """
    owner = {id(w.layer): w for w in layers}
    out = []
    for group in graph_lib.channel_groups(model):
        if not group.prunable:
            continue
        entries, ok = [], True
        for m in group.members:
            if m.role != "output" or len(registry.resolve(m.layer, m.weight).shape) < 2:
                continue
            wrapper = owner.get(id(m.layer))
            if wrapper is None:
                ok = False
                break
            entries.append((wrapper, m.index))
        if ok and entries:
            out.append((group, entries))
    return out


def _group_scores(group: graph_lib.ChannelGroup, entries: list) -> np.ndarray:
    """Each wrapper's weight criterion on its masked producing kernel, summed per channel."""
    scores = np.zeros(group.channels)
    for wrapper, _ in entries:
        target = wrapper.target("channel")
        for m in group.members:
            if m.layer is not wrapper.layer or m.role != "output":
                continue
            w = keras.ops.convert_to_numpy(registry.resolve(m.layer, m.weight))
            if w.ndim < 2:
                continue
            keep = keras.ops.convert_to_numpy(target.mask)
            view = [1] * w.ndim
            spec_axes = [a % w.ndim for a in target.spec.out_axes]
            for a in spec_axes:
                view[a] = w.shape[a]
            masked = np.where(np.broadcast_to(keep.reshape(view), w.shape), w, 0)
            s = np.asarray(wrapper.criterion(masked), np.float64)
            rows = np.moveaxis(s, m.axis, 0).reshape(w.shape[m.axis], -1).sum(axis=1)
            sel = m.index >= 0
            np.add.at(scores, m.index[sel], rows[sel])
    return scores


def _set_group(group: graph_lib.ChannelGroup, entries: list, keep: np.ndarray) -> None:
    for wrapper, index in entries:
        target = wrapper.target("channel")
        shape = tuple(target.mask.shape)
        k = np.where(index >= 0, keep[np.maximum(index, 0)], True)
        wrapper.set_mask("channel", np.broadcast_to(k.reshape(-1, *[1] * (len(shape) - 1)), shape))


def update_channel_groups(model: keras.Model, due: Mapping, scope_of: Callable) -> list:
    """Prunes whole channel groups of channel-granularity wrappers (one keep decision each).

    Every wrapper of a group gets the same channel decision. Layer-scope groups drop
    `round(s * channels)` of their channels, where `s` is the sparsity due for their first
    producer; global-scope groups are ranked together. Scores are each wrapper's weight
    criterion (magnitude: the L1 norm of the producing filters) summed over the group.

    Args:
        model: The Sequential or functional model holding the wrappers.
        due: `{wrapper: sparsity}` for the channel-granularity wrappers due now.
        scope_of: Function `wrapper -> "layer" | "global"`.

    Returns:
        The wrappers handled here (those in a prunable group); the caller prunes the rest
        per layer.
    """
    groups = _group_wrappers(model, list(due))
    handled, local, shared = [], [], []
    for group, entries in groups:
        wrappers = [w for w, _ in entries]
        if not all(w in due for w in wrappers):
            continue
        handled += wrappers
        (shared if scope_of(wrappers[0]) == "global" else local).append((group, entries))
    for group, entries in local:
        s = _group_scores(group, entries)
        ratio = due[entries[0][0]]
        keep = allocation.select_keep(
            s, np.ones(s.size, bool), s.size - allocation.count(ratio, s.size)
        )
        if not keep.any():
            keep[np.argmax(s)] = True
        _set_group(group, entries, keep)
    if shared:
        scores = [_group_scores(g, e) for g, e in shared]
        ratio = due[shared[0][1][0][0]]
        keeps = select_channels(scores, [None] * len(scores), "global", ratio=ratio)
        for (group, entries), keep in zip(shared, keeps):
            _set_group(group, entries, keep)
    return handled
