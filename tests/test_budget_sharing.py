"""tfprune.WeightSharing: weight sharing as a flash lever of fit_budget, against the arena."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import tfprune
from tfprune import budget, export
from tfprune.budget_sharing import kmeans_share
from tfprune.clustering import kmeans
from tfprune.export import tflm

needs_tflm = pytest.mark.skipif(not tflm.available(), reason="needs tflite-micro")


def mlp() -> keras.Model:
    inputs = keras.Input((64,))
    x = keras.layers.Dense(256, activation="relu", name="fc1")(inputs)
    return keras.Model(inputs, keras.layers.Dense(10, name="fc2")(x))


def test_kmeans_share_clusters_each_channel_and_keeps_zeros():
    layer = keras.layers.Dense(2)
    layer.build((None, 6))
    kernel = np.array([[0, 1, 2, 3, 4, 0], [1, 2, 3, 4, 5, 6]], np.float32).T
    layer.kernel.assign(kernel)
    model = keras.Sequential([keras.Input((6,)), layer])
    kmeans_share(model, bits=2)
    got = keras.ops.convert_to_numpy(layer.kernel)
    # Column 0 has zeros: they stay; 1..4 start at 3 linear levels (1, 2.5, 4), already
    # the means of their members.
    np.testing.assert_array_equal(got[:, 0], [0, 1, 2.5, 2.5, 4, 0])
    # Column 1 has none: 4 levels (1, 2.667, 4.333, 6) take 1 | 2, 3 | 4, 5 | 6, whose
    # means (1, 2.5, 4.5, 6) keep the same members.
    np.testing.assert_array_equal(got[:, 1], [1, 2.5, 2.5, 4.5, 4.5, 6])


def test_kmeans_share_covers_conv_and_depthwise_channels():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, name="conv")(inputs)
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(x)
    model = keras.Model(inputs, x)
    before = {n: model.get_layer(n).kernel.numpy() for n in ("conv", "dw")}
    kmeans_share(model, bits=3)
    # One output channel per column: conv (kh*kw*in, out), depthwise (kh*kw, in*multiplier).
    for name, columns in (("conv", 8), ("dw", 16)):
        old = before[name].reshape(-1, columns)
        new = model.get_layer(name).kernel.numpy().reshape(-1, columns)
        for c in range(columns):
            table, index = kmeans(old[:, c], 8)
            np.testing.assert_array_equal(new[:, c], table[index])
            assert len(np.unique(new[:, c])) == 8


@pytest.mark.parametrize("bits", [0, 8, 2.0, True])
def test_bad_bits_are_refused(bits):
    with pytest.raises(ValueError, match=rf"integer from 1 to 7 .* Received: bits={bits!r}"):
        tfprune.WeightSharing(bits=bits)
    with pytest.raises(ValueError, match=rf"Received: bits={bits!r}"):
        kmeans_share(mlp(), bits)


def test_bad_cluster_is_refused():
    with pytest.raises(TypeError, match="Received: cluster of type int"):
        tfprune.WeightSharing(cluster=3)


@pytest.fixture(scope="module")
def measured():
    """The MLP, calibration data, and its Resources without and with 4-bit sharing."""
    keras.utils.set_random_seed(0)
    model = mlp()
    x = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
    sharing = tfprune.WeightSharing(bits=4)
    plain = budget.measure(model, x, arena="estimate")
    shared = budget.measure(model, x, arena="estimate", sharing=sharing)
    return model, x, sharing, plain, shared


@needs_tflm
def test_measure_counts_the_compressed_file_and_the_decoded_tensors(measured, tmp_path):
    model, x, sharing, plain, shared = measured
    # The same numbers by hand: cluster a copy, convert, compress.
    copy = sharing.shared(model)
    assert not np.array_equal(copy.get_weights()[0], model.get_weights()[0])  # a copy
    export.tflite(copy, tmp_path / "m.tflite", quantize="int8", representative_data=x)
    file = (tmp_path / "m.tflite").read_bytes()
    lut = export.compress_tflite(file)
    assert [t.shape for t in lut.compressed] == [(10, 256), (256, 64)]
    assert {t.bits for t in lut.compressed} == {4}
    assert shared.flash == lut.size < plain.flash == len(file)
    assert shared.arena == export.arena_estimate(lut.data).total
    assert shared.macs == plain.macs
    # Decoded tensors are planned in the arena, the largest (64x256) alone 16,384 bytes,
    # unless the application gives decompression memory: then the arena is the plain one.
    assert shared.arena >= plain.arena + 16_384
    given = tfprune.WeightSharing(decompression_memory=True).measure(file, use_tflm=False)
    assert given == (lut.size, plain.arena, "estimate")


@needs_tflm
@pytest.mark.slow  # three int8 conversions
def test_fit_budget_meets_a_flash_limit_by_sharing_alone(measured):
    model, x, sharing, plain, shared = measured
    limit = (shared.flash + plain.flash) // 2  # met by sharing, not without
    small, report = tfprune.fit_budget(
        model, tfprune.Budget(flash=limit), x, arena="estimate", sharing=sharing, verbose=False
    )
    assert report.iterations == 0 and report.met == {"flash": True}
    assert report.after.flash == shared.flash == report.before.flash
    assert report.widths == {"fc1": (256, 256)}
    assert small.count_params() == model.count_params()


@needs_tflm
@pytest.mark.slow  # runs the compressed file in TFLite Micro twice
def test_tflm_arena_with_and_without_decompression_memory(measured):
    model, x, sharing, _, shared = measured
    with_decoded = budget.measure(model, x, arena="tflm", sharing=sharing)
    given = budget.measure(
        model, x, arena="tflm", sharing=tfprune.WeightSharing(decompression_memory=True)
    )
    assert with_decoded.arena_source == given.arena_source == "measured by TFLite Micro"
    # The 64x256 kernel decoded (16,384 bytes) sits in the arena, unless memory is given.
    assert with_decoded.arena > 16_384 > given.arena
    assert with_decoded.flash == given.flash == shared.flash
