"""Schedules: formula values, update steps, conversion of tfmot schedules, serialization."""

from __future__ import annotations

import keras
import pytest

from tfprune import schedules


@pytest.mark.parametrize("step", [0, 1, 250, 500, 999, 1000, 5000])
def test_polynomial_decay_equals_zhu_gupta_formula(step):
    s_i, s_f, t0, t1, power = 0.1, 0.9, 0, 1000, 3
    schedule = schedules.PolynomialDecay(s_i, s_f, t0, t1, power=power, frequency=100)
    t = min(max(step, t0), t1)
    expected = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0)) ** power
    assert schedule.sparsity(step) == pytest.approx(expected, abs=1e-12)


def test_polynomial_decay_with_offset_begin():
    schedule = schedules.PolynomialDecay(0.0, 0.8, begin_step=100, end_step=300, power=1)
    assert schedule(200) == (True, pytest.approx(0.4))
    assert schedule(50) == (False, 0.0)
    assert schedule(1000)[1] == pytest.approx(0.8)


def test_updates_only_at_frequency_steps_within_range():
    schedule = schedules.PolynomialDecay(0.0, 0.5, begin_step=10, end_step=50, frequency=20)
    assert [t for t in range(100) if schedule.should_prune(t)] == [10, 30, 50]
    constant = schedules.ConstantSparsity(0.5, begin_step=5, end_step=None, frequency=7)
    assert [t for t in range(30) if constant.should_prune(t)] == [5, 12, 19, 26]
    bounded = schedules.ConstantSparsity(0.5, begin_step=0, end_step=10, frequency=5)
    assert [t for t in range(30) if bounded.should_prune(t)] == [0, 5, 10]


def test_next_update_catches_up_on_skipped_steps():
    schedule = schedules.ConstantSparsity(0.5, frequency=10)
    assert schedules.next_update(schedule, 8, 12) == (True, 0.5)
    assert schedules.next_update(schedule, 12, 15) == (False, 0.0)
    assert schedules.next_update(schedule, None, 15) == (False, 0.0)
    poly = schedules.PolynomialDecay(0.0, 0.8, 0, 40, power=1, frequency=10)
    # Steps 10 and 20 were skipped; the latest (20) wins.
    assert schedules.next_update(poly, 5, 23) == (True, pytest.approx(0.4))


@pytest.mark.parametrize(
    ("schedule", "config"),
    [
        (
            schedules.ConstantSparsity(0.3, 2, 40, 4),
            {"target": 0.3, "begin_step": 2, "end_step": 40, "frequency": 4},
        ),
        (
            schedules.PolynomialDecay(0.1, 0.7, 0, 90, 2, 10),
            {
                "initial": 0.1,
                "final": 0.7,
                "begin_step": 0,
                "end_step": 90,
                "power": 2,
                "frequency": 10,
            },
        ),
    ],
)
def test_config_is_the_constructor(schedule, config):
    assert schedule.get_config() == config
    assert type(schedule)(**config) == schedule
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert restored == schedule


def test_get_accepts_floats_schedules_callables_and_dicts():
    assert schedules.get(0.25) == schedules.ConstantSparsity(0.25)
    assert schedules.get(None) is None
    poly = schedules.PolynomialDecay(0.0, 0.5, 0, 10)
    assert schedules.get(poly) is poly
    assert schedules.get(keras.saving.serialize_keras_object(poly)) == poly

    def foreign(step):
        return step % 2 == 0, 0.5

    assert schedules.get(foreign) is foreign


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target": 1.0}, r"\[0, 1\).*Received: target=1.0"),
        ({"target": -0.1}, r"Received: target=-0.1"),
        ({"target": 0.5, "frequency": 0}, "Received: frequency=0"),
        ({"target": 0.5, "begin_step": -1}, "Received: begin_step=-1"),
        ({"target": 0.5, "begin_step": 5, "end_step": 2}, "end_step=2"),
    ],
)
def test_constant_sparsity_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        schedules.ConstantSparsity(**kwargs)


def test_bad_sparsity_values():
    with pytest.raises(ValueError, match=r"Received: sparsity=1.5"):
        schedules.get(1.5)
    with pytest.raises(TypeError, match="Received: sparsity='half'"):
        schedules.get("half")
    with pytest.raises(TypeError, match="Received: target=True"):
        schedules.ConstantSparsity(True)
    with pytest.raises(ValueError, match=r"end_step.*> `begin_step`"):
        schedules.PolynomialDecay(0.0, 0.5, 10, 10)


def test_tfmot_schedules_convert_exactly():
    import tensorflow_model_optimization as tfmot

    poly = tfmot.sparsity.keras.PolynomialDecay(0.1, 0.8, 0, 200, power=3, frequency=20)
    const = tfmot.sparsity.keras.ConstantSparsity(0.6, 10, frequency=5)
    assert schedules.get(poly) == schedules.PolynomialDecay(0.1, 0.8, 0, 200, 3.0, 20)
    assert schedules.get(const) == schedules.ConstantSparsity(0.6, 10, None, 5)
    for step in (0, 20, 35, 100, 200, 400):
        should, value = schedules.evaluate(poly, step)
        assert (should, pytest.approx(value, abs=1e-6)) == schedules.get(poly)(step)
