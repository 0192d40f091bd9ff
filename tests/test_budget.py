"""tfprune.fit_budget / Budget / budget.measure, and the `tfprune fit` / `micro` commands."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import tfprune
from tfprune import budget as budget_lib
from tfprune import cli, export


@pytest.fixture(scope="module")
def fitted(digits_cnn):
    model, (x_train, _), _ = digits_cnn
    before = budget_lib.measure(model, x_train, arena="estimate")
    limits = tfprune.Budget(flash=before.flash // 2, arena=int(before.arena * 0.9))
    calls = []
    small, report = tfprune.fit_budget(
        model,
        limits,
        x_train,
        step=0.25,
        fine_tune=lambda m, i: calls.append(i),
        verbose=False,
    )
    return before, limits, small, report, calls


@pytest.mark.slow  # several int8 conversions (~1-2 min on 2 shared cores)
def test_fit_budget_meets_every_limit_measured_on_the_real_file(fitted, digits_cnn, tmp_path):
    before, limits, small, report, calls = fitted
    x_train = digits_cnn[1][0]
    assert report.met == {"flash": True, "arena": True}
    assert report.after.flash <= limits.flash and report.after.arena <= limits.arena
    assert report.before.flash == before.flash and report.before.macs == before.macs
    # The returned model's int8 file is exactly the size the report says.
    result = export.tflite(
        small, tmp_path / "s.tflite", quantize="int8", representative_data=x_train[:200]
    )
    assert result.size == report.after.flash
    assert tfprune.summary(small, print_fn=None).macs == report.after.macs
    widths = {k: a for k, (_, a) in report.widths.items()}
    assert small.get_layer("conv1").filters == widths["conv1"]
    assert small.get_layer("conv2").filters == widths["conv2"]
    assert small.get_layer("fc").units == widths["fc"]
    assert calls == list(range(1, report.iterations + 1)) and report.iterations >= 1
    text = report.format()
    assert "flash" in text and "yes" in text and "NO" not in text


@pytest.mark.slow  # several int8 conversions (~1-2 min on 2 shared cores)
def test_arena_is_confirmed_in_tflm(fitted):
    report = fitted[3]
    expected = "measured by TFLite Micro" if export.tflm.available() else "estimate"
    assert report.after.arena_source == expected == report.before.arena_source


def test_unmeetable_budget_names_the_resource_and_the_gap(digits_cnn):
    model, (x_train, _), _ = digits_cnn
    with pytest.raises(
        ValueError,
        match=r"flash: [\d,]+ B at one channel per group, limit "
        r"1,000 B \([\d,]+ B over\)",
    ):
        tfprune.fit_budget(
            model, tfprune.Budget(flash=1000), x_train, arena="estimate", verbose=False
        )


def test_taylor_needs_labelled_data(digits_cnn):
    model, (x_train, _), _ = digits_cnn
    with pytest.raises(
        ValueError,
        match=r"needs labelled data: pass data=\(x, y\)\. Received: data of type ndarray",
    ):
        tfprune.fit_budget(model, tfprune.Budget(flash=1000), x_train, criterion="taylor")


@pytest.mark.slow  # several int8 conversions
def test_fit_budget_with_taylor_importance_meets_the_limits(digits_cnn):
    model, (x_train, y_train), _ = digits_cnn
    before = budget_lib.measure(model, x_train, arena="estimate")
    limits = tfprune.Budget(flash=int(before.flash * 0.6))
    small, report = tfprune.fit_budget(
        model, limits, (x_train, y_train), criterion="taylor", arena="estimate", verbose=False
    )
    assert report.met == {"flash": True} and report.after.flash <= limits.flash
    assert report.after.flash == budget_lib.measure(small, x_train, arena="estimate").flash
    assert any(b > a for b, a in report.widths.values())


def test_budget_arguments():
    with pytest.raises(ValueError, match=r"at least one limit.*Received: Budget\(\)"):
        tfprune.Budget()
    with pytest.raises(ValueError, match=r"Received: arena=-5"):
        tfprune.Budget(arena=-5)
    assert tfprune.Budget(flash=10, macs=3).limits() == {"flash": 10, "macs": 3}
    with pytest.raises(TypeError, match=r"tfprune.Budget.*Received: budget of type dict"):
        tfprune.fit_budget(None, {"flash": 1}, np.zeros((1, 2)))
    with pytest.raises(
        ValueError, match=r"`min_keep` to be a float in \[0, 1\)\. Received: min_keep=1"
    ):
        tfprune.fit_budget(None, tfprune.Budget(flash=1), np.zeros((1, 2)), min_keep=1)


@pytest.mark.parametrize("text, value", [("96KB", 98304), ("1.5MB", 1572864), ("512", 512)])
def test_cli_sizes(text, value):
    from tfprune._mcu_cli import parse_size

    assert parse_size(text) == value


@pytest.mark.slow  # several int8 conversions (~1-2 min on 2 shared cores)
def test_cli_fit_and_micro(digits_cnn, tmp_path, capsys):
    model, (x_train, y_train), _ = digits_cnn
    model.save(tmp_path / "m.keras")
    np.savez(tmp_path / "calib.npz", x=x_train[:100], y=y_train[:100])
    flash = budget_lib.measure(model, x_train[:100], arena="estimate").flash
    status = cli.main(
        [
            "fit",
            str(tmp_path / "m.keras"),
            "--flash",
            str(flash // 2),
            "--data",
            str(tmp_path / "calib.npz"),
            "-o",
            str(tmp_path / "small.keras"),
            "--step",
            "0.3",
            "--criterion",
            "loss",
        ]
    )
    out = capsys.readouterr().out
    assert status == 0 and (tmp_path / "small.keras").exists()
    assert f"Wrote {tmp_path / 'small.keras'}" in out and "yes" in out
    status = cli.main(
        [
            "fit",
            str(tmp_path / "m.keras"),
            "--data",
            str(tmp_path / "calib.npz"),
            "-o",
            str(tmp_path / "x.keras"),
        ]
    )
    assert status == 2 and "at least one limit" in capsys.readouterr().err
    np.savez(tmp_path / "x_only.npz", x=x_train[:100])
    status = cli.main(
        [
            "fit",
            str(tmp_path / "m.keras"),
            "--flash",
            "9KB",
            "--data",
            str(tmp_path / "x_only.npz"),
            "-o",
            str(tmp_path / "x.keras"),
            "--criterion",
            "loss",
        ]
    )
    assert status == 2
    assert "--criterion loss needs labels: save them as 'y' in" in capsys.readouterr().err
    export.tflite(model, tmp_path / "m.tflite", quantize="int8", representative_data=x_train[:100])
    args = ["micro", str(tmp_path / "m.tflite"), "--out", str(tmp_path / "c")]
    if export.tflm.available():
        args += ["--verify", str(tmp_path / "calib.npz")]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "c" / "m.h").exists()
    assert ("measured by TFLite Micro" in out) is export.tflm.available()


@pytest.mark.slow  # per-layer timings and several int8 conversions
def test_fit_budget_to_a_latency_limit_through_the_lookup_table(digits_cnn, tmp_path):
    from tfprune.latency_table import LatencyTable

    model, (x_train, _), _ = digits_cnn
    table = LatencyTable(tmp_path / "lut.json", runs=20)
    limit = 0.6 * table.predict(model)
    small, report = tfprune.fit_budget(
        model,
        tfprune.Budget(latency=limit),
        x_train,
        step=0.25,
        arena="estimate",
        latency_table=table,
        verbose=False,
    )
    assert report.met == {"latency": True}
    assert report.after.latency == table.predict(small) <= limit
    assert report.after.latency_source == "lookup table"
    assert "latency: LiteRT on this machine, lookup table" in report.format()


def _xnnpack_refused():
    """A 1x1 conv whose first channel is +1000 x1 - 1000 x2 on inputs with x1 == x2: its
    outputs are 0, so the output scale is set by the second channel (0.01 x1), and the
    first channel's requantization scale (input scale x filter scale / output scale) is
    far above the 256 that XNNPACK's int8 kernels accept."""
    inputs = keras.Input((4, 4, 2))
    conv = keras.layers.Conv2D(2, 1, name="c")
    model = keras.Model(inputs, conv(inputs))
    kernel = np.array([[[[1000.0, 0.01], [-1000.0, 0.0]]]], np.float32)
    conv.set_weights([kernel, np.zeros(2, np.float32)])
    x = np.repeat(np.random.default_rng(0).random((50, 4, 4, 1)), 2, axis=-1)
    return model, x.astype(np.float32)


def test_measure_does_not_need_litert_to_run_the_file(tmp_path):
    from tfprune.export import _runtime

    model, x = _xnnpack_refused()
    with pytest.raises(RuntimeError, match=r"cannot run in the LiteRT interpreter .*XNNPACK"):
        export.tflite(model, tmp_path / "a.tflite", quantize="int8", representative_data=x)
    result = export.tflite(
        model, tmp_path / "b.tflite", quantize="int8", representative_data=x, litert_check=False
    )
    ref = _runtime.interpreter((tmp_path / "b.tflite").read_bytes(), reference=True)
    inp = ref.get_input_details()[0]["quantization"][0]
    out = ref.get_output_details()[0]["quantization"][0]
    scales = [d["quantization_parameters"]["scales"] for d in ref.get_tensor_details()]
    (kernel,) = [s for s in scales if len(s) == 2 and s.max() > 1]  # the int8 kernel's
    assert (inp * kernel / out).max() > 256  # what XNNPACK refuses
    res = budget_lib.measure(model, x, arena="estimate", litert_check=False)
    assert res.flash == result.size and res.macs == 4 * 4 * 2 * 2
    with pytest.raises(RuntimeError, match=r"cannot run in the LiteRT interpreter"):
        budget_lib.measure(model, x, arena="estimate")
