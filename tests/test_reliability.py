"""Reliability: mixed-precision export, file modes and temporary files, what a file really is,
models that load without tfprune, and a quiet command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import keras
import numpy as np
import pytest

import tfprune
from tfprune import export
from tfprune.export import _io, convert

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _net(policy: str = "float32") -> keras.Model:
    """The same small CNN under a dtype policy (fixed names, so files can be compared)."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        return keras.Sequential(
            [
                keras.Input((8, 8, 1), name="image"),
                keras.layers.Conv2D(4, 3, name="conv"),
                keras.layers.BatchNormalization(name="bn"),
                keras.layers.ReLU(name="relu"),
                keras.layers.Flatten(name="flat"),
                keras.layers.Dense(3, name="logits"),
            ],
            name="net",
        )
    finally:
        keras.config.set_dtype_policy(previous)


_X = np.random.default_rng(0).normal(size=(16, 8, 8, 1)).astype("float32")


@pytest.mark.parametrize(
    ("quantize", "activations"),
    [
        (None, ("float32",)),
        pytest.param("dynamic", ("float32",), marks=pytest.mark.slow),
        pytest.param("float16", ("float32",), marks=pytest.mark.slow),
        ("int8", ("int8",)),
        pytest.param("int16x8", ("int16",), marks=pytest.mark.slow),
    ],
)
def test_mixed_precision_exports_the_float32_file(tmp_path, quantize, activations):
    base = _net()
    expected = export.tflite(base, tmp_path / "f32.tflite", quantize, _X)
    for policy in ("mixed_float16", "mixed_bfloat16"):
        model = _net(policy)
        model.set_weights(base.get_weights())
        assert model.get_layer("conv").compute_dtype == policy.split("_")[1]
        result = export.tflite(model, tmp_path / f"{policy}.tflite", quantize, _X)
        assert (tmp_path / f"{policy}.tflite").read_bytes() == (
            tmp_path / "f32.tflite"
        ).read_bytes()
        assert result.activations == expected.activations == activations


def test_command_line_exports_a_mixed_precision_model(tmp_path, capsys):
    from tfprune import cli

    _net("mixed_float16").save(tmp_path / "mixed.keras")
    argv = ["export", tmp_path / "mixed.keras", "-o", tmp_path / "m.tflite", "--quantize", "none"]
    assert cli.main([str(a) for a in argv]) == 0
    assert "(float32 activations)" in capsys.readouterr().out


def test_files_get_the_mode_of_a_normal_write(tmp_path):
    old = os.umask(0o022)
    try:
        result = export.tflite(_net(), tmp_path / "m.tflite")
        micro = export.micro(result.path, tmp_path / "c", "net")
        (tmp_path / "plain").write_bytes(b"")
    finally:
        os.umask(old)
    modes = {
        os.path.basename(p): os.stat(p).st_mode & 0o777
        for p in (result.path, micro.header, micro.source, tmp_path / "plain")
    }
    assert modes == {"m.tflite": 0o644, "net.h": 0o644, "net.cc": 0o644, "plain": 0o644}


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temporary_files_of_a_killed_run_are_removed(tmp_path):
    dead = _dead_pid()
    stale = tmp_path / f".m.tflite.tfprune-tmp-{dead}-0a1b2c"
    alive = tmp_path / f".m.tflite.tfprune-tmp-{os.getpid()}-0a1b2c"  # a concurrent writer
    other = tmp_path / f".other.tflite.tfprune-tmp-{dead}-0a1b2c"  # another target's
    for p in (stale, alive, other):
        p.write_bytes(b"x" * 100)
    stale_dir = tempfile.mkdtemp(prefix=f"tfprune-export.tfprune-tmp-{dead}-")
    export.tflite(_net(), tmp_path / "m.tflite")
    assert sorted(os.listdir(tmp_path)) == sorted(["m.tflite", alive.name, other.name])
    assert not os.path.exists(stale_dir)


def test_temporary_saved_model_is_removed_on_failure(tmp_path, monkeypatch):
    seen = []

    def failing_convert(saved_model, *args, **kwargs):
        seen.append(saved_model)
        assert os.path.isdir(saved_model)
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C during conversion

    monkeypatch.setattr(convert, "_convert", failing_convert)
    with pytest.raises(KeyboardInterrupt):
        export.tflite(_net(), tmp_path / "m.tflite")
    assert len(seen) == 1 and f".tfprune-tmp-{os.getpid()}-" in seen[0]
    assert not os.path.exists(seen[0])
    assert os.listdir(tmp_path) == []


def test_int8_request_that_gives_a_float_file_is_an_error(tmp_path, monkeypatch):
    real = convert._convert
    monkeypatch.setattr(
        convert, "_convert", lambda path, quantize, *a, **k: real(path, None, *a, **k)
    )
    with pytest.raises(RuntimeError) as info:
        export.tflite(_net(), tmp_path / "m.tflite", "int8", _X)
    assert "compute float32 tensors; nothing was written" in str(info.value)
    assert "quantize='dynamic'" in str(info.value)
    assert os.listdir(tmp_path) == []


def test_written_file_reports_its_real_activation_types(tmp_path):
    # None and int8 are checked in the mixed-precision test above.
    result = export.tflite(_net(), tmp_path / "m.tflite", "dynamic")
    assert result.activations == ("float32",)
    assert "dynamic (float32 activations)" in result.format()


_LOAD_WITHOUT_TFPRUNE = """
import sys
import keras
import numpy as np
model = keras.saving.load_model(sys.argv[1], safe_mode=True)
print("tfprune" in sys.modules, float(np.abs(model.predict(np.load(sys.argv[2]), verbose=0)
      - np.load(sys.argv[3])).max()))
"""


def _slimmed_final_model() -> keras.Model:
    """Slimming regularizer -> prune_channels -> shrink -> strip, BN statistics randomised."""
    model = tfprune.regularizers.slimming(_net(), strength=1e-3)
    bn = model.get_layer("bn")
    bn.moving_mean.assign(np.linspace(-0.5, 0.5, 4).astype("float32"))
    bn.moving_variance.assign(np.linspace(0.5, 2.0, 4).astype("float32"))
    assert isinstance(bn.gamma_regularizer, tfprune.regularizers.Slimming)
    return tfprune.strip(tfprune.shrink(tfprune.prune_channels(model, ratio=0.5)))


def test_strip_removes_every_tfprune_object():
    small = _slimmed_final_model()
    assert small.get_layer("bn").gamma_regularizer is None
    assert small.get_layer("conv").kernel.shape == (3, 3, 1, 2)
    assert "tfprune" not in json.dumps(small.get_config())


@pytest.mark.slow  # a fresh interpreter imports TensorFlow (~15 s)
def test_slimmed_shrunk_stripped_model_loads_without_tfprune(tmp_path):
    small = _slimmed_final_model()
    small.save(tmp_path / "final.keras")
    np.save(tmp_path / "x.npy", _X)
    np.save(tmp_path / "y.npy", small.predict(_X, verbose=0))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-c", _LOAD_WITHOUT_TFPRUNE, tmp_path / "final.keras",
         tmp_path / "x.npy", tmp_path / "y.npy"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "0.0"]


def test_load_model_reads_a_wrapped_model(tmp_path):
    wrapped = tfprune.wrap(_net(), sparsity=0.5)
    tfprune.PruningController(wrapped).update(0)
    wrapped.save(tmp_path / "w.keras")
    loaded = tfprune.load_model(tmp_path / "w.keras")
    assert [type(x).__name__ for x in loaded.layers] == [type(x).__name__ for x in wrapped.layers]
    np.testing.assert_array_equal(loaded.predict(_X, verbose=0), wrapped.predict(_X, verbose=0))


_AS_CONSOLE_SCRIPT = """
import sys
sys.argv = ["tfprune", *sys.argv[1:]]
from tfprune.cli import main
sys.exit(main())
"""


@pytest.mark.slow  # two fresh interpreters import TensorFlow (~30 s)
def test_command_line_keeps_native_logs_quiet(tmp_path):
    export.tflite(_net(), tmp_path / "m.tflite")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = ROOT
    ok = subprocess.run(
        [sys.executable, "-c", _AS_CONSOLE_SCRIPT, "summary", tmp_path / "m.tflite"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert ok.returncode == 0 and ok.stderr == ""
    assert "CONV_2D" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-c", _AS_CONSOLE_SCRIPT, "summary", tmp_path / "none.tflite"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr == f"tfprune summary: error: TFLite model not found: {tmp_path}/none.tflite\n"


def test_atomic_path_names_the_temporary_file_for_cleanup(tmp_path):
    with _io.atomic_path(tmp_path / "a.bin") as tmp:
        assert os.path.basename(tmp).startswith(f".a.bin.tfprune-tmp-{os.getpid()}-")
        with open(tmp, "wb") as f:
            f.write(b"data")
    assert os.listdir(tmp_path) == ["a.bin"]
