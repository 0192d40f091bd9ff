"""Coverage matrix: every keras.applications model and a list of keras-hub backbones.

For each model (random weights, the smallest input the model allows, near-identity
parameters randomised so that no branch hides behind a zero):

1. `wrap`: `tfprune.wrap(model, 0.5)`, one mask update, `tfprune.strip`; the stripped model's
   sparsity over its wrapped weights.
2. `groups`: `tfprune.graph.channel_groups` (prunable / all groups, prunable channel fraction).
3. `shrink`: `prune_channels(0.5)` + `shrink`; the largest output difference of the shrunk
   model against the zeroed one, relative to the largest output (pass: <= 1e-4), and the
   parameter ratio.
4. `int8`: int8 export of the dense and the shrunk model with verification on random inputs
   (models with one input only) and the int8 latency ratio shrunk / dense (1 thread).

Models run in a worker subprocess (TensorFlow is imported once per worker) with a limit in
CPU seconds per model; a model writes its row after every step, so a crash or a timeout
loses one step of one model, and a new worker goes on with the next. Rows are kept in
`benchmarks/coverage.json`; a run skips the models already there (`--rerun` redoes them) and
rewrites `benchmarks/COVERAGE.md` from all rows.

    nice -n 10 python benchmarks/coverage.py                      # everything still missing
    python benchmarks/coverage.py --models hub                    # keras-hub backbones only
    python benchmarks/coverage.py --models ResNet50,ViT --rerun   # these two again
    python benchmarks/coverage.py --only ConvNeXtTiny             # one model, in process
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # this checkout's tfprune, not an installed one
RESULTS = os.path.join(HERE, "coverage.json")
TABLE = os.path.join(HERE, "COVERAGE.md")
STEPS = ("build", "wrap", "groups", "shrink", "int8")
TOLERANCE = 1e-4  # shrunk vs zeroed model, relative to the largest |output|
SIZES = (32, 75, 96, 224, 331)  # input sizes tried in order: the first one the model accepts
SEQUENCE = 8  # token models: sequence length of the test inputs


# --- the catalogue -----------------------------------------------------------------------


def application_names() -> list[str]:
    """Every model constructor exported by `keras.applications`, sorted."""
    import keras

    return sorted(
        name
        for name in dir(keras.applications)
        if name[0].isupper() and callable(getattr(keras.applications, name))
    )


def _hub_text(cls_name: str, **extra):
    def build():
        import keras_hub

        cls = getattr(keras_hub.models, cls_name)
        return cls(vocabulary_size=64, num_layers=2, hidden_dim=16, intermediate_dim=32, **extra)

    return build


def _hub(cls_name: str, **config):
    def build():
        import keras_hub

        return getattr(keras_hub.models, cls_name)(**config)

    return build


_HEADS = dict(num_heads=2, max_sequence_length=16)
_GQA = dict(num_query_heads=4, num_key_value_heads=2)
HUB = {
    "BERT": _hub_text("BertBackbone", **_HEADS),
    "DistilBERT": _hub_text("DistilBertBackbone", **_HEADS),
    "RoBERTa": _hub_text("RobertaBackbone", **_HEADS),
    "GPT-2": _hub_text("GPT2Backbone", **_HEADS),
    "Gemma": _hub_text("GemmaBackbone", head_dim=8, **_GQA),
    "Llama": _hub_text("LlamaBackbone", **_GQA),
    "Mistral": _hub_text("MistralBackbone", **_GQA),
    "Qwen": _hub_text("QwenBackbone", **_GQA),
    "ViT": _hub(
        "ViTBackbone",
        image_shape=(16, 16, 3),
        patch_size=4,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
    ),
    "DeiT": _hub(
        "DeiTBackbone",
        image_shape=(16, 16, 3),
        patch_size=4,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
    ),
    "ResNet (hub)": _hub(
        "ResNetBackbone",
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 32],
        stackwise_num_blocks=[1, 1],
        stackwise_num_strides=[1, 2],
        block_type="basic_block",
        image_shape=(32, 32, 3),
    ),
    "MobileNet (hub)": _hub(
        "MobileNetBackbone",
        stackwise_expansion=[[16], [32, 32]],
        stackwise_num_blocks=[1, 2],
        stackwise_num_filters=[[8], [16, 16]],
        stackwise_kernel_size=[[3], [3, 3]],
        stackwise_num_strides=[[2], [2, 1]],
        stackwise_se_ratio=[[None], [0.25, 0.25]],
        stackwise_activation=[["relu"], ["hard_swish", "hard_swish"]],
        stackwise_padding=[[1], [1, 1]],
        output_num_filters=32,
        depthwise_filters=8,
        depthwise_stride=2,
        depthwise_residual=False,
        last_layer_filter=32,
        squeeze_and_excite=0.5,
        image_shape=(32, 32, 3),
        input_num_filters=8,
    ),
    "EfficientNet (hub)": _hub(
        "EfficientNetBackbone",
        stackwise_kernel_sizes=[3, 3],
        stackwise_num_repeats=[1, 2],
        stackwise_input_filters=[8, 16],
        stackwise_output_filters=[16, 16],
        stackwise_expansion_ratios=[1, 4],
        stackwise_squeeze_and_excite_ratios=[0.0, 0.25],
        stackwise_strides=[1, 2],
        stackwise_block_types=["fused", "unfused"],
        stackwise_width_coefficients=[1.0, 1.0],
        stackwise_depth_coefficients=[1.0, 1.0],
        input_shape=(32, 32, 3),
        num_features=32,
    ),
    "CSPNet (hub)": _hub(
        "CSPNetBackbone",
        stem_filters=8,
        stem_kernel_size=3,
        stem_strides=1,
        stackwise_depth=[1, 1],
        stackwise_strides=[1, 2],
        stackwise_num_filters=[16, 32],
        block_type="dark_block",
        stage_type="csp",
        bottle_ratio=[0.5, 1.0],  # CSPDarkNet-53's ratios (keras_hub's timm converter)
        block_ratio=[1.0, 0.5],
        expand_ratio=[2.0, 1.0],
        image_shape=(32, 32, 3),
    ),
    "DenseNet (hub)": _hub(
        "DenseNetBackbone", stackwise_num_repeats=[2, 2], image_shape=(32, 32, 3), growth_rate=8
    ),
    "VGG (hub)": _hub(
        "VGGBackbone",
        stackwise_num_repeats=[1, 1],
        stackwise_num_filters=[8, 16],
        image_shape=(32, 32, 3),
    ),
}


def catalogue() -> list[str]:
    """All model names: keras.applications first, then the keras-hub backbones."""
    return application_names() + list(HUB)


def build(name: str):
    """Builds the named model with random weights and the smallest input size it accepts.

    Returns:
        `(model, note)`; `note` says the input size or configuration.
    """
    import keras

    if name in HUB:
        return HUB[name](), "small config"
    fn = getattr(keras.applications, name)
    errors = []
    for size in SIZES:
        try:
            return fn(weights=None, input_shape=(size, size, 3), classes=10), f"{size} px"
        except ValueError as e:
            errors.append(f"{size}: {e}")
    raise ValueError("no input size accepted: " + " | ".join(errors))


# --- inputs and near-identity parameters --------------------------------------------------


def inputs(model, n: int, seed: int = 0):
    """Random inputs for `model`: images from N(0, 1), token ids, masks of ones."""
    rng = np.random.default_rng(seed)
    out = {}
    for t in model.inputs:
        name = t.name.split(":")[0]
        shape = [n, *[SEQUENCE if d is None else d for d in t.shape[1:]]]
        if "int" in str(t.dtype):
            if "mask" in name:
                value = np.ones(shape, "int32")
            elif "segment" in name:
                value = np.zeros(shape, "int32")
            else:
                value = rng.integers(0, 64, shape).astype("int32")
        else:
            value = rng.normal(size=shape).astype("float32")
        out[name] = value
    if len(out) == 1:
        return next(iter(out.values()))
    return out


def randomise(model, seed: int = 0) -> int:
    """Gives every constant float weight random values, so no branch hides behind it.

    Constant weights are those a fresh model initialises to one value: BatchNorm and
    LayerNorm scales, moving statistics, biases, and ConvNeXt's LayerScale (1e-6). Positive
    constants become U(0.5, 1.5) (scales and variances stay positive), the others N(0, 0.1).

    Returns:
        The number of weights changed.
    """
    import keras

    rng = np.random.default_rng(seed)
    changed = 0
    for w in model.weights:
        if "float" not in str(w.dtype) or w.path.endswith("count"):
            continue
        value = keras.ops.convert_to_numpy(w)
        if value.size < 2 or not np.all(value == value.flat[0]):
            continue
        if value.flat[0] > 0:
            new = rng.uniform(0.5, 1.5, value.shape)
        else:
            new = rng.normal(0.0, 0.1, value.shape)
        w.assign(new.astype(value.dtype))
        changed += 1
    return changed


def _outputs(model, x) -> np.ndarray:
    import keras

    y = model(x, training=False)
    return np.concatenate(
        [keras.ops.convert_to_numpy(t).astype("float64").ravel() for t in keras.tree.flatten(y)]
    )


# --- one model ---------------------------------------------------------------------------


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:160]}" + ("..." if len(text) > 160 else "")


def run_model(name: str, row_path: str | None = None, latency_runs: int = 30) -> dict:
    """Runs every step on one model, writing the row to `row_path` after each step.

    Returns:
        `{"model", "note", "params", <step>: {"ok": bool, "text": str}, ...}`.
    """
    import keras

    import tfprune

    row: dict = {"model": name}

    def save():
        if row_path:
            with open(row_path, "w") as f:
                json.dump(row, f)

    def step(key, fn):
        start = time.perf_counter()
        row[key] = {"ok": False, "text": "running"}
        save()
        try:
            ok, text = fn()
        except Exception as e:  # one failure is one cell of the matrix
            traceback.print_exc()
            ok, text = False, _short(e)
        row[key] = {"ok": ok, "text": text, "seconds": round(time.perf_counter() - start, 1)}
        save()
        return ok

    state: dict = {}

    def do_build():
        model, note = build(name)
        state["model"] = model
        row["note"], row["params"] = note, model.count_params()
        row["randomised"] = randomise(model)
        state["x"] = inputs(model, 2)
        return True, f"{note}, {model.count_params():,} params"

    def do_wrap():
        wrapped = tfprune.wrap(state["model"], sparsity=0.5)
        tfprune.PruningController(wrapped).update(0)
        stripped = tfprune.strip(wrapped)
        wrapped_names = {
            layer.layer.name
            for layer in tfprune.layers.iter_layers(wrapped)
            if isinstance(layer, tfprune.Prunable)
        }
        rows = [r for r in tfprune.summary(stripped, print_fn=None).rows if r.name in wrapped_names]
        zeros = sum(r.params - r.nonzeros for r in rows)
        total = sum(r.params for r in rows)
        same = np.array_equal(_outputs(stripped, state["x"]), _outputs(wrapped, state["x"]))
        text = f"{len(rows)} layers, {zeros / max(total, 1):.1%} of their weights zero"
        return same, text + ("" if same else ", stripped != wrapped")

    def do_groups():
        groups = tfprune.graph.channel_groups(state["model"])
        prunable = [g for g in groups if g.prunable]
        channels = sum(g.channels for g in groups)
        fraction = sum(g.channels for g in prunable) / max(channels, 1)
        row["prunable_fraction"] = fraction
        text = f"{len(prunable)}/{len(groups)} groups, {fraction:.1%} of {channels:,} channels"
        if not prunable and groups:  # say why the first group is kept
            text += f"; {groups[0].producers[0]}: {groups[0].reason}"
        return bool(prunable), text

    def do_shrink():
        pruned = tfprune.prune_channels(state["model"], ratio=0.5, criterion="l1")
        small = tfprune.shrink(pruned)
        a, b = _outputs(pruned, state["x"]), _outputs(small, state["x"])
        diff = float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12))
        state["small"] = small
        ratio = small.count_params() / max(state["model"].count_params(), 1)
        ok = bool(np.isfinite(diff) and diff <= TOLERANCE)
        return ok, f"diff {diff:.1e}, params x{ratio:.2f}"

    def do_int8():
        if len(state["model"].inputs) != 1:
            return True, f"n/a ({len(state['model'].inputs)} inputs)"
        x = inputs(state["model"], 8, seed=1)
        texts, paths = [], []
        with tempfile.TemporaryDirectory() as tmp:
            for label, model in (("dense", state["model"]), ("shrunk", state["small"])):
                path = os.path.join(tmp, f"{label}.tflite")
                result = tfprune.export.tflite(
                    model,
                    path,
                    quantize="int8",
                    representative_data=x,
                    shrink=False,
                    verify_data=x,
                    int8_io=False,
                )
                scale = float(np.abs(_outputs(model, x)).max())
                texts.append(f"{label} err {result.verification.max_abs_error / scale:.2f}")
                paths.append(path)
            times = [
                tfprune.export.latency(p, threads=1, runs=latency_runs, warmup=3).median
                for p in paths
            ]
        row["latency_ms"] = [t * 1e3 for t in times]
        return True, (
            f"latency x{times[1] / times[0]:.2f} ({times[0] * 1e3:.2f} -> {times[1] * 1e3:.2f}"
            f" ms); " + ", ".join(texts)
        )

    keras.utils.set_random_seed(0)
    start = time.perf_counter()
    if step("build", do_build):
        step("wrap", do_wrap)
        if step("groups", do_groups) and step("shrink", do_shrink):
            step("int8", do_int8)
    row["seconds"] = round(time.perf_counter() - start, 1)
    save()
    return row


# --- the matrix --------------------------------------------------------------------------


def _load() -> dict:
    if os.path.exists(RESULTS):
        with open(RESULTS) as f:
            return json.load(f)
    return {}


def _save(rows: dict) -> None:
    tmp = RESULTS + ".tmp"
    with open(tmp, "w") as f:
        json.dump(rows, f, indent=1, sort_keys=True)
    os.replace(tmp, RESULTS)


def _worker(names: list[str], folder: str) -> None:
    """Runs models one after another in this process (TensorFlow is imported once).

    Before each model its name goes to `folder/current`; its row is written to
    `folder/<index>.json` after every step.
    """
    import keras

    for i, name in enumerate(names):
        with open(os.path.join(folder, "current"), "w") as f:
            f.write(f"{i}\n{time.time()}")
        run_model(name, os.path.join(folder, f"{i}.json"))
        keras.backend.clear_session(free_memory=True)
    with open(os.path.join(folder, "current"), "w") as f:
        f.write(f"{len(names)}\n{time.time()}")


def _finish(row: dict, problem: str | None, seconds: float) -> dict:
    for key in STEPS:
        cell = row.get(key)
        if cell is not None and cell.get("text") == "running":
            row[key] = {"ok": False, "text": problem or "stopped"}
    if "build" not in row:
        row["build"] = {"ok": False, "text": problem or "no result"}
    row.setdefault("seconds", round(seconds, 1))
    row["date"] = datetime.date.today().isoformat()
    return row


def run_isolated(names: list[str], timeout: float, done: Callable[[dict], None]) -> None:
    """Runs models in worker subprocesses, each model with its own timeout.

    One worker runs the models in turn; a model that crashes the worker or passes its
    timeout (CPU seconds of the worker, so that load from other processes does not count)
    is marked at the step it was in, and a new worker goes on with the next model.
    `done(row)` receives each model's row as it finishes.
    """
    while names:
        with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryFile() as stderr:
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", tmp, *names]
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr)
            reported, started, problem = 0, time.time(), None
            counted_index, cpu_start = 0, 0.0
            while True:
                time.sleep(1.0)
                current = os.path.join(tmp, "current")
                index, since = reported, started
                if os.path.exists(current):
                    with open(current) as f:
                        parts = f.read().split()
                    if len(parts) == 2:
                        index, since = int(parts[0]), float(parts[1])
                while reported < index:  # finished models
                    done(_finish(_read(tmp, reported, names), None, time.time() - since))
                    reported += 1
                if proc.poll() is not None:
                    if reported < len(names):
                        stderr.seek(0)
                        lines = stderr.read().decode(errors="replace").strip().splitlines()
                        problem = f"worker died (exit code {proc.returncode})" + (
                            f": {lines[-1][:120]}" if lines else ""
                        )
                    break
                if index != counted_index:  # a new model started: its CPU clock starts
                    counted_index, cpu_start = index, _cpu_seconds(proc.pid)
                if _cpu_seconds(proc.pid) - cpu_start > timeout:
                    proc.kill()
                    proc.wait()
                    problem = f"timeout after {timeout:.0f} s of CPU time"
                    break
            if reported < len(names):
                row = _read(tmp, reported, names)
                done(_finish(row, problem, time.time() - since))
                reported += 1
            names = names[reported:]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process (Linux `/proc`; wall time elsewhere).

    On a busy shared machine a model's wall time says little; its CPU time does not depend
    on what else runs.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return time.time()


def _read(folder: str, index: int, names: list[str]) -> dict:
    path = os.path.join(folder, f"{index}.json")
    if os.path.exists(path):
        with open(path) as f:
            try:
                return json.load(f)
            except json.JSONDecodeError:
                pass
    return {"model": names[index]}


def _cell(row: dict, key: str) -> str:
    cell = row.get(key)
    if cell is None:
        return "-"
    text = cell["text"].replace("|", "/")
    return ("pass: " if cell["ok"] else "**FAIL**: ") + text


def write_table(rows: dict) -> None:
    """Writes COVERAGE.md from all rows: one row per model, pass/fail per step."""
    names = [n for n in catalogue() if n in rows] + sorted(set(rows) - set(catalogue()))
    sys.path.insert(0, HERE)
    from _bench import machine

    passed = {k: sum(1 for n in names if rows[n].get(k, {}).get("ok")) for k in STEPS}
    lines = [
        "# Coverage matrix",
        "",
        "Generated by `benchmarks/coverage.py` (do not edit by hand). Every model has random",
        "weights (`weights=None` / keras-hub configs without presets) and its constant",
        "parameters (BatchNorm statistics, norm scales, biases, LayerScale) randomised. Steps:",
        "",
        "- **wrap**: `tfprune.wrap(model, 0.5)`, one mask update, `tfprune.strip`; zeros in the",
        "  wrapped layers and stripped == wrapped outputs.",
        "- **groups**: `tfprune.graph.channel_groups`: prunable / all groups, and the prunable",
        "  fraction of all channels.",
        "- **shrink**: `prune_channels(0.5, criterion='l1')` + `shrink`; largest output",
        f"  difference shrunk vs zeroed relative to the largest output (pass: <= {TOLERANCE:g}),",
        "  and the parameter ratio shrunk / dense.",
        "- **int8**: int8 export (float I/O) of dense and shrunk model, verified on 8 random",
        "  inputs (max error relative to the largest output); latency ratio shrunk / dense, 1",
        "  thread (models with one input only).",
        "",
        f"Machine: {machine()} (load when the table was written; runs are nice'd on a "
        f"shared machine, so latencies are ratios from one process). Last run: "
        f"{max(r.get('date', '') for r in rows.values())}.",
        "",
        f"Models: {len(names)}; passed per step: "
        + ", ".join(f"{k} {passed[k]}/{len(names)}" for k in STEPS)
        + ". A `-` is a step not run because an earlier one failed.",
        "",
        *(
            [f"Not run yet ({len(missing)}): " + ", ".join(missing) + ".", ""]
            if (missing := [n for n in catalogue() if n not in rows])
            else []
        ),
        "| model | " + " | ".join(STEPS) + " |",
        "| --- |" + " --- |" * len(STEPS),
    ]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(_cell(rows[name], k) for k in STEPS) + " |")
    tmp = TABLE + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, TABLE)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--models",
        default="all",
        help="'all', 'apps', 'hub', or comma-separated names (see --list)",
    )
    parser.add_argument("--only", help="run one model in this process and print its row")
    parser.add_argument("--row", help=argparse.SUPPRESS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("names", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--rerun", action="store_true", help="redo models already in the json")
    parser.add_argument("--timeout", type=float, default=900, help="CPU seconds per model")
    parser.add_argument("--list", action="store_true", help="print the model names")
    parser.add_argument("--table", action="store_true", help="only rewrite COVERAGE.md")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(catalogue()))
        return
    if args.table:
        write_table(_load())
        return
    if args.only:
        print(json.dumps(run_model(args.only, args.row), indent=1))
        return
    if args.worker:
        _worker(args.names, args.worker)
        return
    if args.models == "all":
        names = catalogue()
    elif args.models == "apps":
        names = application_names()
    elif args.models == "hub":
        names = list(HUB)
    else:
        names = [n.strip() for n in args.models.split(",") if n.strip()]
        unknown = sorted(set(names) - set(catalogue()))
        if unknown:
            parser.error(f"unknown models {unknown}; see --list")
    rows = _load()
    todo = [n for n in names if args.rerun or n not in rows]

    def done(row):
        rows = _load()
        rows[row["model"]] = row
        _save(rows)
        write_table(rows)
        print(f"{row['model']}: " + "; ".join(f"{k} {_cell(row, k)}" for k in STEPS), flush=True)

    run_isolated(todo, args.timeout, done)
    if rows:
        write_table(_load())


if __name__ == "__main__":
    main()
