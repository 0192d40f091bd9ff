"""One-shot pruning: SparseGPT, Wanda, magnitude/LAMP, the matrix views and `tfprune.oneshot`."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import small_cnn, toy_data

import tfprune
from tfprune import allocation
from tfprune.oneshot import solvers, views
from tfprune.wrapper import prunable_layers


def _dense_model(w: np.ndarray, name: str = "d") -> keras.Model:
    """A Sequential model of one bias-free Dense layer holding kernel `w` (in, out)."""
    model = keras.Sequential(
        [keras.Input((w.shape[0],)), keras.layers.Dense(w.shape[1], use_bias=False, name=name)]
    )
    model.layers[0].set_weights([w.astype("float32")])
    return model


def _kernel_and_mask(pruned: keras.Model, name: str = "d", mask: str = "kernel"):
    layer = pruned.get_layer(name)
    target = layer.target(mask)
    return (
        keras.ops.convert_to_numpy(target.variable).astype(np.float64),
        keras.ops.convert_to_numpy(target.mask),
    )


def _correlated(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)) @ rng.normal(size=(d, d))).astype("float32")


# --- Wanda -----------------------------------------------------------------------------


def test_wanda_mask_equals_hand_computation():
    # Column norms ||x_j||_2 = (1, 10, 2, 0.5) from a hand-made X (two examples per column).
    x = np.array([[1, 6, 0, 0.3], [0, 8, 2, 0.4]], np.float32)
    w = np.array([[4.0, 0.5], [0.3, -1.0], [-1.0, 2.0], [5.0, 3.0]])  # (in=4, out=2)
    # Scores |w| * norm per output row (column of the kernel):
    # out 0: 4, 3, 2, 2.5  -> prune inputs 2 and 3;  out 1: 0.5, 10, 4, 1.5 -> prune 0 and 3.
    pruned = tfprune.oneshot(_dense_model(w), x, sparsity=0.5, method="wanda")
    kernel, mask = _kernel_and_mask(pruned)
    expected = np.array([[1, 0], [1, 1], [0, 1], [0, 0]], bool)
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(kernel, np.where(expected, w, 0).astype(np.float32))


def test_wanda_n_of_m_prunes_m_lowest_of_each_group():
    w = np.array([[[3.0, 1.0, 2.0, 4.0, 1.0, 1.0, 5.0, 0.1]]])
    sq_norms = np.array([[1.0, 4.0, 1.0, 1.0, 9.0, 1.0, 1.0, 100.0]])
    # scores 3, 2, 2, 4 | 3, 1, 5, 1 -> group 1 prunes positions 1, 2 (tie: earlier first);
    # group 2 prunes 5 and 7 (tie at 1: the earlier, 5, first; then 7).
    keep = solvers.wanda_keep(w, sq_norms, 0.0, n_of_m=(2, 4))
    np.testing.assert_array_equal(keep, [[[1, 0, 0, 1, 1, 0, 1, 0]]])


# --- SparseGPT ---------------------------------------------------------------------------


def _damped_hessian(x: np.ndarray, damping: float = 0.01) -> np.ndarray:
    h = x.astype(np.float64).T @ x.astype(np.float64)
    return h + damping * np.mean(np.diag(h)) * np.eye(h.shape[0])


def test_sparsegpt_equals_obs_closed_form_for_one_weight():
    x = _correlated(64, 4)
    w = np.array([0.05, 1.0, -2.0, 1.5])
    pruned = tfprune.oneshot(_dense_model(w[:, None]), x, sparsity=0.25)
    kernel, mask = _kernel_and_mask(pruned)
    np.testing.assert_array_equal(mask[:, 0], [False, True, True, True])
    # OBS: w' = w - w_q / [H^-1]_qq * H^-1_:q, q = 0.
    hinv = np.linalg.inv(_damped_hessian(x))
    expected = w - w[0] / hinv[0, 0] * hinv[:, 0]
    np.testing.assert_allclose(kernel[:, 0], expected, rtol=1e-5, atol=1e-6)
    assert kernel[0, 0] == 0.0


def test_sparsegpt_after_fixed_columns_equals_obs_on_the_remaining_ones():
    # SparseGPT fixes the columns left of the pruned weight q = 2; the others (2, 3) solve OBS
    # with the Hessian restricted to them.
    x = _correlated(64, 4, seed=1)
    w = np.array([1.0, -2.0, 0.05, 1.5])
    new, keep = solvers.sparsegpt(w[None, None], (x.T @ x)[None].astype(np.float64), 0.25)
    np.testing.assert_array_equal(keep[0, 0], [True, True, False, True])
    free = np.linalg.inv(_damped_hessian(x)[2:, 2:])
    expected = w.copy()
    expected[2:] = w[2:] - w[2] / free[0, 0] * free[:, 0]
    np.testing.assert_allclose(new[0, 0], expected, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("granularity", ["weight", "2:4"])
def test_sparsegpt_reconstructs_better_than_wanda_and_magnitude(granularity):
    # Correlated inputs whose features differ in scale, as activations of trained networks.
    rng = np.random.default_rng(0)
    mix = np.eye(32) + 0.3 * rng.normal(size=(32, 32))
    x = (rng.normal(size=(256, 32)) @ mix * np.exp(rng.normal(size=32))).astype("float32")
    w = rng.normal(size=(32, 8))
    errors = {}
    for method in ("sparsegpt", "wanda", "magnitude"):
        pruned = tfprune.oneshot(_dense_model(w), x, 0.5, method, granularity)
        kernel, mask = _kernel_and_mask(pruned)
        assert np.count_nonzero(~mask) == 128
        errors[method] = np.linalg.norm(x @ w - x @ kernel)
        if method == "sparsegpt":  # the update beats the same mask without it
            errors["sparsegpt mask alone"] = np.linalg.norm(x @ w - x @ np.where(mask, w, 0))
    assert errors["sparsegpt"] < errors["sparsegpt mask alone"]
    assert errors["sparsegpt"] < errors["wanda"] < errors["magnitude"]


def test_sparsegpt_blocks_prune_exactly_round_s_n():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(50, 7))
    new, keep = solvers.sparsegpt(rng.normal(size=(1, 3, 7)), (x.T @ x)[None], 0.5, block_size=3)
    # 21 weights, blocks of 9, 9 and 3: 5 + 4 + 2 = round(0.5 * 21) = 11 pruned.
    assert solvers.block_counts(0.5, [9, 9, 3]) == [5, 4, 2]
    assert np.count_nonzero(~keep) == 11
    assert np.all(new[~keep] == 0)


def test_sparsegpt_is_wanda_free_of_dead_inputs():
    # An input that is always zero gives no information: its weights are pruned first.
    x = np.random.default_rng(5).normal(size=(40, 4))
    x[:, 1] = 0
    _, keep = solvers.sparsegpt(np.ones((1, 2, 4)), (x.T @ x)[None], 0.25)
    np.testing.assert_array_equal(keep[0], [[1, 0, 1, 1], [1, 0, 1, 1]])


# --- N:M patterns ------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["sparsegpt", "wanda", "magnitude"])
@pytest.mark.parametrize(("m", "n"), [(2, 4), (1, 4), (4, 8)])
def test_n_of_m_patterns_are_exact_along_input_channels(method, m, n):
    inputs = keras.Input((6, 6, 8))
    y = keras.layers.Conv2D(8, 3, name="c")(inputs)
    y = keras.layers.Flatten()(y)
    model = keras.Model(inputs, keras.layers.Dense(16, name="d")(y))
    x = np.random.default_rng(6).normal(size=(32, 6, 6, 8)).astype("float32")
    pruned = tfprune.oneshot(model, x, method=method, granularity=f"{m}:{n}")
    conv_kernel, conv_mask = _kernel_and_mask(pruned, "c")
    groups = np.moveaxis(conv_mask, 2, -1).reshape(-1, n)  # groups along input channels
    np.testing.assert_array_equal((~groups).sum(axis=1), np.full(len(groups), m))
    dense_groups = np.moveaxis(_kernel_and_mask(pruned, "d")[1], 0, -1).reshape(-1, n)
    np.testing.assert_array_equal((~dense_groups).sum(axis=1), np.full(len(dense_groups), m))
    assert np.all(conv_kernel[~conv_mask] == 0)


# --- LAMP --------------------------------------------------------------------------------


def test_lamp_scores_equal_hand_computation():
    # Sorted squares 1, 4, 9 (positions 2, 0, 1): 1/14, 4/13, 9/9.
    np.testing.assert_allclose(allocation.lamp(np.array([2.0, 3.0, 1.0])), [4 / 13, 1.0, 1 / 14])
    np.testing.assert_array_equal(allocation.lamp(np.array([0.0, 0.0])), [0.0, 0.0])


def test_lamp_scope_ranks_lamp_scores_globally():
    # Layer a: |w| = 1, 2, 3, 4 -> LAMP 1/30, 4/29, 9/25, 1; layer b: 10, 20 -> 100/500, 1.
    # Pruning 3 of 6: 1/30, 4/29, then 100/500 = 0.2 (layer b's 10) before 9/25 = 0.36;
    # a global ranking of raw magnitudes would prune 1, 2, 3 of layer a instead.
    model = keras.Sequential(
        [
            keras.Input((1,)),
            keras.layers.Dense(4, use_bias=False, name="a"),
            keras.layers.Dense(1, use_bias=False, name="b"),
        ]
    )
    model.get_layer("a").set_weights([np.array([[1.0, -2.0, 3.0, 4.0]], np.float32)])
    model.get_layer("b").set_weights([np.array([[10.0], [20.0], [0.0], [0.0]], np.float32)[:4]])
    pruned = tfprune.oneshot(model, method="magnitude", sparsity=0.5, scope="lamp")
    np.testing.assert_array_equal(_kernel_and_mask(pruned, "a")[1], [[0, 0, 1, 1]])
    # Layer b has 4 weights: 10, 20, 0, 0 -> LAMP 0, 0, 0.2, 1: two zeros go first.
    np.testing.assert_array_equal(_kernel_and_mask(pruned, "b")[1][:, 0], [1, 1, 0, 0])


def test_lamp_scope_drives_wrap_schedules():
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(4, use_bias=False, name="a")])
    model.get_layer("a").set_weights([np.array([[1.0, -2.0, 3.0, 4.0]], np.float32)])
    wrapped = tfprune.wrap(model, sparsity=0.5, scope="lamp")
    tfprune.PruningController(wrapped).update(0)
    np.testing.assert_array_equal(_kernel_and_mask(wrapped, "a")[1], [[0, 0, 1, 1]])


def test_lamp_scope_refuses_channel_granularity():
    with pytest.raises(ValueError, match=r"Received: scope='lamp', granularity='channel'"):
        tfprune.Prunable(keras.layers.Dense(4), 0.5, granularity="channel", scope="lamp")


# --- matrix views ------------------------------------------------------------------------


def _conv_cases():
    rng = np.random.default_rng(7)
    L = keras.layers
    return [
        (L.Conv1D(4, 3, padding="causal", dilation_rate=2, use_bias=False), (9, 3)),
        (L.Conv2D(4, 3, strides=2, padding="same", use_bias=False), (7, 8, 3)),
        (L.Conv2D(4, (2, 3), dilation_rate=(2, 1), use_bias=False), (7, 8, 3)),
        (L.Conv3D(2, 2, padding="same", use_bias=False), (4, 5, 3, 2)),
        (L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", use_bias=False), (6, 6, 3)),
        (L.DepthwiseConv1D(3, strides=2, use_bias=False), (9, 3)),
        (L.Dense(5, use_bias=False), (4, 6)),
        (L.EinsumDense("abc,cde->abde", (5, 2, 4)), (5, 6)),
        (L.EinsumDense("...b,bc->...c", 3), (2, 4)),
    ], rng


@pytest.mark.parametrize("case", range(9))
def test_views_reproduce_the_layer_output(case):
    cases, rng = _conv_cases()
    layer, shape = cases[case]
    x = rng.normal(size=(2, *shape)).astype("float32")
    y = keras.ops.convert_to_numpy(layer(x)).astype(np.float64)
    (view,) = views.views(layer)
    w = view.to_matrix(keras.ops.convert_to_numpy(layer.kernel).astype(np.float64))
    cols = view.columns([x.astype(np.float64)])  # (groups, samples, cols)
    out = np.einsum("gnc,grc->gnr", cols, w)  # per group: samples x rows
    g = out.shape[0]
    # Depthwise: output channels are (group, multiplier).
    out = np.transpose(out, (1, 0, 2)).reshape(-1, g * out.shape[-1])
    np.testing.assert_allclose(out, y.reshape(out.shape), rtol=1e-4, atol=1e-4)
    kernel = keras.ops.convert_to_numpy(layer.kernel)
    np.testing.assert_array_equal(view.from_matrix(view.to_matrix(kernel), kernel.shape), kernel)


def test_separable_views_reproduce_both_halves():
    layer = keras.layers.SeparableConv2D(4, 3, depth_multiplier=2, use_bias=False)
    x = np.random.default_rng(8).normal(size=(2, 6, 6, 3)).astype("float32")
    y = keras.ops.convert_to_numpy(layer(x)).astype(np.float64)
    depthwise, pointwise = views.views(layer)
    assert (depthwise.name, pointwise.name) == ("depthwise_kernel", "pointwise_kernel")
    cols = pointwise.columns([x])
    w = pointwise.to_matrix(keras.ops.convert_to_numpy(layer.pointwise_kernel))
    np.testing.assert_allclose(cols[0] @ w[0].T, y.reshape(-1, 4), rtol=1e-4, atol=1e-4)


# --- tfprune.oneshot ---------------------------------------------------------------------


def test_attention_projections_are_all_pruned():
    tokens = keras.Input((6, 8))
    y = keras.layers.MultiHeadAttention(2, 4, name="mha")(tokens, tokens)
    model = keras.Model(tokens, keras.layers.Dense(4, name="d")(keras.layers.Flatten()(y)))
    x = np.random.default_rng(10).normal(size=(24, 6, 8)).astype("float32")
    pruned = tfprune.oneshot(model, x, exclude=["d"])
    sp = tfprune.controller.sparsities(prunable_layers(pruned))
    kernels = ["query", "key", "value", "output"]
    assert [sp[f"mha/{k}_dense_kernel"] for k in kernels] == [0.5] * 4
    # The masks equal hand computations from each projection's inputs:
    # tests/test_oneshot_blocks.py.


def test_layers_are_pruned_in_order_on_inputs_of_the_pruned_model():
    model = small_cnn()
    x, _ = toy_data(48)
    pruned = tfprune.oneshot(model, x, sparsity=0.5)
    sp = tfprune.controller.sparsities(prunable_layers(pruned))
    assert sp == {
        "c1/kernel": 0.5,
        "c2/kernel": 0.5,
        "d1/kernel": 0.5,
        "out/kernel": 0.5,
        "global": 0.5,
    }
    # Layer d1 was solved on the inputs that the model with c1 and c2 pruned computes.
    stripped = tfprune.strip(pruned)
    features = keras.Model(stripped.input, stripped.get_layer("d1").input)(x)
    original = keras.ops.convert_to_numpy(model.get_layer("d1").kernel).T[None]
    h = keras.ops.convert_to_numpy(features).astype(np.float64)
    expected, keep = solvers.sparsegpt(original, (h.T @ h)[None], 0.5)
    kernel, mask = _kernel_and_mask(pruned, "d1")
    np.testing.assert_array_equal(mask.T, keep[0])
    # oneshot sums float32 products of batches of 32 in float64; here float64 at once.
    np.testing.assert_allclose(kernel.T, expected[0], atol=1e-4)
    np.testing.assert_allclose(
        stripped.predict(x, verbose=0), pruned.predict(x, verbose=0), atol=1e-6
    )


def test_calibration_data_forms_give_the_same_masks():
    model = small_cnn()
    x, y = toy_data(40)

    def masks(data):
        pruned = tfprune.oneshot(model, data, method="wanda", batch_size=16)
        return [
            keras.ops.convert_to_numpy(t.mask) for p in prunable_layers(pruned) for t in p.targets
        ]

    reference = masks(x)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    generator = ((x[i : i + 10], y[i : i + 10]) for i in range(0, 40, 10))
    for data in ((x, y), dataset, generator):
        for a, b in zip(reference, masks(data)):
            np.testing.assert_array_equal(a, b)


def test_fine_tuning_keeps_the_one_shot_masks():
    model = small_cnn()
    x, y = toy_data(32)
    pruned = tfprune.oneshot(model, x, sparsity=0.5, exclude=["out"])
    before = {p.name: _kernel_and_mask(pruned, p.name) for p in prunable_layers(pruned)}
    pruned.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        run_eagerly=True,  # two steps: cheaper than tracing
    )
    pruned.fit(
        x, y, epochs=1, batch_size=16, verbose=0, callbacks=[tfprune.callbacks.UpdateMasks()]
    )
    for name, (old_kernel, old_mask) in before.items():
        kernel, mask = _kernel_and_mask(pruned, name)
        np.testing.assert_array_equal(mask, old_mask)
        assert np.all(kernel[~mask] == 0)
        assert np.all(kernel[mask] != old_kernel[mask])  # the kept weights were trained


def test_unsupported_layers_are_left_dense_with_a_warning():
    inputs = keras.Input((4, 4, 2))
    y = keras.layers.Conv2DTranspose(2, 2, name="up")(inputs)
    y = keras.layers.Conv2D(4, 3, groups=2, name="grouped")(y)
    y = keras.layers.Flatten()(y)
    model = keras.Model(inputs, keras.layers.Dense(4, name="d")(y))
    x = np.random.default_rng(9).normal(size=(16, 4, 4, 2)).astype("float32")
    with pytest.warns(
        UserWarning, match=r"left these layers dense: up \(Conv2DTranspose\), grouped \(Conv2D\)\."
    ):
        pruned = tfprune.oneshot(model, x)
    sp = tfprune.controller.sparsities(prunable_layers(pruned))
    assert (sp["up/kernel"], sp["grouped/kernel"], sp["d/kernel"]) == (0.0, 0.0, 0.5)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"method": "obs"}, ValueError, r"`method` to be one of .* Received: method='obs'"),
        ({"granularity": "channel"}, ValueError, r"Received: granularity='channel'"),
        ({"scope": "global"}, ValueError, r"use method='magnitude' .* Received: scope='global'"),
        ({"sparsity": 1.0}, ValueError, r"sparsity"),
        ({"granularity": "2:4", "block_size": 6}, ValueError, r"multiple of n=4 .* block_size=6"),
        ({"data": None}, ValueError, r"need calibration inputs.*Received: data=None"),
        ({"data": np.zeros((0, 8, 8, 1), np.float32)}, ValueError, r"no calibration examples"),
        ({"data": 3}, TypeError, r"Received: data of type int"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    kwargs = {"data": toy_data(8)[0], **kwargs}
    with pytest.raises(error, match=match):
        tfprune.oneshot(small_cnn(), **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sparsegpt", "wanda"])
def test_mobilenet_v2_is_pruned_in_every_layer_and_strips_exactly(method):
    model = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10
    )
    rng = np.random.default_rng(11)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(size=layer.moving_mean.shape) * 0.1)
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, size=layer.moving_variance.shape))
    x = rng.normal(size=(32, 32, 32, 3)).astype("float32")
    pruned = tfprune.oneshot(model, x, sparsity=0.5, method=method)
    sp = tfprune.controller.sparsities(prunable_layers(pruned))
    assert len(sp) == 54  # 53 kernels (35 convolutions, 17 depthwise, the classifier) + global
    for layer in prunable_layers(pruned):
        (view,) = views.views(layer.layer)
        kernel = keras.ops.convert_to_numpy(layer.layer.kernel)
        # SparseGPT prunes round(s * n) of the kernel, Wanda round(s * cols) of every row.
        n = kernel.size if method == "sparsegpt" else view.to_matrix(kernel).shape[-1]
        assert sp[f"{layer.name}/kernel"] == allocation.count(0.5, n) / n
    stripped = tfprune.strip(pruned)
    np.testing.assert_allclose(
        stripped.predict(x, verbose=0), pruned.predict(x, verbose=0), rtol=1e-6, atol=1e-6
    )


def test_a_single_layer_is_refused():
    with pytest.raises(TypeError, match=r"Sequential or functional model .* type Dense"):
        tfprune.oneshot(keras.layers.Dense(4), np.zeros((4, 3), np.float32))
