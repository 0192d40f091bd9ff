"""The search behind `tfprune.fit_budget`: which channels to remove next, and how many.

`WidthModel` gives a model's int8 weight bytes, MACs and the live activation bytes at every
op as functions of its channel groups' widths, so that the cost of removing one more
channel is known at the current widths, not only at full width. Weight sizes come from the
groups' weight slices; tensor sizes and lifetimes from the channel graph
(`tfprune.graph`): each tensor's channels belong to groups, so its size is linear in the
widths, and it lives from the op that writes it to the last op that reads it, with
BatchNormalization and activations folded into the op before them, as the TFLite converter
does.

`Search` then removes channels one at a time, each time the channel whose importance
(normalised by its group's mean at full width, so that groups compare fairly) per resource
saved is smallest, counting only resources still over their limit: flash and MACs by how
much they drop, the arena by how much the ops over the limit drop (the sum over ops of
their live bytes above the limit, so every op over the limit must shrink and groups that
are not at an op over the limit are left alone). The model is anchored to the measured
values after every step (`anchor`): an offset for flash, the arena and MACs, a scale for
latency. Groups keep at least `floor` channels while other groups can still be cut.

Removal can overshoot: the arena limit may be met only when the last op over it shrinks,
after other groups already gave up more than the other limits needed. `Search.give_back`
then adds dropped channels back while the anchored models say every limit still holds,
the most important per share of the tightest remaining slack first. Give-back only adds:
`Search.swap` then moves channels between groups (the least important kept one out, the
most important dropped one in) while every limit holds, which undoes an uneven cut where
the limits leave no room for one more channel.

The arena at an op is its live activation bytes plus what TFLite Micro keeps for the
model's lifetime: per convolution output channel, an int32 requantization multiplier and
shift (8 B); other persistent data does not depend on the widths and is in the anchor.
"""

from __future__ import annotations

import math

import keras
import numpy as np

from tfprune import layers as registry
from tfprune.export.micro import planned_peak
from tfprune.graph import walk
from tfprune.summary import summary

__all__ = ["Search", "WidthModel"]

# Layers the TFLite converter folds into the op before (or, for padding, after) them: no
# tensor of their own.
_FOLDED = (
    keras.layers.ZeroPadding2D,
    keras.layers.BatchNormalization,
    keras.layers.ReLU,
    keras.layers.Activation,
    keras.layers.Dropout,
)
# Per output channel of an int8 kernel: its int32 bias, and a float32 scale and an int64 zero
# point for each of the two (per-channel quantization).
_CHANNEL_BYTES = 4 + 2 * (4 + 8)
# Per output channel of a convolution (Conv or DepthwiseConv op): the int32 requantization
# multiplier and shift TFLite Micro keeps in the arena for as long as the model is loaded.
_ARENA_CHANNEL_BYTES = 4 + 4
# Width vectors whose flash and arena `WidthModel` remembers before it starts again.
_MEMO_SIZE = 100_000


class WidthModel:
    """int8 flash, MACs and live activation bytes of a model as functions of group widths.

    Flash and the arena are computed once per width vector and remembered: the searches
    evaluate the same widths many times (each candidate of `Search.gains`, `give_back` and
    `swap`), and the arena's planner is the costly part.

    Args:
        model: A plain zeroable model (as `tfprune.prune_channels` returns) at full width.

    Attributes:
        groups: The model's prunable channel groups, in `tfprune.graph.channel_groups`
            order; widths are given per group in this order.
        full: Their channel counts.
    """

    def __init__(self, model: keras.Model):
        graph = walk.analyse(model)
        every, group_no, _ = walk.groups_of(graph)
        prunable = {i: j for j, i in enumerate(i for i, g in enumerate(every) if g.prunable)}
        self.groups = [g for g in every if g.prunable]
        self.full = np.array([g.channels for g in self.groups], np.int64)
        self._weight_table(model)
        self._tensor_table(graph, group_no, prunable)
        self._memo: dict[tuple, object] = {}

    def _weight_table(self, model: keras.Model) -> None:
        """Per kernel in a group: full shape, group of each grouped axis, MACs at full width.

        Biases are not listed: after BatchNormalization folds, every output channel of a
        kernel has an int32 bias, and per-channel scales and zero points for both.
        """
        macs = {r.name: r.macs or 0 for r in summary(model, print_fn=None).rows}
        table: dict[tuple, tuple] = {}
        self._per_channel = np.zeros(len(self.groups))
        self._persistent = np.zeros(len(self.groups))
        for i, g in enumerate(self.groups):
            for m in g.members:
                shape = tuple(registry.resolve(m.layer, m.weight).shape)
                if m.role == "norm" or len(shape) < 2:
                    continue
                key = (m.layer.name, m.weight)
                table.setdefault(key, (shape, {}, macs.get(m.layer.name, 0)))[1][m.axis] = i
                if m.role == "output":
                    self._per_channel[i] += _CHANNEL_BYTES
                    if len(shape) >= 3:  # a convolution kernel
                        self._persistent[i] += _ARENA_CHANNEL_BYTES
        self._weights = list(table.values())
        # Every kernel's dims as indices into (widths, 1, fixed dims): flash is one gather.
        rank = max((len(shape) for shape, _, _ in self._weights), default=0)
        fixed = [1]
        self._dims = np.full((len(self._weights), rank), len(self.groups), np.int64)
        for k, (shape, axes, _) in enumerate(self._weights):
            for a, d in enumerate(shape):
                if a in axes:
                    self._dims[k, a] = axes[a]
                else:
                    self._dims[k, a] = len(self.groups) + len(fixed)
                    fixed.append(d)
        self._fixed = np.array(fixed, np.int64)

    def _tensor_table(self, g, group_no: np.ndarray, prunable: dict[int, int]) -> None:
        """Per tensor of the graph: its size as a linear function of the widths, its lifetime."""
        tensors: dict[int, int] = {}  # id of a channel-id array -> tensor number
        size, slope, first, last = [], [], [], []
        ops = 0
        for node in g.nodes:
            inputs = [tensors.get(id(a)) for a in node.inputs]
            if isinstance(node.layer, _FOLDED) and inputs and inputs[0] is not None:
                tensors[id(node.outputs[0])] = inputs[0]  # the same tensor, used further on
                continue
            op = ops if node.inputs else -1  # a model input is live from the start
            ops += node.inputs != []
            for k in inputs:
                if k is not None:
                    last[k] = max(last[k], op)
            for ids, shape in zip(node.outputs[:1], node.call.out_shapes[:1]):
                spatial = math.prod(d or 1 for d in shape[1:-1])
                per_group = np.zeros(len(self.full))
                gids = np.where(ids >= 0, group_no[np.maximum(ids, 0)], -1)
                for gi, count in zip(*np.unique(gids, return_counts=True)):
                    if int(gi) in prunable:
                        per_group[prunable[int(gi)]] += count
                tensors[id(ids)] = len(size)
                size.append(spatial * ids.size)
                slope.append(spatial * per_group / self.full)
                first.append(op)
                last.append(op)
        for k in range(len(size)):
            if first[k] == last[k] and first[k] >= 0:  # not read by any op: a model output
                last[k] = ops
        self._span = [(max(a, 0), b) for a, b in zip(first, last)]
        self._size = np.array(size, np.float64)
        self._slope = np.array(slope, np.float64).reshape(len(size), len(self.full))
        self._live = np.zeros((max(ops, 1), len(size)))
        for k, (a, b) in enumerate(zip(first, last)):
            self._live[max(a, 0) : b + 1, k] = 1

    def _cached(self, kind: str, widths: np.ndarray, compute) -> object:
        """`compute(widths)`, computed once per `kind` and widths (the searches revisit many)."""
        widths = np.asarray(widths)
        key = (kind, widths.dtype.str, widths.tobytes())
        if key not in self._memo:
            if len(self._memo) >= _MEMO_SIZE:
                self._memo.clear()
            self._memo[key] = compute(widths)
        return self._memo[key]

    def flash(self, widths: np.ndarray) -> float:
        """Bytes of int8 weights, int32 biases and per-channel quantization parameters."""
        return self._cached("flash", widths, self._flash)

    def _flash(self, widths: np.ndarray) -> float:
        values = np.concatenate([widths, self._fixed])
        return float(self._per_channel @ widths) + float(np.prod(values[self._dims], 1).sum())

    def macs(self, widths: np.ndarray) -> float:
        """Multiply-accumulates per example of the layers with a kernel in a group."""
        total = 0.0
        for shape, axes, macs in self._weights:
            if macs:
                kept = math.prod(widths[a_g] / shape[a] for a, a_g in axes.items())
                total += macs * kept
        return total

    def live(self, widths: np.ndarray) -> np.ndarray:
        """Bytes of int8 tensors alive at each op (its inputs, output and those kept for later)."""
        return self._live @ (self._size - self._slope @ (self.full - widths))

    def arena(self, widths: np.ndarray) -> np.ndarray:
        """Arena bytes at each op, whose maximum is what TFLite Micro plans, up to a constant.

        `live`, plus what the greedy planner loses to alignment and fragmentation (its peak
        minus the highest `live`: tensors of uneven sizes do not pack), plus the int32
        multiplier and shift TFLite Micro keeps per output channel of every Conv and
        DepthwiseConv op for the model's lifetime.

        Not modelled: while it plans, TFLite Micro needs a temporary area of a size that
        does not depend on the widths (4,224 B for `benchmarks/mcu.py`'s MobileNetV1-0.25 at
        32x32); once the planned activations are smaller than that, its arena stops
        shrinking (at uniform 75 % pruning 17,552 B against 15,376 B recorded and 15,344 B
        predicted here).
        """
        return self._cached("arena", widths, self._arena).copy()

    def _arena(self, widths: np.ndarray) -> np.ndarray:
        live = self.live(widths)
        sizes = np.rint(self._size - self._slope @ (self.full - widths))
        peak = planned_peak([(n, a, b) for n, (a, b) in zip(sizes, self._span)][::-1])
        return live + (peak - live.max()) + float(self._persistent @ widths)


class Search:
    """Greedy channel removal against anchored resource models (see the module docstring).

    Args:
        width_model: The `WidthModel` of the model.
        limits: `{resource: limit}` for the resources with a limit.
        floor: Per group, channels kept while other groups can still be cut.
    """

    def __init__(self, width_model: WidthModel, limits: dict[str, float], floor: np.ndarray):
        self.model = width_model
        self.limits = dict(limits)
        self.floor = np.asarray(floor, np.int64)
        self.widths = width_model.full.copy()
        self._offset = {"flash": 0.0, "arena": 0.0, "macs": 0.0}
        self._seconds_per_mac = 0.0

    def anchor(self, measured: dict[str, float | None]) -> None:
        """Makes the models equal `measured` (flash, arena, macs, latency) at the widths now."""
        w = self.widths
        self._offset = {
            "flash": measured["flash"] - self.model.flash(w),
            "arena": measured["arena"] - float(self.model.arena(w).max()),
            "macs": measured["macs"] - self.model.macs(w),
        }
        if measured.get("latency") is not None:
            self._seconds_per_mac = measured["latency"] / max(self.model.macs(w), 1.0)

    def _usage(self, widths: np.ndarray) -> dict[str, np.ndarray]:
        """Each limited resource under the anchored models (the arena: per op)."""
        out = {}
        for name in self.limits:
            if name == "arena":
                value = self.model.arena(widths) + self._offset["arena"]
            elif name == "latency":
                value = self.model.macs(widths) * self._seconds_per_mac
            else:
                value = getattr(self.model, name)(widths) + self._offset[name]
            out[name] = np.atleast_1d(np.asarray(value, np.float64))
        return out

    def excess(self, widths: np.ndarray) -> dict[str, float]:
        """What each limited resource has above its limit under the anchored models (> 0).

        The arena's excess is the sum over ops of their live bytes above the limit.
        """
        out = {}
        for name, value in self._usage(widths).items():
            over = float(np.maximum(value - self.limits[name], 0).sum())
            if over > 0:
                out[name] = over
        return out

    def gains(self, widths: np.ndarray) -> np.ndarray:
        """Per group: the exceeded resources' drop, as fractions of their limits, per channel."""
        now = self.excess(widths)
        gains = np.zeros(len(widths))
        for j in range(len(widths)):
            if widths[j] <= 1:
                continue
            fewer = widths.copy()
            fewer[j] -= 1
            after = self.excess(fewer)
            gains[j] = sum((v - after.get(n, 0.0)) / self.limits[n] for n, v in now.items())
        return gains

    def select(self, scores: list[np.ndarray], keeps: list[np.ndarray], quota: int) -> int:
        """Marks up to `quota` channels as dropped in `keeps`, one at a time.

        Args:
            scores: Per group, each channel's importance divided by the group's mean
                importance at full width.
            keeps: Per group, which channels are kept (modified in place).
            quota: Most channels to drop.

        Returns:
            Channels dropped: fewer than `quota` when the models say every limit is met,
            0 when no group can reduce a resource that is over its limit.
        """
        dropped = 0
        while dropped < quota and self.excess(self.widths):
            gains = self.gains(self.widths)
            usable = gains > 0
            above = usable & (self.widths > self.floor)
            if above.any():
                usable = above
            if not usable.any():
                break
            best, choice = np.inf, None
            for j in np.flatnonzero(usable):
                kept = np.flatnonzero(keeps[j])
                c = kept[np.argmin(scores[j][kept])]
                ratio = scores[j][c] / gains[j]
                if ratio < best:
                    best, choice = ratio, (j, c)
            j, c = choice
            keeps[j][c] = False
            self.widths[j] -= 1
            dropped += 1
        return dropped

    def give_back(self, scores: list[np.ndarray], keeps: list[np.ndarray]) -> list[tuple]:
        """Adds dropped channels back, one at a time, while every limit still holds.

        Each time, of the groups one more channel of which keeps every limit under the
        anchored models, the one whose most important dropped channel has the highest
        importance per share of the tightest slack it uses (the largest fraction, over
        the limited resources and, for the arena, over the ops, of the room left that the
        channel takes) comes back; a channel that uses no slack comes back first.

        Args:
            scores: Per group, each channel's importance (as for `select`; dropped
                channels keep the score they had before they were dropped).
            keeps: Per group, which channels are kept (modified in place).

        Returns:
            The channels added, `(group, channel)` in the order they came back.
        """
        added = []
        while True:
            now = self._usage(self.widths)
            best, choice = None, None
            for j, keep in enumerate(keeps):
                dropped = np.flatnonzero(~keep)
                if not dropped.size:
                    continue
                more = self.widths.copy()
                more[j] += 1
                if self.excess(more):
                    continue
                cost = 0.0
                for name, after in self._usage(more).items():
                    room = np.maximum(self.limits[name] - now[name], 1e-12)
                    cost = max(cost, float(((after - now[name]) / room).max()))
                c = dropped[np.argmax(scores[j][dropped])]
                key = (scores[j][c] / cost if cost > 0 else np.inf, scores[j][c])
                if best is None or key > best:
                    best, choice = key, (j, int(c))
            if choice is None:
                return added
            j, c = choice
            keeps[j][c] = True
            self.widths[j] += 1
            added.append(choice)

    def swap(self, scores: list[np.ndarray], keeps: list[np.ndarray]) -> list[tuple]:
        """Moves channels between groups, one at a time, while every limit still holds.

        Each time, of the moves "drop group i's least important kept channel, bring back
        group j's most important dropped one" that keep every limit under the anchored
        models and group i at or above its floor, the one that gains most importance
        comes back; stops when no move gains any. Give-back only adds, so it cannot undo
        an uneven cut: a swap can, where the limits leave no room for one more channel.

        Args:
            scores: Per group, each channel's importance (as for `give_back`).
            keeps: Per group, which channels are kept (modified in place).

        Returns:
            The moves, `((i, channel dropped), (j, channel added))` in the order made.
        """
        moves = []
        for _ in range(int(self.model.full.sum())):  # each move gains: a bound, not a limit
            best, choice = 0.0, None
            for i, keep_i in enumerate(keeps):
                kept = np.flatnonzero(keep_i)
                if self.widths[i] <= self.floor[i] or kept.size <= 1:
                    continue
                out = int(kept[np.argmin(scores[i][kept])])
                for j, keep_j in enumerate(keeps):
                    dropped = np.flatnonzero(~keep_j)
                    if j == i or not dropped.size:
                        continue
                    back = int(dropped[np.argmax(scores[j][dropped])])
                    gain = scores[j][back] - scores[i][out]
                    if gain <= best:
                        continue
                    moved = self.widths.copy()
                    moved[i] -= 1
                    moved[j] += 1
                    if not self.excess(moved):
                        best, choice = gain, ((i, out), (j, back))
            if choice is None:
                break
            (i, out), (j, back) = choice
            keeps[i][out], keeps[j][back] = False, True
            self.widths[i] -= 1
            self.widths[j] += 1
            moves.append(choice)
        return moves

    def undo(self, added: list[tuple], keeps: list[np.ndarray]) -> None:
        """Drops again channels that `give_back` added (`(group, channel)` pairs)."""
        for j, c in added:
            keeps[j][c] = False
            self.widths[j] -= 1
