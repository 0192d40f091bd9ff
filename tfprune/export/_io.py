"""File helpers shared by the exporters: atomic writes and reading a .tflite from a path."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator

__all__: list[str] = []


_TAG = ".tfprune-tmp-"  # in every temporary name tfprune makes, followed by the writer's pid


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process, or unknown: leave its files alone
    return True


def remove_stale(folder: str, prefix: str) -> None:
    """Removes temporary files and folders of tfprune's own naming left by a killed run.

    Only entries named `prefix + _TAG + <pid> + ...` whose writer process no longer exists
    are removed, so a concurrent export is never disturbed.
    """
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for entry in names:
        if not entry.startswith(prefix + _TAG):
            continue
        pid = entry[len(prefix + _TAG) :].split("-", 1)[0]
        if not pid.isdigit() or _pid_alive(int(pid)):
            continue
        full = os.path.join(folder, entry)
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.remove(full)


def output_path(path: str | os.PathLike, argname: str = "path") -> str:
    """`path` as a string, after checking (before any slow work) that it can be written.

    Raises:
        TypeError: If `path` is not a str or os.PathLike.
        FileNotFoundError: If its folder does not exist.
        NotADirectoryError: If its folder is a file.
        IsADirectoryError: If `path` is a folder.
        PermissionError: If its folder is not writable.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            f"Expected `{argname}` to be a file path (str or os.PathLike), e.g. "
            f"'model.tflite'. Received: {argname}={path!r} of type {type(path).__name__}"
        )
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise IsADirectoryError(
            f"`{argname}` is a folder, not a file. Give a file name inside it, e.g. "
            f"{os.path.join(path, 'model.tflite')!r}. Received: {argname}={path!r}"
        )
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise NotADirectoryError(
            f"The folder of `{argname}` is a file: {folder}. Choose another folder. "
            f"Received: {argname}={path!r}"
        )
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"The folder of the output file does not exist: {folder}. Create it first. "
            f"Received: {argname}={path!r}"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(
            f"Cannot write to the folder {folder}: permission denied. Choose a writable "
            f"folder or change its permissions. Received: {argname}={path!r}"
        )
    return path


def output_dir(out_dir: str | os.PathLike, argname: str = "out_dir") -> str:
    """`out_dir` as a string, created if missing, after checking it is a writable folder.

    Raises:
        TypeError: If `out_dir` is not a str or os.PathLike.
        NotADirectoryError: If it (or a parent) is a file.
        PermissionError: If it cannot be created or written.
    """
    if not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(
            f"Expected `{argname}` to be a folder path (str or os.PathLike). "
            f"Received: {argname}={out_dir!r} of type {type(out_dir).__name__}"
        )
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise NotADirectoryError(
            f"`{argname}` is a file, not a folder. Give a folder path (created if missing). "
            f"Received: {argname}={out_dir!r}"
        )
    try:
        os.makedirs(out_dir, exist_ok=True)
    except NotADirectoryError as e:
        raise NotADirectoryError(
            f"A parent of `{argname}` is a file, so the folder cannot be created. "
            f"Received: {argname}={out_dir!r}"
        ) from e
    except PermissionError as e:
        raise PermissionError(
            f"Cannot create the folder: permission denied. Choose a writable location. "
            f"Received: {argname}={out_dir!r}"
        ) from e
    output_path(os.path.join(out_dir, "x"), argname)
    return out_dir


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[str]:
    """Yields a temporary path beside `path`; on success it replaces `path`, else it is removed.

    The temporary file lives in the same folder, so `os.replace` is atomic: readers see the
    old file or the complete new one, never half a file, even on an exception or
    KeyboardInterrupt. It is created with mode 0666 less the umask, as `open(path, "w")`
    would (0644 under umask 022), and named `.NAME.tfprune-tmp-PID-...`, so a file left by a
    killed run is removed by the next write to the same folder.
    """
    path = output_path(path)
    folder = os.path.dirname(os.path.abspath(path))
    prefix = f".{os.path.basename(path)}"
    remove_stale(folder, prefix)
    tmp = os.path.join(folder, f"{prefix}{_TAG}{os.getpid()}-{secrets.token_hex(6)}{suffix}")
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # mode: 0666 & ~umask
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def temp_dir(prefix: str) -> Iterator[str]:
    """A temporary folder in the system temp directory, removed in a `finally`.

    Named `PREFIX.tfprune-tmp-PID-...`; folders of that naming left by killed runs are
    removed first.
    """
    root = tempfile.gettempdir()
    remove_stale(root, prefix)
    folder = tempfile.mkdtemp(prefix=f"{prefix}{_TAG}{os.getpid()}-", dir=root)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


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
