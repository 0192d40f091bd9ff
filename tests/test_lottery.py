"""Tests for tfprune.lottery (IMP with rewinding) and tfprune.callbacks.RewindPoint."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import tfprune
from tfprune import lottery
from tfprune.callbacks import RewindPoint

RNG = np.random.default_rng(0)
X = RNG.normal(size=(64, 16)).astype("float32")
Y = RNG.integers(0, 4, 64).astype("int32")
FIT = dict(epochs=2, batch_size=16, shuffle=False, validation_data=(X[:32], Y[:32]))
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def mlp(dropout: float = 0.0) -> keras.Model:
    keras.utils.set_random_seed(7)
    return keras.Sequential(
        [
            keras.Input((16,)),
            keras.layers.Dense(24, activation="relu", name="h1"),
            keras.layers.Dropout(dropout, name="drop"),
            keras.layers.Dense(12, activation="relu", name="h2"),
            keras.layers.Dense(4, name="out"),
        ]
    )


def search(dropout: float = 0.0, **kwargs) -> lottery.LotterySearch:
    options = dict(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss=LOSS,
        metrics=["accuracy"],
        rounds=3,
        verbose=0,
    )
    options.update(kwargs)
    return lottery.LotterySearch(mlp(dropout), **options)


def kernels(weights: dict) -> dict:
    return {name: ws[0] for name, ws in weights.items()}


@pytest.fixture(scope="module")
def layer_search():
    s = search(rate=0.2, output_rate=0.1)
    s.run(X, Y, test_data=(X, Y), **FIT)
    return s


def test_exported():
    assert tfprune.lottery is lottery
    assert "lottery" in tfprune.__all__


def test_layer_scope_masks_shrink_and_follow_the_rate(layer_search):
    sizes = {"h1/kernel": 16 * 24, "h2/kernel": 24 * 12, "out/kernel": 12 * 4}
    for r in range(4):
        masks = layer_search.masks(r)
        for key, n in sizes.items():
            rate = 0.1 if key == "out/kernel" else 0.2
            assert abs(int(masks[key].sum()) - n * (1 - rate) ** r) <= 1, (r, key)
            if r:
                prev = layer_search.masks(r - 1)[key]
                assert not np.any(masks[key] & ~prev), (r, key)
                assert masks[key].sum() < prev.sum()
        record = layer_search.history[r]
        assert record["round"] == r
        assert record["remaining"]["h1/kernel"] == masks["h1/kernel"].mean()
    assert [h["remaining_total"] for h in layer_search.history] == sorted(
        [h["remaining_total"] for h in layer_search.history], reverse=True
    )


def test_pruning_keeps_the_largest_trained_weights(layer_search):
    final = kernels(layer_search.weights(0, "final"))["h1"]
    keep = layer_search.masks(1)["h1/kernel"]
    assert np.abs(final[keep]).min() >= np.abs(final[~keep]).max()


def test_history_records_metrics_and_early_stopping(layer_search):
    record = layer_search.history[0]
    assert set(record["train"]) == {"loss", "accuracy"}
    assert set(record["test"]) == {"loss", "accuracy"}
    assert record["steps"] == 8  # 2 epochs of 64 / 16 batches
    assert record["early_stop_step"] in (4, 8)
    assert set(record["val_best"]) == {"loss", "accuracy"}


def test_global_scope_counts_and_output_rate():
    s = search(rate=0.3, output_rate=0.1, scope="global", rounds=2)
    s.run(X, Y, **FIT)
    hidden = 16 * 24 + 24 * 12
    for r in range(3):
        masks = s.masks(r)
        kept = int(masks["h1/kernel"].sum() + masks["h2/kernel"].sum())
        assert abs(kept - hidden * 0.7**r) <= 1
        assert abs(int(masks["out/kernel"].sum()) - 48 * 0.9**r) <= 1
    assert s.masks(2)["h1/kernel"].mean() != s.masks(2)["h2/kernel"].mean()


def test_late_rewinding_restores_weights_and_optimizer_state_at_step_k():
    s = search(rewind="step", rewind_step=3, rounds=2)
    s.run(X, Y, **FIT)
    # An independent run of round 0 with a RewindPoint at the same step.
    model = tfprune.wrap(mlp(), sparsity=None)
    tfprune.PruningController(model)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss=LOSS)
    keras.utils.set_random_seed(0)
    point = RewindPoint(step=3)
    model.fit(X, Y, epochs=2, batch_size=16, shuffle=False, verbose=0, callbacks=[point])
    assert point.snapshot_step == 3
    point.restore(model, optimizer_state=False)
    snapshot = {la.name: la.layer.get_weights() for la in tfprune.controller.prunable_layers(model)}
    initial = {layer.name: layer.get_weights() for layer in mlp().layers}
    assert not np.array_equal(snapshot["h1"][0], initial["h1"][0])
    for r in (1, 2):
        start, masks = s.weights(r, "start"), s.masks(r)
        for name in ("h1", "h2", "out"):
            keep = masks[f"{name}/kernel"]
            np.testing.assert_array_equal(start[name][0][keep], snapshot[name][0][keep])
            assert np.all(start[name][0][~keep] == 0)
            np.testing.assert_array_equal(start[name][1], snapshot[name][1])
    ticket = s.ticket()
    assert int(ticket.optimizer_variables[0]) == 3  # optimizer iterations
    for a, b in zip(ticket.optimizer_variables, point.optimizer_variables):
        np.testing.assert_array_equal(a, b)
    # The schedule position is restored too: round 1 starts at the optimizer's step 3.
    assert s.history[1]["steps"] == 8


def test_init_rewinding_returns_to_the_initial_weights(layer_search):
    initial = {layer.name: layer.get_weights() for layer in mlp().layers}
    start = layer_search.weights(2, "start")
    for name in ("h1", "h2", "out"):
        keep = layer_search.masks(2)[f"{name}/kernel"]
        np.testing.assert_array_equal(start[name][0], np.where(keep, initial[name][0], 0))
        np.testing.assert_array_equal(start[name][1], initial[name][1])


def test_learning_rate_rewinding_keeps_weights_and_restarts_the_schedule():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=2, decay_rate=0.5)
    s = search(optimizer=keras.optimizers.SGD(schedule), rewind="lr", rounds=2)
    s.run(X, Y, **FIT)
    initial = float(schedule(0))  # 0.1 in float32
    assert [h["lr_start"] for h in s.history] == [initial] * 3
    assert float(schedule(8)) < 0.1
    final1, start2, masks2 = s.weights(1, "final"), s.weights(2, "start"), s.masks(2)
    for name in ("h1", "h2", "out"):
        keep = masks2[f"{name}/kernel"]
        np.testing.assert_array_equal(start2[name][0], np.where(keep, final1[name][0], 0))
        np.testing.assert_array_equal(start2[name][1], final1[name][1])


def test_step_rewinding_does_not_restart_the_schedule():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=2, decay_rate=0.5)
    s = search(optimizer=keras.optimizers.SGD(schedule), rewind="step", rewind_step=4, rounds=1)
    s.run(X, Y, **FIT)
    assert s.history[0]["lr_start"] == float(schedule(0))
    assert s.history[1]["lr_start"] == float(schedule(4))


class _Interrupt(keras.callbacks.Callback):
    def __init__(self, at: int):
        super().__init__()
        self.at, self.calls = at, 0

    def on_train_begin(self, logs=None):
        if self.calls == self.at:
            raise KeyboardInterrupt
        self.calls += 1


@pytest.mark.parametrize("dropout", [pytest.param(0.0, marks=pytest.mark.slow), 0.3])
def test_resume_equals_an_uninterrupted_run(tmp_path, dropout):
    full = search(dropout, directory=tmp_path / "full")
    full.run(X, Y, test_data=(X, Y), **FIT)
    first = search(dropout, directory=tmp_path / "cut")
    with pytest.raises(KeyboardInterrupt):
        first.run(X, Y, test_data=(X, Y), callbacks=[_Interrupt(2)], **FIT)
    assert len(first.history) == 2
    resumed = search(dropout, directory=tmp_path / "cut")
    resumed.run(X, Y, test_data=(X, Y), **FIT)
    assert len(resumed.history) == 4
    for r in range(4):
        for key, mask in full.masks(r).items():
            np.testing.assert_array_equal(resumed.masks(r)[key], mask)
    for name, ws in full.weights(3, "final").items():
        for a, b in zip(ws, resumed.weights(3, "final")[name]):
            np.testing.assert_array_equal(a, b)
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in full.history]
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in resumed.history] == strip
    assert not list((tmp_path / "cut").glob("*.tmp"))


def test_resume_with_other_settings_raises(tmp_path):
    search(rounds=1, directory=tmp_path).run(X, Y, **FIT)
    with pytest.raises(ValueError, match="different settings"):
        search(rounds=1, rate=0.5, directory=tmp_path).run(X, Y, **FIT)


@pytest.mark.slow
def test_random_mask_control_has_the_same_counts_and_init(layer_search):
    s = search(control="random_mask", reference=layer_search, rounds=3)
    s.run(X, Y, **FIT)
    initial = {layer.name: layer.get_weights() for layer in mlp().layers}
    for r in range(1, 4):
        ref, masks = layer_search.masks(r), s.masks(r)
        for key in ref:
            assert masks[key].sum() == ref[key].sum()
            assert not np.any(masks[key] & ~s.masks(r - 1)[key])
        assert not np.array_equal(masks["h1/kernel"], ref["h1/kernel"])
        start = s.weights(r, "start")
        np.testing.assert_array_equal(
            start["h1"][0], np.where(masks["h1/kernel"], initial["h1"][0], 0)
        )


@pytest.mark.slow
def test_reinit_control_has_the_same_masks_and_new_weights(layer_search):
    s = search(control="reinit", reference=layer_search, rounds=3)
    s.run(X, Y, **FIT)
    for r in range(4):
        for key, mask in layer_search.masks(r).items():
            np.testing.assert_array_equal(s.masks(r)[key], mask)
        mine, ref = kernels(s.weights(r, "start")), kernels(layer_search.weights(r, "start"))
        keep = s.masks(r)["h1/kernel"]
        assert np.all(mine["h1"][~keep] == 0)
        assert not np.any(mine["h1"][keep] == ref["h1"][keep])
    assert not np.array_equal(kernels(s.weights(1, "start"))["h1"], mine["h1"])


def test_controls_need_a_reference():
    with pytest.raises(ValueError, match="needs the ticket search"):
        search(control="reinit")
    with pytest.raises(ValueError, match=r"Received: control='shuffle'"):
        search(control="shuffle")
    with pytest.raises(ValueError, match=r"Received: rewind='late'"):
        search(rewind="late")
    with pytest.raises(ValueError, match="only used with rewind='step'"):
        search(rewind_step=5)


def test_ticket_save_load_apply_round_trip(layer_search, tmp_path):
    ticket = layer_search.ticket(2)
    assert ticket.remaining["h1/kernel"] == pytest.approx(246 / 384)
    assert ticket.sparsity["out/kernel"] == pytest.approx(1 - 39 / 48)
    path = tmp_path / "ticket.npz"
    ticket.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["ticket.npz"]
    loaded = lottery.Ticket.load(path)
    assert loaded.round == 2 and loaded.optimizer_variables == []
    assert loaded.masks.keys() == ticket.masks.keys()
    for key in ticket.masks:
        np.testing.assert_array_equal(loaded.masks[key], ticket.masks[key])
    model = loaded.apply(mlp())
    for layer in tfprune.controller.prunable_layers(model):
        keep = keras.ops.convert_to_numpy(layer.target("kernel").mask)
        np.testing.assert_array_equal(keep, ticket.masks[f"{layer.name}/kernel"])
        for a, b in zip(layer.layer.get_weights(), ticket.weights[layer.name]):
            np.testing.assert_array_equal(a, b)
    assert int(np.sum(model.layers[0].layer.kernel.numpy() == 0)) >= 384 - 246
    other = keras.Sequential([keras.Input((16,)), keras.layers.Dense(4, name="x")])
    with pytest.raises(ValueError, match="does not have"):
        loaded.apply(other)
    (tmp_path / "bad.npz").write_bytes(b"")
    np.savez(tmp_path / "bad.npz", a=np.zeros(2))
    with pytest.raises(ValueError, match="not a tfprune lottery ticket"):
        lottery.Ticket.load(tmp_path / "bad.npz")


def test_rewind_point_callback():
    model = tfprune.wrap(mlp(), sparsity=None)
    tfprune.PruningController(model)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=LOSS)
    initial = [np.array(keras.ops.convert_to_numpy(v)) for v in model.weights]
    initial_kernel = model.layers[0].layer.kernel.numpy()
    at0, at3 = RewindPoint(0), RewindPoint(3)
    model.fit(X, Y, epochs=1, batch_size=16, verbose=0, callbacks=[at0, at3])  # 4 steps
    assert at0.snapshot_step == 0 and at0.optimizer_variables == []
    assert at3.snapshot_step == 3 and int(at3.optimizer_variables[0]) == 3
    assert sum(a is None for a in at0.weights) == 3 * 3  # step, mask, threshold per layer
    for a, b in zip(at0.weights, initial):
        if a is not None:
            np.testing.assert_array_equal(a, b)
    assert not np.array_equal(model.layers[0].layer.kernel.numpy(), initial_kernel)
    keep = np.zeros((16, 24), bool)
    keep[:8] = True
    model.layers[0].set_mask("kernel", keep)
    at0.restore(model)
    kernel = model.layers[0].layer.kernel.numpy()
    np.testing.assert_array_equal(kernel, np.where(keep, initial_kernel, 0))
    with pytest.raises(ValueError, match=r"Received: step=-1"):
        RewindPoint(-1)
    with pytest.raises(RuntimeError, match="no snapshot yet"):
        RewindPoint(3).restore(model)


def test_rewind_point_warns_when_never_reached():
    model = tfprune.wrap(mlp(), sparsity=None)
    tfprune.PruningController(model)
    model.compile(optimizer="sgd", loss=LOSS)
    with pytest.warns(UserWarning, match="never reached"):
        model.fit(X, Y, epochs=1, batch_size=32, verbose=0, callbacks=[RewindPoint(9)])


def test_find_ticket_and_verbose_line(capsys):
    ticket = lottery.find_ticket(
        mlp(), "sgd", LOSS, x=X, y=Y, rounds=1, rate=0.5, output_rate=None, **FIT
    )
    assert ticket.round == 1
    assert ticket.remaining == {"h1/kernel": 0.5, "h2/kernel": 0.5, "out/kernel": 0.5}
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith("round  1/1 - remaining  50.00%")
