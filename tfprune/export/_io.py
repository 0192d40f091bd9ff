"""File helpers shared by the exporters: atomic writes and reading a .tflite from a path."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

__all__: list[str] = []


def output_path(path: str | os.PathLike) -> str:
    """`path` as a string, after checking that its folder exists (before any slow work)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"The folder of the output file does not exist: {folder}. Create it first. "
            f"Received: path={path!r}"
        )
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[str]:
    """Yields a temporary path beside `path`; on success it replaces `path`, else it is removed.

    The temporary file lives in the same folder, so `os.replace` is atomic: readers see the
    old file or the complete new one, never half a file, even on an exception or
    KeyboardInterrupt.
    """
    path = output_path(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `path` atomically (temp file in the same folder, fsync, `os.replace`)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def read_model(model: str | os.PathLike | bytes | bytearray, argname: str = "model") -> bytes:
    """The bytes of a .tflite file given as a path or as bytes; checks the TFL3 identifier."""
    if isinstance(model, (bytes, bytearray, memoryview)):
        data = bytes(model)
        where = "the bytes given"
    elif isinstance(model, (str, os.PathLike)):
        if not os.path.isfile(model):
            raise FileNotFoundError(
                f"No such .tflite file. Received: {argname}={os.fspath(model)!r}"
            )
        with open(model, "rb") as f:
            data = f.read()
        where = repr(os.fspath(model))
    else:
        raise TypeError(
            f"Expected `{argname}` to be a path to a .tflite file or its bytes. "
            f"Received: {argname} of type {type(model).__name__}"
        )
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ValueError(
            f"{where} is not a TFLite flatbuffer (no 'TFL3' identifier at byte 4). Pass a file "
            f"written by tfprune.export.tflite or tf.lite.TFLiteConverter. "
            f"Received: {argname} of {len(data)} bytes"
        )
    return data
