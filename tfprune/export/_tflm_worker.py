"""Runs one .tflite file in the TFLite Micro interpreter; started as a script by `tflm`.

Usage: `python _tflm_worker.py IN.npz OUT.npz`. IN holds `model` (uint8 bytes), `arena_size`,
`alt` (bytes of alternate decompression memory, 0 for none) and `x` (inputs already in the
file's input dtype). OUT gets `y` (raw outputs). The
RecordingMicroAllocator's report goes to stderr, where the parent reads it. This file
imports only numpy and tflite_micro (not tfprune, not TensorFlow), so it starts fast, and a
crash of the interpreter (a segfault on a too-small arena) ends only this process.
"""

import sys

import numpy as np
from tflite_micro.python.tflite_micro import runtime


def main(src: str, dst: str) -> None:
    with np.load(src) as f:
        model, arena_size, x = f["model"].tobytes(), int(f["arena_size"]), f["x"]
        alt = int(f["alt"])
    interp = runtime.Interpreter.from_bytes(
        model, arena_size=arena_size, alt_decompression_memory_size=alt
    )
    outputs = []
    for example in x:
        interp.set_input(example[None], 0)
        interp.invoke()
        outputs.append(np.asarray(interp.get_output(0))[0])
    interp.print_allocations()
    np.save(dst, np.stack(outputs) if outputs else np.zeros((0,)), allow_pickle=False)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
