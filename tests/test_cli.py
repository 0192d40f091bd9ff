"""The `tfprune` command: summary, shrink, export, bench; one-line errors with exit status 2."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tfprune import cli, export


@pytest.fixture(scope="module")
def files(digits_cnn, tmp_path_factory):
    model, (x_train, _), (x_test, y_test) = digits_cnn
    folder = tmp_path_factory.mktemp("cli")
    model.save(folder / "model.keras")
    np.savez(folder / "cal.npz", x=x_train[:100])
    np.savez(folder / "val.npz", x=x_test, y=y_test)
    np.savez(folder / "wrong_shape.npz", x=np.zeros((4, 28, 28, 1), "float32"))
    np.savez(folder / "two_arrays.npz", a=x_test, b=y_test)
    (folder / "junk.keras").write_bytes(b"this is not a zip file")
    export.tflite(model, folder / "model.tflite", shrink=False)
    return folder


def _main(capsys, *argv):
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def _one_line_error(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"tfprune {command}: error: ")
    assert "Traceback" not in err
    return lines[0]


def test_summary_keras(files, capsys):
    status, out, _ = _main(capsys, "summary", files / "model.keras")
    assert status == 0
    assert "conv1" in out and "logits" in out and "total" in out


def test_summary_tflite(files, capsys):
    status, out, _ = _main(capsys, "summary", files / "model.tflite")
    info = export.describe(files / "model.tflite")
    assert status == 0
    assert f"TFLite file: {info.size:,} bytes" in out
    assert "CONV_2D x2, MAX_POOL_2D x1, RESHAPE x1, FULLY_CONNECTED x2" in out
    assert "input  serving_default_image:0: float32[1, 8, 8, 1]" in out


@pytest.mark.parametrize(
    "name, message",
    [
        ("missing.keras", "Keras model not found: "),
        ("missing.tflite", "TFLite model not found: "),
        ("cal.npz", "MODEL must be a .keras or .tflite file, got: "),
        ("junk.keras", "could not load "),
    ],
)
def test_summary_errors(files, capsys, name, message):
    status, out, err = _main(capsys, "summary", files / name)
    assert status == 2 and out == ""
    assert message in _one_line_error(err, "summary")


def test_export_int8_with_verify_and_micro(files, capsys, tmp_path):
    status, out, err = _main(
        capsys, "export", files / "model.keras", "-o", tmp_path / "m.tflite",
        "--quantize", "int8", "--calibration", files / "cal.npz",
        "--verify", files / "val.npz", "--micro", tmp_path / "micro", "--no-shrink",
    )  # fmt: skip
    assert status == 0, err
    size = os.path.getsize(tmp_path / "m.tflite")
    assert f"Wrote {tmp_path / 'm.tflite'}: {size:,} bytes" in out
    assert "Verification: 450 examples, top-1 agreement" in out
    assert sorted(os.listdir(tmp_path / "micro")) == ["m.cc", "m.h"]
    source = "measured by TFLite Micro" if export.tflm.available() else "estimate"
    assert re.search(rf"{size:,} bytes, 4 ops, arena [\d,]+ bytes \({source}\)", out)
    assert export.describe(tmp_path / "m.tflite").tensors[0].dtype == "int8"


def test_export_float_without_calibration(files, capsys, tmp_path):
    status, out, _ = _main(
        capsys, "export", files / "model.keras", "-o", tmp_path / "f.tflite",
        "--quantize", "none", "--no-shrink",
    )  # fmt: skip
    assert status == 0 and "float32" in out
    assert (tmp_path / "f.tflite").read_bytes() == (files / "model.tflite").read_bytes()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--calibration", "wrong_shape.npz"], "input: examples of shape (28, 28, 1), the input"),
        (["--calibration", "two_arrays.npz"], "holds arrays ['a', 'b']; name the inputs 'x'"),
        (["--calibration", "missing.npz"], "calibration data not found: "),
        (["--calibration", "model.tflite"], "calibration data must be a .npz file"),
        ([], "--quantize int8 needs --calibration DATA.npz"),
        (["--calibration", "cal.npz", "--verify", "wrong_shape.npz"], "verification data does not"),
    ],
)  # fmt: skip
def test_export_errors(files, capsys, tmp_path, extra, message):
    extra = [str(files / e) if e.endswith((".npz", ".tflite")) else e for e in extra]
    status, _, err = _main(
        capsys, "export", files / "model.keras", "-o", tmp_path / "m.tflite", "--no-shrink", *extra
    )
    assert status == 2
    assert message in _one_line_error(err, "export")
    assert os.listdir(tmp_path) == []


def test_export_input_and_output_errors(files, capsys, tmp_path):
    status, _, err = _main(capsys, "export", tmp_path / "nope.keras", "-o", tmp_path / "m.tflite")
    assert status == 2 and "Keras model not found" in _one_line_error(err, "export")
    status, _, err = _main(capsys, "export", files / "model.keras", "-o", tmp_path / "m.bin")
    assert status == 2 and "--output must be a .tflite file" in _one_line_error(err, "export")


def test_bench(files, capsys):
    status, out, _ = _main(capsys, "bench", files / "model.tflite", "--threads", "2", "--runs", "5")
    assert status == 0
    assert out.startswith(f"{files / 'model.tflite'}: median ")
    assert "(2 threads, 5 runs)" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["model.keras"], "TFLite model must be a .tflite file"),
        (["missing.tflite"], "TFLite model not found"),
        (["model.tflite", "--threads", "0"], "Expected `threads` to be an integer >= 1"),
    ],
)
def test_bench_errors(files, capsys, argv, message):
    status, _, err = _main(capsys, "bench", files / argv[0], *argv[1:])
    assert status == 2 and message in _one_line_error(err, "bench")


def test_shrink(files, capsys, tmp_path):
    # Needs tfprune.shrink (structured pruning).
    import keras

    status, out, err = _main(capsys, "shrink", files / "model.keras", tmp_path / "small.keras")
    assert status == 0, err
    assert out.startswith(f"Wrote {tmp_path / 'small.keras'}: ")
    small = keras.saving.load_model(tmp_path / "small.keras")
    assert small.count_params() <= keras.saving.load_model(files / "model.keras").count_params()


def test_shrink_errors(files, capsys, tmp_path):
    status, _, err = _main(capsys, "shrink", files / "model.keras", tmp_path / "small.h5")
    assert status == 2 and "OUTPUT must be a .keras file" in _one_line_error(err, "shrink")
    status, _, err = _main(capsys, "shrink", tmp_path / "nope.keras", tmp_path / "s.keras")
    assert status == 2 and "Keras model not found" in _one_line_error(err, "shrink")
    assert os.listdir(tmp_path) == []


def test_console_script_smoke(files):
    exe = shutil.which("tfprune") or os.path.join(os.path.dirname(sys.executable), "tfprune")
    done = subprocess.run(
        [exe, "summary", str(files / "missing.tflite")], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"tfprune summary: error: TFLite model not found: {files / 'missing.tflite'}"
    )
    assert "Traceback" not in done.stderr
