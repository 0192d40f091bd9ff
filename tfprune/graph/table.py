"""The channel rule table: which rule handles which layer or raw `keras.ops` operation.

A rule is a function `rule(graph, call)`: `graph` is the `tfprune.graph.Graph` being built
and `call` a `tfprune.graph.Call` (the layer or operation, the channel ids and shapes of its
input tensors, its constant arguments). It returns the channel ids of the call's output (a
list of arrays for an operation with several outputs), or a string saying why the channel
mapping is unknown: then every channel that reaches the call is frozen with that reason.

The table is keyed by exact class (a `keras.layers.Layer` or `keras.Operation` subclass) or
by Keras registered name (`keras.saving.get_registered_name`, e.g. `"Mean"` for `keras.ops.mean` or
`"keras_hub>RMSNormalization"`), which lets a rule family describe classes of a package
without importing it (or whose module is private, like `keras.applications`' LayerScale).
A class entry wins over a name: the layer `keras.layers.Add` has its own rule, distinct
from the operation `Add` (`x + y`); rules for raw operations refuse layers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import keras

__all__ = ["KINDS", "RuleEntry", "check_entry", "find", "lookup", "register"]

# How `tfprune.shrink` treats the constants that removed channels carry through a call of
# each kind (see tfprune/shrink_rules/constants.py); a rule's kind must be one of these.
KINDS = (
    "input",
    "source",
    "separable",
    "depthwise",
    "grouped",
    "norm",
    "mixed",
    "elementwise",
    "spatial",
    "pad",
    "merge",
    "concat",
    "flatten",
    "op",
    "reduce",
    "strict",
    "split",
    "lookup",
    "reversible",
    "attention",
    "hidden_norm",
    "residual_block",
    "slice",
    "unknown",
)


@dataclasses.dataclass(frozen=True)
class RuleEntry:
    """A rule and its kind (`KINDS`): what `tfprune.shrink` does with the call."""

    kind: str
    fn: Callable


_TABLE: dict[type | str, RuleEntry] = {}


def register(target: type | str, rule: Callable, kind: str = "elementwise") -> None:
    """Registers the channel rule of a layer class or a raw `keras.ops` operation.

    Args:
        target: A `keras.layers.Layer` or `keras.Operation` subclass (exactly that
            class: a subclass may compute something else, so it needs its own rule), or
            a Keras registered name (`"Mean"`, `"my_package>MyLayer"`).
        rule: `rule(graph, call) -> ids | list[ids] | str`: the channel ids of the
            output(s) given `call.ids`, the ids of the inputs; a string means "unknown"
            and freezes the input channels with that reason. It may call
            `graph.union(a, b)` to tie channels, `graph.freeze(ids, reason)` and
            `graph.record(layer, weight, axis, ids, role)` for weights holding channels.
        kind: How `tfprune.shrink` carries the constants of removed channels through
            the call: `"elementwise"` (it calls the layer on them: per-channel
            functions), `"spatial"` (unchanged: pooling, cropping), `"mixed"` (the rule
            freezes its channels), or another entry of `tfprune.graph.KINDS`.

    Raises:
        TypeError: If `target` is not a class or a string, or `rule` is not callable.
        ValueError: If `kind` is not one of `tfprune.graph.KINDS`.

    Example:

    ```python
    def scale_rule(graph, call):  # a custom per-channel layer: channels pass through
        return call.ids[0]

    tfprune.graph.register(MyScale, scale_rule, kind="elementwise")
    ```
    """
    check_entry("tfprune.graph.register", target, "a layer or operation class", rule, "graph, call")
    if kind not in KINDS:
        raise ValueError(
            f"tfprune.graph.register: `kind` must be one of {list(KINDS)}. Received: kind={kind!r}"
        )
    _TABLE[target] = RuleEntry(kind, rule)


def lookup(op: keras.Operation) -> RuleEntry | None:
    """The rule of a layer or operation: by its exact class, then by registered name."""
    return find(_TABLE, op)


def check_entry(where: str, target: object, expected: str, rule: object, args: str) -> None:
    """Checks a table entry of a class or registered name and its rule (Keras-style errors).

    Args:
        where: The registering function, for messages (`"tfprune.graph.register"`).
        target: The key to check: a class or a registered name.
        expected: What kind of class the table keys (`"a layer class"`).
        rule: The value to check: a callable.
        args: The rule's arguments, for messages (`"graph, call"`).

    Raises:
        TypeError: If `target` is not a class or a string, or `rule` is not callable.
    """
    if not isinstance(target, (str, type)):
        raise TypeError(
            f"{where} expects {expected}, or a registered name. "
            f"Received: target={target!r} of type {type(target).__name__}"
        )
    if not callable(rule):
        raise TypeError(f"{where} expects a callable `rule({args})`. Received: rule={rule!r}")


def find(table: dict, op: keras.Operation):
    """The entry of a table keyed by class or registered name: exact class first.

    Args:
        table: `{class or registered name: entry}`.
        op: A layer or operation.

    Returns:
        Its entry, or `None` when neither its class nor its registered name is a key.
    """
    if type(op) in table:
        return table[type(op)]
    return table.get(keras.saving.get_registered_name(type(op)))
