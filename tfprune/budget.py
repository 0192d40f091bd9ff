"""Prune to a device budget: int8 flash, TFLite Micro arena, MACs and latency limits.

`fit_budget` removes channels a few at a time, where the importance lost per resource saved
is smallest, re-measures the model after every step (int8 conversion: the exact file size;
the arena from TFLite Micro when `tflite-micro` is installed; MACs; LiteRT latency), and
stops when every limit is met, as NetAdapt (Yang et al., 2018) does with measured costs:

```python
small, report = tfprune.fit_budget(model, tfprune.Budget(flash=96_000, arena=32_000),
                                   data=x_train[:200])
print(report.format())
```
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import tempfile
import warnings
from collections.abc import Callable

import keras
import numpy as np

from tfprune import criteria as criteria_lib
from tfprune import export
from tfprune.budget_give_back import Refinement, give_back, snapshot_weights, swap
from tfprune.budget_importance import COMPARABLE, importance
from tfprune.budget_search import Search, WidthModel
from tfprune.budget_sharing import WeightSharing
from tfprune.budget_uniform import prefer_uniform
from tfprune.channel_pruning import prune_channels, zero_channels
from tfprune.latency_table import LatencyTable
from tfprune.shrink import shrink
from tfprune.summary import summary

__all__ = ["Budget", "BudgetReport", "Resources", "fit_budget", "measure"]

_RESOURCES = ("flash", "arena", "macs", "latency")
_UNITS = {"flash": "B", "arena": "B", "macs": "MACs"}


@dataclasses.dataclass(frozen=True)
class Budget:
    """Limits a model must meet on the device; `None` means no limit.

    Attributes:
        flash: Bytes of the int8 .tflite file (what goes into flash).
        arena: Bytes of TFLite Micro tensor arena (measured in TFLite Micro when
            `tflite-micro` is installed, else `tfprune.export.arena_estimate`).
        macs: Multiply-accumulates per example.
        latency: Seconds per `invoke()` of the int8 file in LiteRT on this machine
            (1 thread, default configuration).
    """

    flash: int | None = None
    arena: int | None = None
    macs: int | None = None
    latency: float | None = None

    def __post_init__(self):
        for name in _RESOURCES:
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0
            ):
                raise ValueError(
                    f"Expected `{name}` to be a positive number or None. Received: {name}={value!r}"
                )
        if all(getattr(self, name) is None for name in _RESOURCES):
            raise ValueError(
                "A Budget needs at least one limit: flash, arena, macs or latency. "
                "Received: Budget()"
            )

    def limits(self) -> dict[str, float]:
        """The limits that are set, by resource name."""
        return {n: getattr(self, n) for n in _RESOURCES if getattr(self, n) is not None}


@dataclasses.dataclass(frozen=True)
class Resources:
    """What one model costs on the device.

    Attributes:
        flash: Bytes of its int8 .tflite file.
        arena: Tensor-arena bytes (see `arena_source`).
        macs: Multiply-accumulates per example.
        latency: LiteRT `invoke()` seconds, or `None` when not measured.
        arena_source: `"measured by TFLite Micro"` or `"estimate"`.
        latency_source: `"file"` (the whole int8 file timed), `"lookup table"` (the sum of
            its layers' times from a `LatencyTable`) or `None`.
    """

    flash: int
    arena: int
    macs: int
    latency: float | None
    arena_source: str
    latency_source: str | None = None


@dataclasses.dataclass(frozen=True)
class BudgetReport:
    """What `fit_budget` did.

    Attributes:
        budget: The limits.
        before: Resources of the model given.
        after: Resources of the model returned.
        widths: `{producer layers: (channels before, channels after)}` per channel group.
        iterations: Pruning steps taken.
        given_back: Channels added back once every limit was met (`Search.give_back`).
        swapped: Channels moved between groups after that (`Search.swap`).
        uniform: The ratio of the uniform model returned instead of the search's widths
            because it was better (`tfprune.budget_uniform`), else `None`.
    """

    budget: Budget
    before: Resources
    after: Resources
    widths: dict[str, tuple[int, int]]
    iterations: int
    given_back: int = 0
    swapped: int = 0
    uniform: float | None = None

    @property
    def met(self) -> dict[str, bool]:
        """Whether the returned model meets each limit."""
        return {n: getattr(self.after, n) <= v for n, v in self.budget.limits().items()}

    def format(self) -> str:
        """A table: each resource before and after against its limit, then the widths."""
        lines = [f"{'resource':<9} {'before':>12} {'after':>12} {'limit':>12}  met"]
        for name in _RESOURCES:
            limit = getattr(self.budget, name)
            b, a = getattr(self.before, name), getattr(self.after, name)
            if a is None:
                continue
            cells = [_fmt(name, v) if v is not None else "-" for v in (b, a, limit)]
            met = "" if limit is None else ("yes" if a <= limit else "NO")
            lines.append(f"{name:<9} {cells[0]:>12} {cells[1]:>12} {cells[2]:>12}  {met}")
        lines.append(
            f"arena: {self.after.arena_source}; {self.iterations} pruning steps, "
            f"{self.given_back} channels given back, {self.swapped} moved"
        )
        if self.uniform is not None:
            lines.append(
                f"uniform pruning (ratio {self.uniform:.3f}) was better than the search's "
                "widths and is returned"
            )
        if self.after.latency_source is not None:
            lines.append(f"latency: LiteRT on this machine, {self.after.latency_source}")
        lines.append("channels per group (before -> after):")
        lines += [f"  {k}: {b} -> {a}" for k, (b, a) in self.widths.items()]
        return "\n".join(lines)


def _fmt(name: str, value: float, unit: bool = False) -> str:
    if name == "latency":
        return f"{value * 1e3:.3f} ms"
    return f"{int(value):,}" + (f" {_UNITS[name]}" if unit else "")


def _calibration(data) -> np.ndarray:
    x = data[0] if isinstance(data, (tuple, list)) and len(data) == 2 else data
    x = np.asarray(x, np.float32)
    if x.ndim < 2 or len(x) == 0:
        raise ValueError(
            "Expected `data` to be calibration examples x (or (x, y)) with a batch axis, e.g. "
            f"x_train[:200]. Received: data of shape {x.shape}"
        )
    return x[:200]


def measure(
    model: keras.Model,
    data,
    latency: bool | LatencyTable = False,
    arena: str = "auto",
    sharing: WeightSharing | None = None,
    litert_check: bool = True,
) -> Resources:
    """Converts a (pruned) model to int8 and measures what it costs on the device.

    Args:
        model: A Keras model; zeroed channels are removed first (`tfprune.shrink`).
        data: Calibration examples `x` or `(x, y)` (the first 200 are used).
        latency: `True`: time the whole file in LiteRT (median of 50 invokes, 1 thread); a
            `LatencyTable`: predict it from per-layer times measured once and cached
            (NetAdapt); `False`: no latency.
        arena: `"auto"` (TFLite Micro when installed, else the estimate), `"tflm"` or
            `"estimate"`.
        sharing: Cluster a copy of the model and count the LUT-compressed file's flash and
            arena (`tfprune.WeightSharing`; needs `tflite-micro`).
        litert_check: Test-run the file in LiteRT's default configuration first and raise
            `RuntimeError` if it cannot run (`tfprune.export.tflite`); `False` measures a
            file LiteRT's XNNPACK refuses too (its latency then cannot be timed).

    Returns:
        `Resources` of the int8 file.

    Raises:
        ValueError: For an unknown `arena` or unusable `data`.
        ImportError: For `arena="tflm"` without `tflite-micro`.
    """
    if arena not in ("auto", "tflm", "estimate"):
        raise ValueError(
            f"Expected `arena` to be 'auto', 'tflm' or 'estimate'. Received: arena={arena!r}"
        )
    x = _calibration(data)
    model = model if sharing is None else sharing.shared(model)
    with tempfile.TemporaryDirectory(prefix="tfprune-budget-") as tmp:
        path = os.path.join(tmp, "m.tflite")
        result = export.tflite(
            model,
            path,
            quantize="int8",
            representative_data=x,
            shrink=True,
            litert_check=litert_check,
        )
        with open(path, "rb") as f:
            file = f.read()
    use_tflm = arena == "tflm" or (arena == "auto" and export.tflm.available())
    flash = result.size
    if sharing is not None:
        flash, arena_bytes, source = sharing.measure(file, use_tflm)
    elif use_tflm:
        arena_bytes, source = export.tflm.run(file).arena, "measured by TFLite Micro"
    else:
        arena_bytes, source = export.arena_estimate(file).total, "estimate"
    small = shrink(model)
    macs = summary(small, print_fn=None).macs
    seconds, how = None, None
    if isinstance(latency, LatencyTable):
        seconds, how = latency.predict(small), "lookup table"
    elif latency:
        seconds, how = export.latency(file, runs=50, warmup=5).median, "file"
    return Resources(flash, arena_bytes, macs, seconds, source, how)


def _excess(res: Resources, budget: Budget) -> dict[str, float]:
    """Fraction by which each limit is exceeded (only those exceeded)."""
    out = {}
    for name, limit in budget.limits().items():
        value = getattr(res, name)
        if value > limit:
            out[name] = (value - limit) / value
    return out


def _unmeetable(lowest: Resources, budget: Budget) -> ValueError:
    parts = [
        f"{n}: {_fmt(n, getattr(lowest, n), True)} at one channel per group, limit "
        f"{_fmt(n, getattr(budget, n), True)} "
        f"({_fmt(n, getattr(lowest, n) - getattr(budget, n), True)} over)"
        for n in _excess(lowest, budget)
    ]
    return ValueError(
        "The budget cannot be met by removing channels: " + "; ".join(parts) + ". Raise "
        f"the limit or use a smaller architecture. Received: budget={budget}"
    )


def _check_runs(small: keras.Model, data) -> None:
    """Warns when the int8 file of the returned model cannot run in LiteRT's default setup."""
    with tempfile.TemporaryDirectory(prefix="tfprune-budget-") as tmp:
        try:
            export.tflite(
                small,
                os.path.join(tmp, "m.tflite"),
                quantize="int8",
                representative_data=_calibration(data),
            )
        except RuntimeError as e:
            warnings.warn(
                f"The pruned model meets the budget, but its int8 file does not run in LiteRT's "
                f"default configuration: {e}",
                RuntimeWarning,
                stacklevel=3,
            )


def fit_budget(
    model: keras.Model,
    budget: Budget,
    data,
    criterion: str | Callable = "l1",
    step: float = 0.05,
    fine_tune: Callable[[keras.Model, int], None] | None = None,
    max_iterations: int = 200,
    arena: str = "auto",
    latency_table: LatencyTable | None = None,
    min_keep: float = 0.25,
    verbose: bool = True,
    sharing: WeightSharing | None = None,
    loss=None,
    compare_uniform: bool | Callable[[keras.Model], float] = True,
) -> tuple[keras.Model, BudgetReport]:
    """Removes channels until the int8 model meets every limit of `budget`.

    Iterative and greedy with re-measurement, as NetAdapt (Yang et al., 2018): each step
    removes channels one at a time, each time the channel whose importance (`criterion`,
    divided by its group's mean at full width, so groups compare fairly) per resource saved
    is smallest, counting only the resources still over their limit. What a channel saves
    is recomputed at the current widths after every removal from a model of the int8 weight
    bytes, MACs and every op's live activation bytes (`tfprune.budget_search`), anchored to
    the values measured after the last step: the int8 file's size, the arena (TFLite Micro
    or the estimate), MACs and latency. A step ends when that model says every limit is met
    or `step` of the remaining channels are gone; then `fine_tune(model, iteration)` runs if
    given, and the model is converted and measured again (`measure`). Each group keeps
    `min_keep` of its channels while other groups can still be cut, and at least one.
    Once every limit is met (the arena confirmed as `arena` says), channels are given back
    while the models say every limit still holds, the most important per share of the
    tightest remaining slack first, with the weights they had before they were zeroed;
    the file is measured again and the last additions undone while a limit is broken.
    Then channels are moved, one at a time, from the group where one costs least
    importance to the group where a dropped one gains most while the models say every
    limit holds (checked on the file the same way), and given back again if that left room.
    Steps are measured without running the file in LiteRT (some thin int8 files fail to
    prepare in LiteRT's XNNPACK delegate); the returned model's file is test-run once.

    Args:
        model: A built Sequential or functional Keras model.
        budget: The limits (`Budget`).
        data: Calibration examples `x` or `(x, y)` for int8 conversion (first 200 used).
        criterion: Channel importance: a channel criterion (see
            `tfprune.prune_channels`), or `"loss"`: each group's measured loss increase
            per channel when its next lowest-L1 channels (a quarter of those kept, or
            `step` if smaller) are zeroed together, ordered by L1 within the group
            (`tfprune.budget_importance`). Scores are divided by their group's mean at
            full width, except those of `"taylor"` and `"loss"` (loss changes,
            comparable across groups: divided by the mean over all groups). `"taylor"`
            and `"loss"` need `data=(x, y)` and a loss, and are recomputed every step.
        step: Largest fraction of the remaining channels removed per step.
        fine_tune: Optional `fn(model, iteration)` that trains the zeroed model in place
            between steps (e.g. one short `model.fit`); zeroed channels are zeroed again
            after it.
        max_iterations: Most pruning steps.
        arena: How the arena is measured: `"auto"`, `"tflm"` or `"estimate"` (see
            `measure`).
        latency_table: For a latency limit: the per-layer `LatencyTable` (LiteRT on this
            machine, measured once per layer configuration and cached on disk, as NetAdapt
            does); default `LatencyTable()`.
        min_keep: Fraction of each group's channels kept while other groups can still be
            cut, in [0, 1). Keeps the search from making one group a bottleneck (with 0.1,
            ResNet-8's residual streams went to 2 of 16 and 4 of 32 channels at a 50 %
            budget, 5 accuracy points worse than 0.25).
        verbose: Print a progress bar over the steps.
        sharing: Weight sharing as one more flash lever (`tfprune.WeightSharing`): every
            measured model is clustered and its file LUT-compressed, so flash counts the
            compressed file and the arena the decoded tensors. The returned model is not
            clustered: apply `sharing.shared(small)` (or train with clustering) before export.
        loss: For `criterion="taylor"` or `"loss"`: the loss (default: the compiled
            model's).
        compare_uniform: Also find the least-pruned uniform model (every group cut by
            the same ratio, on a 1/64 grid, the channels `prune_channels(model, ratio)`
            keeps) that meets the limits on its file, and return it instead of the
            search's widths when it dominates them: at least as many channels in every
            group, more in one (`tfprune.budget_uniform`; `report.uniform` says so). A
            callable `fn(small) -> score` (higher is better) also judges the two when
            neither dominates: it gets each shrunk to a new model, e.g. to fine-tune it
            briefly and return its accuracy on held-out data (NetAdapt's short-term
            fine-tune); the returned model is not the one it trained.

    Returns:
        `(small, report)`: the shrunk model that meets the budget and a `BudgetReport`.

    Raises:
        ValueError: If the budget cannot be met even with one channel per group (the
            message names each resource and by how much), for a `step` outside (0, 1] or a
            `min_keep` outside [0, 1), or if the limits are still unmet after
            `max_iterations`, or for `criterion="taylor"` or `"loss"` without
            `data=(x, y)` or without a loss.
        TypeError: If `model` is not a Keras model, `budget` not a `Budget` or
            `compare_uniform` neither a bool nor callable.
    """
    if not isinstance(budget, Budget):
        raise TypeError(
            "Expected `budget` to be a tfprune.Budget, e.g. Budget(flash=96_000, "
            f"arena=32_000). Received: budget of type {type(budget).__name__}"
        )
    if not (isinstance(step, (int, float)) and 0 < step <= 1):
        raise ValueError(f"Expected `step` to be a float in (0, 1]. Received: step={step!r}")
    if not (isinstance(min_keep, (int, float)) and 0 <= min_keep < 1):
        raise ValueError(
            f"Expected `min_keep` to be a float in [0, 1). Received: min_keep={min_keep!r}"
        )
    if not (isinstance(compare_uniform, bool) or callable(compare_uniform)):
        raise TypeError(
            "Expected `compare_uniform` to be a bool or a callable `fn(small) -> score`. "
            f"Received: compare_uniform={compare_uniform!r}"
        )
    if criterion in COMPARABLE and not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise ValueError(
            f"Criterion {criterion!r} needs labelled data: pass data=(x, y). Received: data "
            f"of type {type(data).__name__}"
        )
    loss = loss if loss is not None else getattr(model, "loss", None)
    if criterion in COMPARABLE and loss is None:
        raise ValueError(
            f"Criterion {criterion!r} needs a loss. Compile the model first or pass "
            "`loss=keras.losses.SparseCategoricalCrossentropy(...)`. Received: loss=None"
        )
    if criterion != "loss":
        criteria_lib.get_channel(criterion)  # an unknown name fails before any conversion
    copy = prune_channels(model, ratio=0.0)  # a plain zeroable copy (raises TypeError)
    width_model = WidthModel(copy)
    groups = width_model.groups
    keeps = [np.ones(g.channels, bool) for g in groups]
    want_latency = (latency_table or LatencyTable()) if budget.latency is not None else False
    before = measure(copy, data, want_latency, arena, sharing=sharing, litert_check=False)
    # With arena="auto", steps are measured with the estimate (fast, never below TFLite
    # Micro) and the result is confirmed in TFLite Micro; if TFLite Micro says it does not
    # fit, the search goes on there.
    mode = "estimate" if arena == "auto" else arena
    thinnest = prune_channels(model, ratio=0.999999)
    lowest = measure(thinnest, data, want_latency, mode, sharing=sharing, litert_check=False)
    if _excess(lowest, budget) and mode != arena:
        lowest = measure(thinnest, data, want_latency, arena, sharing=sharing, litert_check=False)
    if _excess(lowest, budget):  # every group at one channel: if that does not fit, nothing will
        raise _unmeetable(lowest, budget)
    floor = [max(1, math.ceil(min_keep * g.channels)) for g in groups]
    search = Search(width_model, budget.limits(), floor)
    chunk = min(step, 0.25)
    last = importance(criterion, groups, keeps, copy, data, loss, chunk)
    reference = [criteria_lib.get_channel("l1")(g, None) for g in groups]
    if criterion in COMPARABLE:  # a loss change: one unit across groups
        means = [np.concatenate(last).mean() or 1.0] * len(groups)
    else:
        means = [s.mean() if s.mean() > 0 else 1.0 for s in last]
    last = [s / m for s, m in zip(last, means)]
    snapshot, initial = snapshot_weights(groups), copy.get_weights()
    current = (
        before
        if mode == arena
        else measure(copy, data, want_latency, mode, sharing=sharing, litert_check=False)
    )
    start = max(_excess(current, budget).values(), default=0.0)
    bar = keras.utils.Progbar(100, verbose=1 if verbose else 0, unit_name="% of the way")
    iteration = 0
    while True:
        if not _excess(current, budget):
            if current.arena_source == before.arena_source:
                break
            mode = arena
            current = measure(copy, data, want_latency, mode, sharing=sharing, litert_check=False)
            continue
        if iteration >= max_iterations:
            raise ValueError(
                f"The budget is still not met after max_iterations={max_iterations} steps "
                f"({_excess(current, budget)}). Pass a larger `max_iterations` or `step`."
            )
        search.anchor(dataclasses.asdict(current))
        scores = [
            s / m
            for s, m in zip(
                importance(criterion, groups, keeps, copy, data, loss, chunk, reference), means
            )
        ]
        for score, keep, now in zip(last, keeps, scores):
            # Other criteria score a dropped (zero) channel 0: it keeps its last score.
            update = slice(None) if criterion == "loss" else keep
            score[update] = now[update]
        quota = max(1, int(step * sum(int(k.sum()) for k in keeps)))
        if not search.select(scores, keeps, quota):
            raise _unmeetable(current, budget)
        for group, keep in zip(groups, keeps):
            zero_channels(group, keep)
        iteration += 1
        if fine_tune is not None:
            fine_tune(copy, iteration)
            for group, keep in zip(groups, keeps):
                zero_channels(group, keep)
        current = measure(copy, data, want_latency, mode, sharing=sharing, litert_check=False)
        left = max(_excess(current, budget).values(), default=0.0)
        bar.update(int(100 * (1 - left / start)) if start else 100)
    on_file = (
        lambda: measure(copy, data, want_latency, arena, sharing=sharing, litert_check=False),
        lambda res: bool(_excess(res, budget)),
    )
    refine = Refinement(search, last, keeps, groups, snapshot, *on_file)
    current, given = give_back(refine, current)
    current, swapped = swap(refine, current)
    if swapped:  # a move may leave room for one more channel
        current, more = give_back(refine, current)
        given += more
    ratio = None
    if compare_uniform:
        full = Search(width_model, budget.limits(), [1] * len(groups))
        full.anchor(dataclasses.asdict(before))
        judge = compare_uniform if callable(compare_uniform) else None
        point = prefer_uniform(copy, groups, keeps, initial, reference, full, *on_file, judge)
        if point is not None:
            keeps, current, ratio = point.keeps, point.resources, point.ratio
    if verbose:
        sys.stdout.write("\n")
    small = shrink(copy)
    _check_runs(small, data)
    report = BudgetReport(
        budget=budget,
        before=before,
        after=current,
        widths={"+".join(g.producers): (g.channels, int(k.sum())) for g, k in zip(groups, keeps)},
        iterations=iteration,
        given_back=given,
        swapped=swapped,
        uniform=ratio,
    )
    return small, report
