"""tfprune.export.micro: C array round trip, alignment, op list and arena estimate."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess

import keras
import pytest

from tfprune import export

micro_module = importlib.import_module("tfprune.export.micro")  # the name is shadowed


@pytest.fixture(scope="module")
def int8_file(digits_cnn, tmp_path_factory):
    model, (x_train, _), _ = digits_cnn
    path = tmp_path_factory.mktemp("micro") / "digits.tflite"
    export.tflite(model, path, quantize="int8", representative_data=x_train[:100], shrink=False)
    return path


def _parse_array(source: str, name: str) -> bytes:
    body = re.search(
        rf"alignas\(16\) const unsigned char {name}\[\] = \{{(.*?)\}};", source, re.S
    ).group(1)
    return bytes(int(v, 16) for v in re.findall(r"0x([0-9a-f]{2})", body))


def test_c_array_round_trips_to_the_exact_bytes(int8_file, tmp_path):
    result = export.micro(int8_file, tmp_path, "digits_int8")
    source = (tmp_path / "digits_int8.cc").read_text()
    header = (tmp_path / "digits_int8.h").read_text()
    data = int8_file.read_bytes()
    assert _parse_array(source, "digits_int8") == data
    assert f"const unsigned int digits_int8_len = {len(data)};" in source
    assert source.count("alignas(16)") == 1
    assert '#include "digits_int8.h"' in source
    assert "extern const unsigned char digits_int8[];" in header
    assert "extern const unsigned int digits_int8_len;" in header
    assert result.size == len(data)
    assert result.header == str(tmp_path / "digits_int8.h")


def test_op_resolver_macro_lists_exactly_the_ops(int8_file, tmp_path):
    result = export.micro(int8_file.read_bytes(), tmp_path, "m")
    header = (tmp_path / "m.h").read_text()
    assert result.ops == ("CONV_2D", "MAX_POOL_2D", "RESHAPE", "FULLY_CONNECTED")
    assert result.resolver_calls == ("AddConv2D", "AddMaxPool2D", "AddReshape", "AddFullyConnected")
    calls = re.findall(r"\(resolver\)\.(\w+)\(\);", header)
    assert calls == list(result.resolver_calls)
    assert "#define M_OP_COUNT 4" in header
    assert f"#define M_ARENA_SIZE {result.arena_size}" in header
    assert "CONV_2D x2" in header and "FULLY_CONNECTED x2" in header


@pytest.mark.parametrize(
    "op, call",
    [
        ("DEPTHWISE_CONV_2D", "AddDepthwiseConv2D"),
        ("AVERAGE_POOL_2D", "AddAveragePool2D"),
        ("RELU6", "AddRelu6"),
        ("BATCH_TO_SPACE_ND", "AddBatchToSpaceNd"),
        ("L2_NORMALIZATION", "AddL2Normalization"),
        ("HARD_SWISH", "AddHardSwish"),
    ],
)
def test_resolver_method_names(op, call):
    assert micro_module._resolver_call(op) == call


def test_arena_estimate_of_a_dense_chain_is_the_greedy_plan(tmp_path):
    # float32 [1,4] -> Dense(8) -> [1,8] -> Dense(2) -> [1,2]. Buffers (16-byte aligned):
    # input 16 B (op 0), hidden 32 B (ops 0-1), output 16 B (op 1 to the end). Greedy,
    # largest first: hidden at 0, input at 32 (lives with hidden), output at 32 (input is
    # dead by then): peak 48 B.
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(2)(keras.layers.Dense(8)(inputs))
    path = tmp_path / "chain.tflite"
    export.tflite(keras.Model(inputs, outputs), path, shrink=False)
    estimate = export.arena_estimate(path)
    assert estimate.activations == 48
    assert estimate.total == -(-(estimate.activations + estimate.persistent) // 16) * 16


def test_arena_estimate_counts_the_two_largest_live_activations(int8_file):
    # conv1 out [1,8,8,16] int8 (1,024 B) and pool out [1,4,4,16] (256 B) coexist while the
    # pool runs; conv2 out [1,4,4,32] (512 B) coexists with pool out: peak 1,024 + 256.
    assert export.arena_estimate(int8_file).activations == 1024 + 256


def test_sparse_encoded_file_is_refused(digits_cnn, tmp_path):
    import tfprune

    pruned = tfprune.wrap(digits_cnn[0], sparsity=0.9)
    tfprune.PruningController(pruned).update(0)
    path = tmp_path / "s.tflite"
    export.tflite(pruned, path, sparse=True, shrink=False)
    with pytest.raises(ValueError, match=r"\['DENSIFY'\].*Export it with sparse=False"):
        export.micro(path, tmp_path / "out", "s")
    assert not (tmp_path / "out" / "s.cc").exists()


@pytest.mark.parametrize("name", ["1model", "my-model", "", "a b"])
def test_name_must_be_a_c_identifier(int8_file, tmp_path, name):
    with pytest.raises(ValueError, match=rf"C identifier.*Received: name={re.escape(repr(name))}"):
        export.micro(int8_file, tmp_path, name)


def test_not_a_tflite_file(tmp_path):
    bad = tmp_path / "x.tflite"
    bad.write_bytes(b"not a flatbuffer at all")
    with pytest.raises(ValueError, match="not a TFLite flatbuffer"):
        export.micro(bad, tmp_path, "x")
    with pytest.raises(FileNotFoundError, match=r"No such \.tflite file"):
        export.micro(tmp_path / "missing.tflite", tmp_path, "x")


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs a C++ compiler")
def test_generated_source_compiles_and_is_aligned(int8_file, tmp_path):
    export.micro(int8_file, tmp_path, "digits")
    (tmp_path / "main.cc").write_text(
        '#include <cstdint>\n#include <cstdio>\n#include "digits.h"\n'
        "int main() {\n"
        '  std::printf("%u %u %u", digits_len,\n'
        "              (unsigned)(reinterpret_cast<std::uintptr_t>(digits) % 16),\n"
        "              (unsigned)(digits[4] + digits[5] + digits[6] + digits[7]));\n"
        "  return DIGITS_OP_COUNT == 4 ? 0 : 1;\n}\n"
    )
    exe = tmp_path / "main"
    subprocess.run(
        ["g++", "-std=c++11", "-Wall", "-Werror", "-o", str(exe), "main.cc", "digits.cc"],
        cwd=tmp_path,
        check=True,
    )
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    data = int8_file.read_bytes()
    assert out.split() == [str(len(data)), "0", str(sum(b"TFL3"))]
