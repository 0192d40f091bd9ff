"""Read a .tflite flatbuffer: operators in execution order, tensors, and where the bytes go.

The file is parsed with the flatbuffer schema bindings that ship with LiteRT
(`ai_edge_litert.schema_py_generated`, generated from TFLite's `schema.fbs`), so no
interpreter is built and files that an interpreter cannot prepare can still be described.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
from collections import Counter

import numpy as np

from tfprune.export._io import read_model

__all__ = ["TFLiteInfo", "TensorInfo", "describe"]

_DTYPES = {
    0: ("float32", 4),
    1: ("float16", 2),
    2: ("int32", 4),
    3: ("uint8", 1),
    4: ("int64", 8),
    5: ("string", 1),
    6: ("bool", 1),
    7: ("int16", 2),
    8: ("complex64", 8),
    9: ("int8", 1),
    10: ("float64", 8),
    11: ("complex128", 16),
    12: ("uint64", 8),
    15: ("uint32", 4),
    16: ("uint16", 2),
    17: ("int4", 0.5),
    18: ("bfloat16", 2),
}


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One tensor of the main subgraph.

    Attributes:
        index: Tensor index in the subgraph.
        name: Tensor name.
        shape: Static shape (the batch dimension as stored in the file).
        dtype: Element type name, e.g. `"int8"`.
        nbytes: Bytes of one instance of the tensor (elements x element size).
        constant: Whether its data is stored in the file (weights, biases, shapes).
        stored_bytes: Bytes of data stored in the file for it (differs from `nbytes` for
            sparse-encoded weights).
        scale: Quantization scales (empty for float tensors).
        zero_point: Quantization zero points.
        sparse: Whether its data is stored in TFLite's sparse format.
    """

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    constant: bool
    stored_bytes: int
    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    sparse: bool = False


@dataclasses.dataclass(frozen=True)
class TFLiteInfo:
    """What a .tflite file holds (main subgraph).

    Attributes:
        size: File size in bytes.
        gzip_size: Size after `gzip -9`, a proxy for what compression of zeros buys.
        ops: Operator names in execution order, e.g. `("CONV_2D", "FULLY_CONNECTED")`.
        tensors: All tensors of the main subgraph.
        inputs: Indices of the input tensors.
        outputs: Indices of the output tensors.
        operators: For each operator, `(name, input tensor indices, output tensor indices)`.
        subgraphs: Number of subgraphs in the file.
    """

    size: int
    gzip_size: int
    ops: tuple[str, ...]
    tensors: tuple[TensorInfo, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    operators: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]
    subgraphs: int

    @property
    def op_counts(self) -> dict[str, int]:
        """How often each operator occurs, in order of first use."""
        return dict(Counter(self.ops))

    @property
    def weight_bytes(self) -> int:
        """Bytes of constant tensor data stored in the file."""
        return sum(t.stored_bytes for t in self.tensors if t.constant)

    def format(self) -> str:
        """A human-readable report: sizes, inputs/outputs, op counts and tensors."""
        lines = [
            f"TFLite file: {self.size:,} bytes ({self.gzip_size:,} gzipped), "
            f"{len(self.ops)} operators, {len(self.tensors)} tensors, "
            f"{self.weight_bytes:,} bytes of constants",
        ]
        for kind, idx in (("input", self.inputs), ("output", self.outputs)):
            for i in idx:
                t = self.tensors[i]
                q = f" scale={t.scale[0]:.6g} zero_point={t.zero_point[0]}" if t.scale else ""
                lines.append(f"  {kind:<6} {t.name}: {t.dtype}{list(t.shape)}{q}")
        lines.append("Ops: " + ", ".join(f"{k} x{v}" for k, v in self.op_counts.items()))
        names = [t.name if len(t.name) <= 48 else "..." + t.name[-45:] for t in self.tensors]
        w = max([len(n) for n in names] + [6])
        lines.append(f"{'tensor':<{w}}  {'dtype':<8} {'shape':<18} {'bytes':>10}  kind")
        for name, t in zip(names, self.tensors):
            kind, size = ("const", t.stored_bytes) if t.constant else ("activation", t.nbytes)
            shape = str(list(t.shape))
            lines.append(f"{name:<{w}}  {t.dtype:<8} {shape:<18} {size:>10,}  {kind}")
        return "\n".join(lines)


def _op_name(code, schema) -> str:
    builtin = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
    if builtin == schema.BuiltinOperator.CUSTOM:
        custom = code.customCode
        return f"CUSTOM:{custom.decode() if isinstance(custom, bytes) else custom}"
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    return names.get(builtin, f"BUILTIN_{builtin}")


def describe(model: str | os.PathLike | bytes) -> TFLiteInfo:
    """Parses a .tflite file into its operators, tensors and sizes.

    Args:
        model: Path to a .tflite file, or its bytes.

    Returns:
        A `TFLiteInfo`; `print(info.format())` shows a report.

    Raises:
        FileNotFoundError: If the path does not exist.
        ValueError: If the data is not a TFLite flatbuffer.
    """
    data = read_model(model)
    try:
        return _parse(data)
    except Exception as e:  # a truncated or corrupt buffer fails anywhere in the decoding
        where = os.fspath(model) if isinstance(model, (str, os.PathLike)) else "the bytes given"
        raise ValueError(
            f"Could not parse the TFLite flatbuffer ({type(e).__name__}: {e}). The file is "
            f"damaged or truncated; export it again. Received: model={where!r}"
        ) from e


def _parse(data: bytes) -> TFLiteInfo:
    from ai_edge_litert import schema_py_generated as schema

    fb = schema.ModelT.InitFromPackedBuf(data, 0)
    graph = fb.subgraphs[0]
    codes = [_op_name(c, schema) for c in fb.operatorCodes]
    tensors = []
    for i, t in enumerate(graph.tensors):
        dtype, esize = _DTYPES.get(int(t.type), (f"type{int(t.type)}", 1))
        shape = tuple(int(d) for d in (t.shape if t.shape is not None else ()))
        buf = fb.buffers[t.buffer] if t.buffer < len(fb.buffers) else None
        stored = 0
        if buf is not None:
            stored = len(buf.data) if buf.data is not None else int(buf.size or 0)
        q = t.quantization
        scale = tuple(float(s) for s in (q.scale if q is not None and q.scale is not None else ()))
        zp = tuple(
            int(z) for z in (q.zeroPoint if q is not None and q.zeroPoint is not None else ())
        )
        name = t.name.decode() if isinstance(t.name, bytes) else str(t.name)
        tensors.append(
            TensorInfo(
                index=i,
                name=name,
                shape=shape,
                dtype=dtype,
                nbytes=int(np.ceil(int(np.prod(shape, dtype=np.int64)) * esize)),
                constant=stored > 0,
                stored_bytes=stored,
                scale=scale,
                zero_point=zp,
                sparse=t.sparsity is not None,
            )
        )
    operators = tuple(
        (
            codes[op.opcodeIndex],
            tuple(int(i) for i in (op.inputs if op.inputs is not None else ())),
            tuple(int(i) for i in (op.outputs if op.outputs is not None else ())),
        )
        for op in (graph.operators or [])
    )
    return TFLiteInfo(
        size=len(data),
        gzip_size=len(gzip.compress(data, compresslevel=9, mtime=0)),
        ops=tuple(op[0] for op in operators),
        tensors=tuple(tensors),
        inputs=tuple(int(i) for i in graph.inputs),
        outputs=tuple(int(i) for i in graph.outputs),
        operators=operators,
        subgraphs=len(fb.subgraphs),
    )
