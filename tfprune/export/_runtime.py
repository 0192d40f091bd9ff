"""Running a .tflite file in the LiteRT interpreter, with the file's own (de)quantization."""

from __future__ import annotations

import re

import numpy as np

__all__: list[str] = []


def interpreter(data: bytes, threads: int = 1, xnnpack: bool = True, reference: bool = False):
    """A LiteRT interpreter for `data`, tensors allocated.

    `xnnpack=True` is LiteRT's default configuration (the XNNPACK delegate applied), which is
    what an app gets; `False` runs the optimized builtin kernels only; `reference=True` runs
    the reference kernels (`BUILTIN_REF`), which TFLite Micro's kernels match bit for bit.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    if reference:
        resolver = OpResolverType.BUILTIN_REF
    interp = Interpreter(
        model_content=data, num_threads=threads, experimental_op_resolver_type=resolver
    )
    interp.allocate_tensors()
    return interp


def check_runnable(data: bytes) -> str | None:
    """Allocates and invokes once on zeros in the default configuration; the error or None."""
    try:
        interp = interpreter(data)
        for d in interp.get_input_details():
            interp.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
        interp.invoke()
    except (RuntimeError, ValueError) as e:
        # LiteRT glues its error lines together ("...node #8Node number 10 ..."): split them.
        return re.sub(r"(?<=\S)(?=Node number)", "; ", " ".join(str(e).split()))
    return None


def quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    """`x` in the input tensor's dtype: q = round(x / scale) + zero_point, clipped."""
    dtype = np.dtype(detail["dtype"])
    scale, zero_point = detail["quantization"]
    if np.issubdtype(dtype, np.integer) and scale:
        info = np.iinfo(dtype)
        q = np.round(np.asarray(x, np.float64) / scale) + zero_point
        return np.clip(q, info.min, info.max).astype(dtype)
    return np.asarray(x, dtype)


def dequantize(q: np.ndarray, detail: dict) -> np.ndarray:
    """An output tensor as float32: x = (q - zero_point) * scale."""
    scale, zero_point = detail["quantization"]
    if np.issubdtype(np.dtype(detail["dtype"]), np.integer) and scale:
        return ((q.astype(np.float32) - zero_point) * scale).astype(np.float32)
    return np.asarray(q, np.float32)


def predict(interp, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """Float outputs of a single-input, single-output interpreter on all examples of `x`."""
    inp = interp.get_input_details()[0]
    out_index = interp.get_output_details()[0]["index"]
    fixed = int(inp["shape"][0])
    dynamic = len(inp["shape_signature"]) and int(inp["shape_signature"][0]) == -1
    step = batch if dynamic else fixed
    outputs = []
    for start in range(0, len(x), step):
        chunk = x[start : start + step]
        if dynamic and chunk.shape[0] != interp.get_input_details()[0]["shape"][0]:
            interp.resize_tensor_input(inp["index"], list(chunk.shape))
            interp.allocate_tensors()
        elif not dynamic and chunk.shape[0] != fixed:  # pad the last partial batch
            pad = np.zeros((fixed - chunk.shape[0], *chunk.shape[1:]), chunk.dtype)
            chunk = np.concatenate([chunk, pad])
        interp.set_tensor(inp["index"], quantize(chunk, inp))
        interp.invoke()
        out_detail = interp.get_output_details()[0]
        outputs.append(dequantize(interp.get_tensor(out_index), out_detail)[: len(x) - start])
    return np.concatenate(outputs)[: len(x)]
