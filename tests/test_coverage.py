"""Tests for benchmarks/coverage.py: the matrix steps on small graphs, isolation, the table."""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest
from conftest import load_benchmark

L = keras.layers
cov = load_benchmark("coverage")


def _tiny():
    """Residual add, BatchNorm, depthwise conv and concatenation: every group rule of main."""
    i = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", name="c1")(i)
    x = L.BatchNormalization(name="bn1")(x)
    y = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    y = L.Conv2D(8, 1, name="pw")(y)
    x = L.Add()([x, y])
    z = L.Conv2D(4, 1, name="side")(x)
    x = L.Concatenate()([x, z])
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(i, L.Dense(5, name="out")(x))


def test_run_model_on_a_hand_built_graph(monkeypatch):
    monkeypatch.setitem(cov.HUB, "tiny", _tiny)
    row = cov.run_model("tiny", latency_runs=3)
    assert {k: row[k]["ok"] for k in cov.STEPS} == dict.fromkeys(cov.STEPS, True)
    assert row["build"]["text"] == "small config, 509 params"
    assert row["randomised"] == 9  # bn1 x4, and the zero biases of c1, dw, pw, side, out
    # Half of each kernel of c1, dw, pw, side and out (222 of 444), biases kept: 222 / 477.
    assert row["wrap"]["text"] == "5 layers, 46.5% of their weights zero"
    # groups: {c1, pw, bn1, dw} (add), {side}, out (model output, frozen)
    assert row["groups"]["text"] == "2/3 groups, 70.6% of 17 channels"
    assert re.fullmatch(r"diff \d\.\de-\d\d, params x0\.\d\d", row["shrink"]["text"])
    assert float(row["shrink"]["text"].split()[1][:-1]) <= cov.TOLERANCE
    assert re.fullmatch(
        r"latency x\d+\.\d\d \(\d+\.\d\d -> \d+\.\d\d ms\); dense err \d\.\d\d, shrunk err "
        r"\d\.\d\d",
        row["int8"]["text"],
    )


def test_a_failing_step_is_one_cell(monkeypatch):
    def broken():  # nothing to prune: the only group is the model output
        i = keras.Input((4,))
        return keras.Model(i, L.Dense(2, name="logits")(i))

    monkeypatch.setitem(cov.HUB, "broken", broken)
    row = cov.run_model("broken")
    assert row["build"]["ok"] and row["groups"]["ok"] is False
    assert row["groups"]["text"] == (
        "0/1 groups, 0.0% of 2 channels; logits: its channels are a model output"
    )
    assert "shrink" not in row and "int8" not in row  # later steps need the groups


def test_build_uses_the_smallest_input_the_model_accepts(monkeypatch):
    monkeypatch.setattr(cov, "SIZES", (16, 24, 32, 75))
    model, note = cov.build("MobileNet")  # refuses inputs under 32 px
    assert note == "32 px" and model.input_shape == (None, 32, 32, 3)


def test_randomise_changes_constant_weights_only():
    i = keras.Input((4, 4, 3))
    x = L.Conv2D(2, 1, name="c")(i)
    x = L.LayerNormalization(name="ln")(x)
    model = keras.Model(i, x)
    kernel = keras.ops.convert_to_numpy(model.get_layer("c").kernel).copy()
    assert cov.randomise(model) == 3  # conv bias (0), ln gamma (1), ln beta (0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.get_layer("c").kernel), kernel)
    gamma = keras.ops.convert_to_numpy(model.get_layer("ln").gamma)
    assert np.all((gamma >= 0.5) & (gamma <= 1.5)) and gamma[0] != gamma[1]


def test_a_model_past_its_timeout_is_marked_and_the_run_goes_on():
    rows = []
    cov.run_isolated(["MobileNet", "NoSuchModel"], timeout=1, done=rows.append)
    assert [r["model"] for r in rows] == ["MobileNet", "NoSuchModel"]
    assert rows[0]["build"] == {"ok": False, "text": "timeout after 1 s of CPU time"}
    assert rows[1]["build"] == {"ok": False, "text": "timeout after 1 s of CPU time"}


def test_table_has_one_row_per_model(monkeypatch, tmp_path):
    monkeypatch.setattr(cov, "TABLE", str(tmp_path / "COVERAGE.md"))
    rows = {
        "ResNet50": {
            "model": "ResNet50",
            "date": "2026-12-01",
            "build": {"ok": True, "text": "32 px, 1 params"},
            "groups": {"ok": False, "text": "a | b"},
        },
        "BERT": {"model": "BERT", "date": "2026-12-01", "build": {"ok": False, "text": "x"}},
    }
    cov.write_table(rows)
    lines = (tmp_path / "COVERAGE.md").read_text().splitlines()
    assert lines[lines.index("| model | build | wrap | groups | shrink | int8 |") - 4] == (
        "Models: 2; passed per step: build 1/2, wrap 0/2, groups 0/2, shrink 0/2, int8 0/2. "
        "A `-` is a step not run because an earlier one failed."
    )
    missing = [n for n in cov.catalogue() if n not in rows]
    assert f"Not run yet ({len(missing)}): {', '.join(missing)}." in lines
    assert lines[-2:] == [
        "| ResNet50 | pass: 32 px, 1 params | - | **FAIL**: a / b | - | - |",
        "| BERT | **FAIL**: x | - | - | - | - |",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["MobileNet", "ResNet50", "DenseNet121", "EfficientNetB0"])
def test_applications_pass_every_step(name):
    row = cov.run_model(name)
    assert {k: row[k]["ok"] for k in cov.STEPS} == dict.fromkeys(cov.STEPS, True), row
