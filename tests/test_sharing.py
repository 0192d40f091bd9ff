"""Weight sharing (Deep Compression): k-means, trained centroids, strip, saving, int8 export,
Huffman coding and the report."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import compile_model, small_cnn, toy_data

import tfprune
from tfprune import clustering, huffman, layers
from tfprune.deep_compression import int8_values_per_channel

KERNELS = ["c1", "c2", "d1", "out"]


def _pruned_cnn(sparsity: float = 0.6) -> keras.Model:
    """`small_cnn` with `sparsity` of every kernel pruned by magnitude, still wrapped."""
    pruned = tfprune.wrap(small_cnn(), sparsity=tfprune.schedules.ConstantSparsity(sparsity))
    tfprune.PruningController(pruned).update(0)
    return pruned


def _values_per_channel(layer: keras.layers.Layer) -> list[int]:
    kernel = keras.ops.convert_to_numpy(layer.kernel)
    spec = layers.lookup(layer).weight_specs(layer)[0]
    return [len(np.unique(row)) for row in clustering.rows(kernel, spec, per_channel=True)]


# --- k-means -------------------------------------------------------------------------


def test_kmeans_hand_example_keeps_zeros_out_and_moves_empty_centroids():
    # linear init over the nonzeros [1, 10] with 4 - 1 = 3 centroids: 1, 5.5, 10. 5.5 gets
    # no member and moves to the value farthest from its centroid (1.5 or 9.5, all 0.5
    # away: the first, 1); then {1}, {2}, {9, 10}
    table, index = clustering.kmeans(np.array([0.0, 1.0, 2.0, 0.0, 9.0, 10.0]), clusters=4)
    np.testing.assert_array_equal(table, np.array([1.0, 2.0, 9.5, 0.0], np.float32))
    np.testing.assert_array_equal(index, [-1, 0, 1, -1, 2, 2])


def test_kmeans_without_zeros_uses_every_entry():
    table, index = clustering.kmeans(np.array([4.0, 1.0, 2.0, 3.0]), clusters=2)
    np.testing.assert_array_equal(table, np.array([1.5, 3.5], np.float32))
    np.testing.assert_array_equal(index, [1, 0, 0, 1])


def test_rows_and_unrows_round_trip_a_conv_kernel_by_output_channel():
    conv = keras.layers.Conv2D(5, 3)
    conv.build((None, 8, 8, 2))
    kernel = keras.ops.convert_to_numpy(conv.kernel)
    spec = layers.lookup(conv).weight_specs(conv)[0]
    by_row = clustering.rows(kernel, spec, per_channel=True)
    assert by_row.shape == (5, 18)
    np.testing.assert_array_equal(by_row[3], kernel[..., 3].reshape(-1))
    np.testing.assert_array_equal(clustering.unrows(by_row, kernel.shape, spec, True), kernel)


# --- the layer -----------------------------------------------------------------------


def test_centroid_gradient_is_the_sum_of_its_members_gradients():
    dense = keras.layers.Dense(6)
    dense.build((None, 10))
    kernel = keras.ops.convert_to_numpy(dense.kernel)
    kernel[np.abs(kernel) < 0.15] = 0.0
    dense.kernel.assign(kernel)
    shared = tfprune.Clustered(dense, bits=2)
    x = tf.constant(np.random.default_rng(0).normal(size=(4, 10)), tf.float32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(shared(x) ** 2)
    (target,) = shared.shared
    got = tape.gradient(loss, target.centroids.value)

    plain = tfprune.strip(shared)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(plain(x) ** 2)
    weight_grad = tape.gradient(loss, plain.kernel.value).numpy()
    index = keras.ops.convert_to_numpy(target.index)
    expected = np.bincount(index.reshape(-1), weights=weight_grad.reshape(-1), minlength=6 * 4 + 1)
    np.testing.assert_allclose(
        tf.convert_to_tensor(got).numpy(), expected[:-1].reshape(6, 4), rtol=1e-5, atol=1e-6
    )
    assert [v.path for v in shared.trainable_variables] == [target.centroids.path, dense.bias.path]


@pytest.fixture(scope="module")
def trained():
    """`small_cnn`, 60 % pruned, clustered at 3 bits and fine-tuned for one epoch; shared,
    don't modify. Returns `(shared, zeros, before)`: the pruned zeros of each kernel and the
    centroids before training."""
    keras.utils.set_random_seed(7)
    pruned = _pruned_cnn(0.6)
    stripped = tfprune.strip(pruned)
    zeros = {n: keras.ops.convert_to_numpy(stripped.get_layer(n).kernel) == 0 for n in KERNELS}
    shared = tfprune.cluster(pruned, bits=3)
    before = {n: shared.get_layer(n).shared[0].centroids.numpy().copy() for n in KERNELS}
    x, y = toy_data()
    compile_model(shared).fit(x, y, batch_size=16, epochs=1, verbose=0)
    return shared, zeros, before


def test_fit_trains_centroids_keeps_pruned_zeros_and_strip_has_at_most_8_values(trained):
    shared, zeros, before = trained
    assert [type(shared.get_layer(n)).__name__ for n in KERNELS] == ["Clustered"] * 4
    x, _ = toy_data()
    final = tfprune.strip(shared)
    np.testing.assert_allclose(final.predict(x, verbose=0), shared.predict(x, verbose=0), atol=1e-6)
    for name in KERNELS:
        assert not np.array_equal(shared.get_layer(name).shared[0].centroids.numpy(), before[name])
        layer = final.get_layer(name)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.kernel) == 0, zeros[name])
        counts = _values_per_channel(layer)
        assert max(counts) <= 8, (name, counts)
        if name != "c1":  # c1 has 9 weights per channel, about 4 of them kept
            assert max(counts) == 8, (name, counts)  # 7 centroids + the pruned zero
    assert not any(type(layer).__module__.startswith("tfprune") for layer in final.layers)


def test_per_tensor_clustering_has_at_most_4_values_per_kernel():
    shared = tfprune.cluster(small_cnn(), bits=2, per_channel=False, exclude=["out"])
    assert type(shared.get_layer("out")).__name__ == "Dense"
    final = tfprune.strip(shared)
    for name in ["c1", "c2", "d1"]:
        kernel = keras.ops.convert_to_numpy(final.get_layer(name).kernel)
        assert len(np.unique(kernel)) == 4, name
        assert shared.get_layer(name).shared[0].centroids.shape == (1, 4)


def test_save_and_load_with_safe_mode(trained, tmp_path):
    shared, _, _ = trained
    x, _ = toy_data()
    path = tmp_path / "shared.keras"
    shared.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), shared.predict(x, verbose=0))
    layer = loaded.get_layer("c2")
    assert (layer.bits, layer.per_channel) == (3, True)
    for a, b in zip(layer.weights, shared.get_layer("c2").weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    again = tfprune.Clustered.from_config(shared.get_layer("d1").get_config())
    assert (again.bits, again.per_channel, again.name) == (3, True, "d1")


def test_int8_export_keeps_at_most_8_values_per_channel(trained, tmp_path):
    shared, _, _ = trained
    x, _ = toy_data()
    path = tmp_path / "shared.tflite"  # exported as it is: strip and shrink inside
    tfprune.export.tflite(shared, path, quantize="int8", representative_data=x)
    found = int8_values_per_channel(path)
    assert len(found) == 4, found  # the four kernels (c1 with bn1 folded in)
    assert max(found.values()) <= 8, found
    assert max(found.values()) >= 7, found  # int8 rounding merged at most one value


# --- bad input -----------------------------------------------------------------------


def test_bad_bits_and_layers_are_refused_with_the_value_received():
    dense = keras.layers.Dense(3)
    dense.build((None, 4))
    with pytest.raises(ValueError, match=r"must be from 1 to 8 .* Received: bits=9"):
        tfprune.Clustered(dense, bits=9)
    with pytest.raises(TypeError, match=r"Received: bits='4'"):
        tfprune.cluster(small_cnn(), bits="4")
    with pytest.raises(ValueError, match=r"no weights that tfprune.Clustered can share"):
        tfprune.Clustered(keras.layers.BatchNormalization(name="bn"))
    shared = tfprune.cluster(small_cnn(), bits=2)
    with pytest.raises(ValueError, match=r"already clustered"):
        tfprune.cluster(shared)
    with pytest.raises(ValueError, match=r"not in the model: \['nope'\]"):
        tfprune.cluster(small_cnn(), exclude=["nope"])
    with pytest.raises(ValueError, match=r"found no layer to cluster .* exclude="):
        tfprune.cluster(small_cnn(), layers=["bn1"])
    with pytest.raises(TypeError, match=r"Received: model=3"):
        tfprune.cluster(3)


# --- Huffman and the report ----------------------------------------------------------


def test_huffman_hand_example():
    counts = {"a": 5, "b": 2, "c": 1, "d": 1}
    assert huffman.code_lengths(counts) == {"a": 1, "b": 2, "c": 3, "d": 3}
    assert huffman.coded_bits(counts) == 15
    assert huffman.code_lengths({"x": 7, "y": 0}) == {"x": 1}
    # equal counts: a complete tree, 2 bits each
    assert huffman.coded_bits({0: 3, 1: 3, 2: 3, 3: 3}) == 24
    with pytest.raises(ValueError, match=r"Received: counts\['b'\]=-1"):
        huffman.code_lengths({"a": 1, "b": -1})


def test_report_counts_bits_of_a_hand_made_kernel(tmp_path):
    # one output channel of 8 weights: four zeros, then 1, 1, 2, 3 -> table {0, 1, 2, 3}
    dense = keras.layers.Dense(1, use_bias=False, name="fc")
    model = keras.Sequential([keras.Input((8,)), dense])
    dense.kernel.assign(np.array([0, 0, 0, 0, 1, 1, 2, 3], np.float32).reshape(8, 1))
    file = tmp_path / "m.bin"
    file.write_bytes(b"x" * 16)
    report = tfprune.sharing_report(model, files={"file": file})
    (t,) = report.tensors
    assert (t.params, t.nonzeros, t.values, t.table_entries, t.index_bits) == (8, 4, 4, 4, 2)
    # Huffman over symbols 0 x4, 1 x2, 2 x1, 3 x1: 4*1 + 2*2 + 3 + 3 = 14 bits
    assert t.huffman_bits == 14
    assert t.lut_bits == 8 * 2 + 4 * 32
    assert t.entropy_bits == 14 + 4 * 32 + 4 * 8
    assert (report.other_params, report.float32_bytes, report.files) == (0, 32, {"file": 16})
    assert report.lut_bytes == 18  # 144 bits
    assert report.bits_per_weight == 18.0
    text = report.format()
    assert "fc/kernel" in text and "file file" in text and "2.0x vs float32" in text


def test_report_of_a_clustered_model_matches_its_tables(trained):
    shared, zeros, _ = trained
    report = tfprune.sharing_report(shared, codebook_bits=8)
    assert [t.layer for t in report.tensors] == KERNELS
    final = tfprune.strip(shared)
    widest = [max(_values_per_channel(final.get_layer(n))) for n in KERNELS]
    assert [t.values for t in report.tensors] == widest
    assert [t.index_bits for t in report.tensors] == [3, 3, 3, 3]
    assert [t.table_entries for t in report.tensors] == [
        sum(_values_per_channel(final.get_layer(n))) for n in KERNELS
    ]
    assert report.other_params == 8 + 16 + 32 + 10 + 4 * 8  # biases and bn1
    for t in report.tensors:
        assert t.nonzeros == t.params - int(zeros[t.layer].sum())
        assert t.huffman_bits < t.params * t.index_bits  # the zero's code is short
    plain = tfprune.sharing_report(small_cnn(), per_channel=False)
    assert [t.shared for t in plain.tensors] == [True, False, False, False]  # <= 256 values
    assert plain.lut_bytes > plain.float32_bytes * 0.9


@pytest.mark.backend
def test_clustered_training_on_this_backend():
    model = keras.Sequential(
        [
            keras.Input((12,)),
            keras.layers.Dense(16, activation="relu", name="a"),
            keras.layers.Dense(3, name="b"),
        ]
    )
    weights = model.get_weights()
    weights[0][np.abs(weights[0]) < 0.1] = 0.0
    model.set_weights(weights)
    shared = tfprune.cluster(model, bits=2)
    before = shared.get_layer("a").shared[0].centroids.numpy().copy()
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 12), dtype=np.float32), rng.integers(0, 3, 64)
    compile_model(shared).fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert not np.array_equal(shared.get_layer("a").shared[0].centroids.numpy(), before)
    final = tfprune.strip(shared)
    np.testing.assert_allclose(final.predict(x, verbose=0), shared.predict(x, verbose=0), atol=1e-6)
    kernel = keras.ops.convert_to_numpy(final.get_layer("a").kernel)
    np.testing.assert_array_equal(kernel == 0, weights[0] == 0)
    assert max(len(np.unique(kernel[:, j])) for j in range(16)) == 4


@pytest.mark.slow
def test_guide_example_prunes_shares_and_exports(capsys):
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parent.parent / "examples" / "weight_sharing.py"
    spec = importlib.util.spec_from_file_location("weight_sharing", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.main(["--quick"])
    assert max(out["int8_values"].values()) <= 16
    assert len(out["int8_values"]) == 4  # conv1, conv2, fc, logits
    final, pruned = out["final"], out["pruned"]
    for name in ["conv1", "conv2", "fc", "logits"]:
        np.testing.assert_array_equal(
            final.get_layer(name).kernel.numpy() == 0, pruned.get_layer(name).kernel.numpy() == 0
        )
        assert max(_values_per_channel(final.get_layer(name))) <= 16
    assert [t.index_bits for t in out["report"].tensors][1:] == [4, 4, 4]
    assert "most int8 values in one channel" in capsys.readouterr().out


def test_shrink_strips_a_clustered_model_first():
    shared = tfprune.cluster(small_cnn(), bits=2)
    small = tfprune.shrink(shared)
    assert not any(type(layer).__module__.startswith("tfprune") for layer in small.layers)
    x, _ = toy_data(8)
    np.testing.assert_allclose(small.predict(x, verbose=0), shared.predict(x, verbose=0), atol=1e-5)


@pytest.mark.slow
def test_mobilenet_v2_clustered_and_stripped_computes_the_same():
    model = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10
    )
    rng = np.random.default_rng(0)
    for layer in model.layers:  # BatchNorm statistics that are not the identity
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.1, n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
    shared = tfprune.cluster(model, bits=3)
    final = tfprune.strip(shared)
    x = rng.random((2, 32, 32, 3), dtype=np.float32)
    np.testing.assert_allclose(final.predict(x, verbose=0), shared.predict(x, verbose=0), atol=1e-5)
    clustered = [layer.name for layer in tfprune.sharing.clustered_layers(shared)]
    assert len(clustered) == 53  # every Conv2D, DepthwiseConv2D and the Dense
    for name in clustered:
        assert max(_values_per_channel(final.get_layer(name))) <= 8, name
