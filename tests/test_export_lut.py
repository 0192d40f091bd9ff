"""tfprune.export.compress_tflite / micro(compress=True): TFLite Micro LUT compression."""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest

from tfprune import export
from tfprune.export import tflm

pytestmark = pytest.mark.skipif(not tflm.available(), reason="needs tflite-micro")


def clustered(kernel_shape, levels: int, rng, channel_axes: int = 1) -> np.ndarray:
    """A kernel whose every output channel takes exactly `levels` distinct values.

    The channel is the product of the last `channel_axes` axes. Each channel's values are
    `levels` evenly spaced levels in [-a, a] (a drawn per channel), so int8 per-channel
    quantization (scale a/127) keeps them distinct for `levels` <= 128.
    """
    rows = int(np.prod(kernel_shape[: len(kernel_shape) - channel_axes]))
    cols = int(np.prod(kernel_shape[len(kernel_shape) - channel_axes :]))
    w = np.empty((rows, cols), np.float32)
    for c in range(cols):
        values = np.linspace(-1.0, 1.0, levels) * rng.uniform(0.1, 0.3)
        w[:, c] = np.concatenate([values, rng.choice(values, rows - levels)])[rng.permutation(rows)]
    return w.reshape(kernel_shape)


def set_clustered(model: keras.Model, levels: int, seed: int = 0) -> keras.Model:
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if not layer.weights:
            continue
        kernel, bias = layer.get_weights()
        depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
        kernel = clustered(kernel.shape, levels, rng, channel_axes=2 if depthwise else 1)
        layer.set_weights([kernel, rng.normal(0, 0.1, bias.shape).astype(np.float32)])
    return model


def int8_file(model: keras.Model, path, shape) -> bytes:
    x = np.random.default_rng(1).normal(size=(32, *shape)).astype(np.float32)
    export.tflite(model, path, quantize="int8", representative_data=x, shrink=False)
    return path.read_bytes()


@pytest.fixture(scope="module")
def dense256(tmp_path_factory):
    """The issue's case: a 256x256 Dense, 16 values per output channel."""
    inputs = keras.Input((256,))
    model = keras.Model(inputs, keras.layers.Dense(256, name="fc")(inputs))
    set_clustered(model, 16)
    return int8_file(model, tmp_path_factory.mktemp("lut") / "dense256.tflite", (256,))


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    """Conv2D, DepthwiseConv2D (channel axis last in TFLite), Dense: 4 values per channel."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv0")(inputs)
    x = keras.layers.Conv2D(16, 3, activation="relu", name="conv")(x)
    x = keras.layers.DepthwiseConv2D(3, activation="relu", name="dw")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(64, activation="relu", name="fc")(x)
    outputs = keras.layers.Dense(10, name="logits")(x)
    model = set_clustered(keras.Model(inputs, outputs), 4)
    return int8_file(model, tmp_path_factory.mktemp("lut") / "cnn.tflite", (8, 8, 1))


def tensors(data: bytes):
    from tflite_micro.tensorflow.lite.micro.compression import model_editor

    return model_editor.read(data).subgraphs[0].tensors


def decode(encoded: bytes, ancillary: bytes, shape, axis: int) -> np.ndarray:
    """Numpy decode of the LUT format: big-endian b-bit indices into per-channel tables."""
    bits, stride = ancillary[5] & 0x07, ancillary[6]
    assert ancillary[5] >> 4 == axis  # the channel axis recorded in the header
    tables = np.frombuffer(ancillary[16:], np.int8).reshape(-1, stride)
    n = int(np.prod(shape))
    bitstring = np.unpackbits(np.frombuffer(encoded, np.uint8))[: n * bits]
    indices = bitstring.reshape(n, bits) @ (1 << np.arange(bits - 1, -1, -1))
    channel = np.moveaxis(np.arange(n).reshape(shape), axis, 0).reshape(shape[axis], -1)
    owner = np.empty(n, np.int64)
    for c, elements in enumerate(channel):
        owner[elements] = c
    return tables[owner, indices].reshape(shape)


def test_dense_16_values_per_channel_compresses_at_4_bits(dense256, tmp_path):
    result = export.compress_tflite(dense256, tmp_path / "c.tflite", max_bits=7)
    kernel, bias = (next(t for t in result.tensors if t.dtype == dt) for dt in ("int8", "int32"))
    assert (kernel.per_channel, kernel.unique, kernel.bits) == (True, 16, 4)
    # 65,536 indices of 4 bits + 256 tables of 16 int8 values + the 16-byte header.
    assert (kernel.bytes_before, kernel.bytes_after) == (65_536, 32_768 + 4_096 + 16)
    assert kernel.compressed and kernel.reason == f"saves {65_536 - 36_880 - kernel.metadata:,} B"
    # The bias has one value per channel: a 1-bit index plus a 4-byte table entry each.
    assert (bias.unique, bias.bits, bias.compressed) == (1, 1, False)
    assert bias.bytes_after == 32 + 1_024 + 16
    assert bias.reason == f"indices + tables + metadata {1_072 + bias.metadata:,} B >= 1,024 B"
    assert result.size_before == len(dense256) and result.size == len(result.data)
    assert (tmp_path / "c.tflite").read_bytes() == result.data
    # The issue measured 72,664 -> 47,392 bytes; the data alone shrinks by 28,656 bytes, the
    # decoded tensor's copy of 256 scales and zero points and the DECODE entries add back some.
    assert 25_000 < result.size_before - result.size < 28_656
    info = export.describe(result.data)
    assert info.ops == ("CUSTOM:TFLM_DECODE", "FULLY_CONNECTED")
    assert result.decompression_memory == 65_536 == export.decompression_memory(result.data)
    # The file holds exactly the original int8 kernel, as indices into per-channel tables.
    encoded, ancillary = (bytes(tensors(result.data)[i].buffer.data) for i in info.operators[0][1])
    assert (len(encoded), len(ancillary)) == (32_768, 4_112)
    original = tensors(dense256)[kernel.index].array
    np.testing.assert_array_equal(decode(encoded, ancillary, original.shape, 0), original)
    lines = result.format().splitlines()
    assert lines[0] == (
        f"LUT compression: {result.size_before:,} -> {result.size:,} bytes of flash "
        f"({result.size_before - result.size:,} saved, 1 of 2 constant tensors)"
    )
    assert re.search(r"16/channel\s+4\s+65,536\s+36,880\s+compressed$", result.format(), re.M)


def test_micro_writes_the_compressed_model_as_a_c_array(cnn, tmp_path):
    result = export.micro(cnn, tmp_path, "cnn", compress=True, measure=False)
    lut = result.compression
    kernels = {t.shape: t for t in lut.tensors if t.dtype == "int8"}
    assert sorted(kernels) == [(1, 3, 3, 16), (8, 3, 3, 1), (10, 64), (16, 3, 3, 8), (64, 64)]
    # 4 values per channel everywhere (the depthwise kernel's channels are its last axis).
    assert {(t.per_channel, t.unique, t.bits) for t in kernels.values()} == {(True, 4, 2)}
    # Small kernels do not pay: 12 bytes of quantization copy per channel and the DECODE's
    # entries outweigh what 2-bit indices save on 72, 144 or 640 bytes.
    assert [s for s, t in kernels.items() if t.compressed] == [(64, 64), (16, 3, 3, 8)]
    logits = kernels[(10, 64)]
    assert (logits.bytes_after, logits.metadata) == (
        160 + 40 + 16,
        120 + 2 * len(logits.name) + 280,
    )
    conv = kernels[(16, 3, 3, 8)]
    assert (conv.bytes_before, conv.bytes_after) == (1_152, 288 + 16 * 4 + 16)
    assert conv.metadata == 12 * 16 + 2 * len(conv.name) + 280
    dw = kernels[(1, 3, 3, 16)]
    assert dw.bytes_after == 36 + 64 + 16 and not dw.compressed
    assert dw.reason == f"indices + tables + metadata {116 + dw.metadata:,} B >= 144 B"
    # The C array holds the compressed file, byte for byte.
    source = (tmp_path / "cnn.cc").read_text()
    body = re.search(r"cnn\[\] = \{(.*?)\};", source, re.S).group(1)
    assert bytes(int(v, 16) for v in re.findall(r"0x([0-9a-f]{2})", body)) == lut.data
    assert f"const unsigned int cnn_len = {lut.size};" in source
    assert result.size == lut.size < lut.size_before
    assert result.ops.count("CUSTOM:TFLM_DECODE") == 1 and result.measured is None
    header = (tmp_path / "cnn.h").read_text()
    assert re.findall(r"\(resolver\)\.(\w+)\(\);", header) == list(result.resolver_calls)
    assert "AddDecode" in result.resolver_calls and f"CNN_OP_COUNT {len(result.ops)}" in header
    assert f"#define CNN_DECOMPRESSION_MEMORY_SIZE {lut.decompression_memory}\n" in header
    assert "interpreter.SetDecompressionMemory(regions, 1);" in header
    assert "_WITH_DECOMPRESSION_MEMORY " not in header  # only when measured
    assert f"// LUT compression: {lut.size_before:,} -> {lut.size:,} bytes of flash" in header


def test_compressed_file_runs_identically_in_tflite_micro(cnn):
    lut = export.compress_tflite(cnn)
    x = np.random.default_rng(2).normal(size=(8, 8, 8, 1)).astype(np.float32)
    plain = tflm.run(cnn, x, arena_size=16_384)
    packed = tflm.run(lut.data, x, arena_size=16_384, reference=cnn)
    given = tflm.run(
        lut.data, x, arena_size=16_384, reference=cnn, decompression_memory=lut.decompression_memory
    )
    np.testing.assert_array_equal(packed.outputs, plain.outputs)
    np.testing.assert_array_equal(given.outputs, plain.outputs)
    assert packed.max_diff == plain.max_diff  # both against LiteRT on the uncompressed file
    # Decoded tensors take arena, unless the application gives decompression memory.
    assert packed.head > plain.head == given.head
    # The largest DECODE output: the 64x64 kernel, 4,096 bytes.
    assert lut.decompression_memory == 4_096


@pytest.mark.slow
def test_micro_measures_the_arena_with_and_without_decompression_memory(cnn, tmp_path):
    result = export.micro(cnn, tmp_path, "cnn", compress=True)
    check = result.lut
    assert check.identical and check.uncompressed.outputs.shape == (8, 10)
    assert check.decompression_memory == result.compression.decompression_memory
    assert check.with_decompression_memory.head == check.uncompressed.head
    assert check.compressed.head > check.uncompressed.head
    assert result.measured is check.compressed
    header = (tmp_path / "cnn.h").read_text()
    assert f"#define CNN_ARENA_SIZE {check.compressed.arena}\n" in header
    arena = check.with_decompression_memory.arena
    assert f"#define CNN_ARENA_SIZE_WITH_DECOMPRESSION_MEMORY {arena}\n" in header
    assert check.format().splitlines()[0] == (
        "TFLite Micro outputs of the compressed file on 8 examples: identical to the "
        "uncompressed file's"
    )


def test_a_tensor_whose_tables_cost_more_is_kept_and_the_file_unchanged(tmp_path):
    # The counter-example: a 64x16 kernel with 64 values per channel would need
    # 6-bit indices (768 B) + 16 tables of 64 values (1,024 B) for 1,024 B of data.
    inputs = keras.Input((64,))
    model = set_clustered(keras.Model(inputs, keras.layers.Dense(16, name="fc")(inputs)), 64)
    data = int8_file(model, tmp_path / "fc.tflite", (64,))
    result = export.compress_tflite(data)
    kernel = next(t for t in result.tensors if t.dtype == "int8")
    assert (kernel.shape, kernel.unique, kernel.bits) == ((16, 64), 64, 6)
    assert (kernel.bytes_before, kernel.bytes_after, kernel.compressed) == (1_024, 1_808, False)
    assert result.data == data and result.size == result.size_before == len(data)
    assert result.compressed == () and result.decompression_memory == 0
    assert result.format().splitlines()[0] == (
        f"LUT compression: {len(data):,} -> {len(data):,} bytes of flash "
        "(0 saved, 0 of 2 constant tensors)"
    )
    # max_bits keeps tensors that need wider indices.
    narrow = export.compress_tflite(data, max_bits=5)
    assert next(t for t in narrow.tensors if t.dtype == "int8").reason == (
        "64 values need 6 bits (max_bits=5)"
    )


@pytest.mark.parametrize("bits", [0, 8, 4.0, True, "4"])
def test_bad_max_bits_is_refused(dense256, bits):
    with pytest.raises(ValueError, match=rf"integer from 1 to 7 .* Received: max_bits={bits!r}"):
        export.compress_tflite(dense256, max_bits=bits)


def test_bad_inputs_are_refused_before_any_work(dense256, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"not a TFLite flatbuffer .* Received: model of 64 bytes"):
        export.compress_tflite(b"not a flatbuffer" * 4)
    with pytest.raises(FileNotFoundError):
        export.compress_tflite(tmp_path / "missing.tflite")
    with pytest.raises(IsADirectoryError):
        export.compress_tflite(dense256, tmp_path)
    with pytest.raises(ValueError, match=r"Received: decompression_memory=-1"):
        tflm.run(dense256, decompression_memory=-1)
    monkeypatch.setattr(tflm, "available", lambda: False)
    with pytest.raises(ImportError, match=r"pip install 'tfprune\[micro\]'"):
        export.micro(dense256, tmp_path, "m", compress=True, measure=False)


def test_cli_micro_compress(dense256, tmp_path, capsys):
    from tfprune import cli

    (tmp_path / "d.tflite").write_bytes(dense256)
    args = ["micro", str(tmp_path / "d.tflite"), "--out", str(tmp_path / "c"), "--compress"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out.splitlines()
    lut = export.compress_tflite(dense256)
    assert out[0] == (
        f"Wrote {tmp_path / 'c' / 'd.h'} and {tmp_path / 'c' / 'd.cc'}: {lut.size:,} bytes, 2 ops"
    )
    assert out[2:] == lut.format().splitlines()
    assert "#define D_DECOMPRESSION_MEMORY_SIZE 65536" in (tmp_path / "c" / "d.h").read_text()


@pytest.mark.slow  # trains, converts and runs three files in TFLite Micro
def test_lut_compression_example(tmp_path):
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parent.parent / "examples" / "lut_compression.py"
    spec = importlib.util.spec_from_file_location("lut_compression", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.main(["--out", str(tmp_path), "--quick"])
    lut, micro = out["lut"], out["micro"]
    assert [t.shape for t in lut.compressed] == [(10, 256), (256, 256), (256, 64)]
    assert {(t.unique, t.bits) for t in lut.compressed} == {(16, 4)}
    assert (tmp_path / "mlp_lut.tflite").read_bytes() == lut.data == micro.compression.data
    assert micro.lut.identical and micro.lut.decompression_memory == 65_536
    assert micro.lut.with_decompression_memory.head == micro.lut.uncompressed.head


@pytest.mark.slow  # converts MobileNetV2 (about a minute on two cores)
def test_mobilenet_v2_shared_to_16_values_keeps_them_and_runs_identically(tmp_path):
    from tfprune.budget_sharing import kmeans_share

    model = keras.applications.MobileNetV2(
        input_shape=(96, 96, 3), alpha=0.35, weights=None, classes=10
    )
    rng = np.random.default_rng(0)
    for layer in model.layers:  # BatchNorm folds a per-channel factor into each kernel
        if isinstance(layer, keras.layers.BatchNormalization):
            shape = layer.gamma.shape
            gamma, beta = rng.uniform(0.5, 1.5, shape), rng.normal(0, 0.1, shape)
            mean, variance = rng.normal(0, 0.1, shape), rng.uniform(0.5, 2.0, shape)
            layer.set_weights([gamma, beta, mean, variance])
    kmeans_share(model, bits=4)
    x = rng.normal(size=(16, 96, 96, 3)).astype(np.float32)
    data = int8_file(model, tmp_path / "mnv2.tflite", (96, 96, 3))
    lut = export.compress_tflite(data)
    kernels = [t for t in lut.tensors if t.dtype == "int8" and len(t.shape) > 1]
    # BatchNorm folding scales channels and int8 rounding only merges: <= 16 values each.
    assert max(t.unique for t in kernels) == 16 and len(kernels) == 53
    assert all(t.bits == 4 for t in lut.compressed) and len(lut.compressed) >= 10
    assert lut.size < lut.size_before - 50_000
    plain = tflm.run(data, x[:2], arena_size=1 << 20)
    packed = tflm.run(lut.data, x[:2], arena_size=1 << 20, reference=data)
    np.testing.assert_array_equal(packed.outputs, plain.outputs)
