"""The int8 files of `benchmarks/weight_sharing.py`, LUT-compressed for TensorFlow Lite Micro.

Usage: `python benchmarks/weight_sharing_lut.py DIR [--no-write]`, with DIR the folder that
`python benchmarks/weight_sharing.py --keep DIR` wrote (`<model>_<variant>.tflite`, and
`<model>_float32.tflite`).

Each int8 file is compressed with `tfprune.export.compress_tflite` (tflite-micro's
compression tool, tensor by tensor where the b-bit indices and value tables take fewer bytes)
and verified with `tfprune.export.verify_lut`: both files run in TFLite Micro on the same 8
inputs (drawn over the input type's range), outputs compared bit for bit, arenas measured
with the decoded tensors in the arena and with separate decompression memory. Ratios are
against the model's float32 .tflite.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from _bench import machine
from _results import publish

import tfprune


def _order(name: str) -> int:
    """dense, pruned, then 4-, 3- and 2-bit sharing."""
    if "sharing" in name:
        return 10 - int(name.split("-bit")[0][-1])
    return 1 if "pruned" in name else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="the --keep folder of benchmarks/weight_sharing.py")
    parser.add_argument("--no-write", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args(argv)
    start = time.time()
    names = sorted(os.listdir(args.folder))
    rows = []
    for model in sorted({n.split("_")[0] for n in names}):
        float_bytes = os.path.getsize(os.path.join(args.folder, f"{model}_float32.tflite"))
        rows.append(f"| **{model}** (float32 file {float_bytes:,} B) | | | | | | | | |")
        files = [n for n in names if n.startswith(f"{model}_") and "float32" not in n]
        for name in sorted(files, key=_order):
            path = os.path.join(args.folder, name)
            lut = tfprune.export.compress_tflite(path)
            check = tfprune.export.verify_lut(path, lut)
            packed = sum(t.compressed for t in lut.tensors)
            rows.append(
                f"| {name[len(model) + 1 : -len('.tflite')].replace('_', ' ')} | "
                f"{lut.size_before:,} | {lut.size:,} | {packed} | "
                f"{float_bytes / lut.size:.1f}x | {check.uncompressed.arena:,} | "
                f"{check.compressed.arena:,} | {check.with_decompression_memory.arena:,} + "
                f"{check.decompression_memory:,} | {'yes' if check.identical else 'NO'} |"
            )
            print(rows[-1], flush=True)
    lines = [
        f"## Weight sharing: LUT-compressed files in TFLite Micro ({datetime.date.today()})",
        "",
        f"Command: `python benchmarks/{' '.join([os.path.basename(__file__), *sys.argv[1:]])}`",
        f"Machine: {machine()}. Run time {time.time() - start:.0f} s.",
        "The int8 files of the weight-sharing benchmark, LUT-compressed by "
        "`tfprune.export.compress_tflite`. flash: bytes before / after; tensors: tensors "
        "compressed; arena: TFLite Micro, measured (64-bit host): uncompressed, compressed "
        "(decoded tensors in the arena), and with separate decompression memory (arena + "
        "memory); identical: outputs of the compressed file equal the int8 file's on 8 inputs.",
        "",
        "| model / variant | int8 flash B | LUT flash B | tensors | LUT ratio | arena B "
        "| LUT arena B | arena + decode memory B | identical |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
    ]
    publish(lines, not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
