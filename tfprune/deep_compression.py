"""Deep Compression's figures for any model: bits per weight after pruning and sharing, the
Huffman-coded size of the indices, and the real file sizes beside them.

For each kernel (each weight the registry lets weight-level pruning touch), the distinct
values of each output channel (or of the whole tensor) form its table, zero included; each
weight is stored as its index into its table. Two encodings are counted:

- lookup table (what TFLite Micro's compression stores): `ceil(log2(values))` bits per
  weight, plus the table at `codebook_bits` per entry;
- Huffman (Deep Compression's last stage): one Huffman code per tensor over the indices
  (zero, when present, is index 0 of every table, so pruned weights share one short
  code), plus the table and one byte per symbol for the code lengths of a canonical code.

A tensor with more than 256 values in a table is not shared: it counts `codebook_bits` per
weight in both (32: float32, 8: the int8 weights of a quantized file). Every other weight
(biases, normalization) counts 32 bits. Sparsity alone (without sharing) is not counted:
Huffman codes of an unshared tensor's zeros would need a sparse format, which this does not
model; after sharing, zero is one of the table's symbols and its code is short.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import Counter

import keras
import numpy as np

from tfprune import huffman
from tfprune import layers as registry
from tfprune.clustering import rows
from tfprune.export._io import read_model
from tfprune.sharing import clustered_layers
from tfprune.surgery import strip
from tfprune.wrapper import prunable_layers

__all__ = ["SharedTensor", "SharingReport", "int8_values_per_channel", "sharing_report"]

MAX_TABLE = 256
FLOAT_BITS = 32
CODE_LENGTH_BITS = 8


@dataclasses.dataclass(frozen=True)
class SharedTensor:
    """One kernel's figures.

    Attributes:
        layer: Layer name.
        weight: Weight path in the layer (`"kernel"`).
        params: Number of weights.
        nonzeros: Weights that are not exactly zero.
        values: Largest number of distinct values in one table (zero included).
        table_entries: Entries of all its tables together.
        huffman_bits: Bits of the Huffman-coded indices (tables excluded), or `None`
            when the tensor is not shared (more than 256 values in a table).
        codebook_bits: Bits of one stored value (table entry or unshared weight).
    """

    layer: str
    weight: str
    params: int
    nonzeros: int
    values: int
    table_entries: int
    huffman_bits: int | None
    codebook_bits: int

    @property
    def shared(self) -> bool:
        """Whether its tables have at most 256 entries."""
        return self.huffman_bits is not None

    @property
    def index_bits(self) -> int | None:
        """Bits per index into the table: `ceil(log2(values))` (at least 1)."""
        return max(1, math.ceil(math.log2(self.values))) if self.shared else None

    @property
    def lut_bits(self) -> int:
        """Indices and tables (or `codebook_bits` per weight when not shared)."""
        if not self.shared:
            return self.params * self.codebook_bits
        return self.params * self.index_bits + self.table_entries * self.codebook_bits

    @property
    def entropy_bits(self) -> int:
        """Huffman-coded indices, tables and code lengths (or `codebook_bits` per weight
        when not shared)."""
        if not self.shared:
            return self.params * self.codebook_bits
        symbols = min(self.values, self.params)
        return (
            self.huffman_bits + self.table_entries * self.codebook_bits + symbols * CODE_LENGTH_BITS
        )


@dataclasses.dataclass(frozen=True)
class SharingReport:
    """Deep Compression's figures for a model, with real file sizes.

    Attributes:
        tensors: One `SharedTensor` per kernel.
        other_params: Every other weight of the model (counted at 32 bits).
        files: `{label: bytes}` of the files given to `sharing_report`.
    """

    tensors: tuple[SharedTensor, ...]
    other_params: int
    files: dict[str, int]

    @property
    def params(self) -> int:
        """All weights of the model."""
        return sum(t.params for t in self.tensors) + self.other_params

    @property
    def float32_bytes(self) -> int:
        """The model's weights at 32 bits each."""
        return self.params * 4

    @property
    def bits_per_weight(self) -> float:
        """Lookup-table bits per kernel weight (indices and tables over kernel weights)."""
        return sum(t.lut_bits for t in self.tensors) / max(1, sum(t.params for t in self.tensors))

    @property
    def entropy_bits_per_weight(self) -> float:
        """Huffman-coded bits per kernel weight (indices, tables, code lengths)."""
        return sum(t.entropy_bits for t in self.tensors) / max(
            1, sum(t.params for t in self.tensors)
        )

    @property
    def lut_bytes(self) -> int:
        """Bytes of the model with lookup-table kernels, other weights at 32 bits."""
        bits = sum(t.lut_bits for t in self.tensors) + self.other_params * FLOAT_BITS
        return math.ceil(bits / 8)

    @property
    def entropy_bytes(self) -> int:
        """Bytes of the model with Huffman-coded kernels, other weights at 32 bits."""
        bits = sum(t.entropy_bits for t in self.tensors) + self.other_params * FLOAT_BITS
        return math.ceil(bits / 8)

    def format(self) -> str:
        """A table: one row per kernel, the totals, then the files."""
        lines = [
            f"{'layer/weight':<28} {'params':>9} {'nonzero':>9} {'values':>6} {'idx bits':>8} "
            f"{'LUT bits/w':>10} {'Huffman bits/w':>14}"
        ]
        for t in self.tensors:
            name = f"{t.layer}/{t.weight}"
            bits = "-" if not t.shared else str(t.index_bits)
            lines.append(
                f"{name[-28:]:<28} {t.params:>9,} {t.nonzeros:>9,} {t.values:>6} {bits:>8} "
                f"{t.lut_bits / t.params:>10.2f} {t.entropy_bits / t.params:>14.2f}"
            )
        lines.append(
            f"kernels: {self.bits_per_weight:.2f} bits/weight with lookup tables, "
            f"{self.entropy_bits_per_weight:.2f} Huffman-coded; {self.other_params:,} other "
            "weights at 32 bits"
        )
        sizes = {
            "float32": self.float32_bytes,
            "lookup tables": self.lut_bytes,
            "Huffman": self.entropy_bytes,
        }
        for label, size in sizes.items():
            lines.append(
                f"  {label:<16} {size:>10,} B  {self.float32_bytes / size:6.1f}x vs float32"
            )
        for label, size in self.files.items():
            lines.append(
                f"  file {label:<11} {size:>10,} B  {self.float32_bytes / size:6.1f}x vs float32"
            )
        return "\n".join(lines)


def _tensor(layer, spec, value: np.ndarray, per_channel: bool, codebook_bits: int):
    by_row = rows(value, spec, per_channel)
    symbols: Counter = Counter()
    entries, widest = 0, 0
    for row in by_row:
        # table order: zero first (so that every row codes it alike), then ascending
        table, local = np.unique(row, return_inverse=True)
        order = np.arange(table.size)
        if (table == 0).any():
            z = int(np.flatnonzero(table == 0)[0])
            order = np.where(order == z, 0, order + (order < z))
        symbols.update(Counter(order[local.reshape(-1)].tolist()))
        entries += table.size
        widest = max(widest, table.size)
    return SharedTensor(
        layer=layer.name,
        weight=spec.path,
        params=int(value.size),
        nonzeros=int(np.count_nonzero(value)),
        values=widest,
        table_entries=entries,
        huffman_bits=huffman.coded_bits(dict(symbols)) if widest <= MAX_TABLE else None,
        codebook_bits=codebook_bits,
    )


def sharing_report(
    model: keras.Model,
    per_channel: bool = True,
    codebook_bits: int = FLOAT_BITS,
    files: dict[str, str | os.PathLike] | None = None,
) -> SharingReport:
    """Deep Compression's figures for a model: bits per weight and Huffman-coded size.

    Works on any model: a plain one (its kernels have as many values as weights, so they
    count as not shared), a pruned one, a `tfprune.cluster`ed one (wrappers are stripped
    first) or a stripped one.

    Args:
        model: A Keras model (or a single layer).
        per_channel: One table per output channel (as `tfprune.cluster(per_channel=True)`
            and TFLite Micro's per-channel lookup tables) or one per tensor.
        codebook_bits: Bits of one stored value (a table entry, or a weight of a tensor
            that is not shared): 32 for float (Deep Compression's figure), 8 for the int8
            values of a quantized file.
        files: `{label: path}` of exported files whose sizes to show beside the figures.

    Returns:
        A `SharingReport`; `print(report.format())` shows it.

    Raises:
        TypeError: If `model` is not a Keras layer.
        ValueError: If `codebook_bits` is not a positive integer.
        FileNotFoundError: If a file does not exist.
    """
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(
            "tfprune.sharing_report expects a Keras model or layer. Received: "
            f"model={model!r} of type {type(model).__name__}"
        )
    if isinstance(codebook_bits, bool) or not isinstance(codebook_bits, int) or codebook_bits < 1:
        raise ValueError(
            "`codebook_bits` must be a positive integer, e.g. 32 (float) or 8 (int8). "
            f"Received: codebook_bits={codebook_bits!r}"
        )
    if prunable_layers(model) or clustered_layers(model):
        model = strip(model)
    layers = [model] if not isinstance(model, keras.Model) else registry.iter_layers(model)
    tensors, covered = [], set()
    for layer in layers:
        spec = registry.lookup(layer)
        if spec is None or isinstance(layer, keras.Model):
            continue
        for s in spec.prunable_specs(layer):
            variable = registry.resolve(layer, s.path)
            covered.add(id(variable))
            value = keras.ops.convert_to_numpy(variable)
            tensors.append(_tensor(layer, s, value, per_channel, codebook_bits))
    other = sum(int(np.prod(w.shape)) for w in model.weights if id(w) not in covered)
    sizes = {label: os.path.getsize(path) for label, path in (files or {}).items()}
    return SharingReport(tuple(tensors), other, sizes)


def int8_values_per_channel(model: str | os.PathLike | bytes) -> dict[str, int]:
    """Distinct int8 values per output channel of each int8 weight tensor of a .tflite file.

    Weight tensors are the constant int8 tensors of two or more dimensions; channels are
    along each tensor's quantized dimension (per-channel quantization), or axis 0.

    Args:
        model: Path to a .tflite file, or its bytes.

    Returns:
        `{tensor name: largest number of distinct values in one channel}`.

    Raises:
        FileNotFoundError: If the path does not exist.
    """
    from ai_edge_litert import schema_py_generated as schema

    fb = schema.ModelT.InitFromPackedBuf(read_model(model), 0)
    found = {}
    for t in fb.subgraphs[0].tensors:
        buf = fb.buffers[t.buffer] if t.buffer < len(fb.buffers) else None
        shape = tuple(int(d) for d in (t.shape if t.shape is not None else ()))
        if int(t.type) != schema.TensorType.INT8 or buf is None or buf.data is None:
            continue
        if len(shape) < 2:
            continue
        data = np.asarray(buf.data, np.uint8).view(np.int8).reshape(shape)
        axis = int(t.quantization.quantizedDimension) if t.quantization is not None else 0
        per_channel = np.moveaxis(data, axis, 0).reshape(shape[axis], -1)
        name = t.name.decode() if isinstance(t.name, bytes) else str(t.name)
        found[name] = max(len(np.unique(row)) for row in per_channel)
    return found
