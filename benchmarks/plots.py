"""The documentation's plots, drawn from the tables in benchmarks/RESULTS.md (and the schedules).

Every figure in `docs/img/` comes from here, so a plot shows the numbers of the table next to
it in the guide; rerun after a benchmark appends new results:

    python benchmarks/plots.py            # writes docs/img/*.png
    python benchmarks/plots.py --out DIR
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import tfprune

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
OUT = HERE.parent / "docs" / "img"
FIGURES = (
    "schedules",
    "accuracy_vs_sparsity",
    "shrink_size_latency",
    "lottery",
    "accuracy_vs_macs",
    "oneshot",
)


def table(text: str, heading: str, index: int = 0) -> list[dict[str, str]]:
    """The rows of the `index`-th markdown table under the first heading starting with `heading`.

    Args:
        text: Markdown (the content of RESULTS.md).
        heading: The start of the heading's text, without the `#`s.
        index: Which table of the section (0 = the first), counted up to the next heading of
            the same or a higher level.

    Returns:
        One dict per data row, keyed by the header's cells.

    Raises:
        ValueError: If the heading or the table does not exist.
    """
    lines = text.splitlines()
    start = next(
        (
            i
            for i, x in enumerate(lines)
            if x.startswith("#") and x.lstrip("#").strip().startswith(heading)
        ),
        None,
    )
    if start is None:
        raise ValueError(
            f"No heading starting with {heading!r} in RESULTS.md. Received: heading={heading!r}"
        )
    level = len(lines[start]) - len(lines[start].lstrip("#"))
    tables, current = [], None
    for line in lines[start + 1 :]:
        if line.startswith("#") and len(line) - len(line.lstrip("#")) <= level:
            break
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if current is None:
                current = [cells]
                tables.append(current)
            elif not all(set(c) <= set("-: ") for c in cells):
                current.append(cells)
        else:
            current = None
    if index >= len(tables):
        raise ValueError(
            f"Section {heading!r} of RESULTS.md has {len(tables)} tables. Received: index={index}"
        )
    header, *rows = tables[index]
    return [dict(zip(header, row)) for row in rows]


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110, metadata={"Software": None})
    plt.close(fig)
    os.replace(tmp, path)


def plot_schedules(path: Path) -> None:
    """Target sparsity per step: polynomial decay (power 3) and constant, as used in the guides."""
    steps = range(0, 3001, 10)
    schedules = {
        "PolynomialDecay(0.0, 0.9, begin_step=0, end_step=2000)": (
            tfprune.schedules.PolynomialDecay(0.0, 0.9, begin_step=0, end_step=2000)
        ),
        "PolynomialDecay(0.0, 0.9, 500, 2500, power=1)": (
            tfprune.schedules.PolynomialDecay(0.0, 0.9, 500, 2500, power=1)
        ),
        "ConstantSparsity(0.9, begin_step=1000)": tfprune.schedules.ConstantSparsity(0.9, 1000),
    }
    fig, ax = plt.subplots(figsize=(9, 3.4))
    for label, schedule in schedules.items():
        target, values = 0.0, []
        for step in steps:
            should_prune, sparsity = schedule(step)
            target = sparsity if should_prune else target
            values.append(target)
        ax.step(list(steps), values, where="post", label=label)
    ax.set(xlabel="training step", ylabel="mask sparsity", ylim=(-0.02, 1.0))
    ax.set_title("Sparsity schedules (masks update every 100 steps)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_accuracy(text: str, path: Path) -> None:
    """Test accuracy vs hidden-kernel sparsity: tfprune layer/global scope and tfmot (seed 0)."""
    rows = table(text, "Accuracy after pruning")
    dense = rows[0]
    points = sorted((float(r["hidden-kernel sparsity"].rstrip(" %")), r) for r in rows[1:])
    columns = {
        "tfprune, layer scope": float(dense["tfprune, layer scope"].split()[0]),
        "tfprune, global scope": float(dense["tfprune, layer scope"].split()[0]),
        "tfmot prune_low_magnitude": float(dense["tfmot prune_low_magnitude"].split()[0]),
    }
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for column, dense_acc in columns.items():
        xs = [0.0] + [s for s, _ in points]
        ys = [dense_acc] + [float(r[column]) for _, r in points]
        ax.plot(xs, ys, marker="o", label=column)
    ax.set(xlabel="sparsity of the hidden kernels (%)", ylabel="test accuracy")
    ax.set_title("Fashion-MNIST CNN, 10 epochs (benchmarks/accuracy.py, seed 0)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_shrink(text: str, path: Path) -> None:
    """int8 file size and 1-thread latency before and after channel pruning + shrink."""
    rows = table(text, "Structured vs unstructured pruning")
    labels = [r["model"].split(" (")[0] for r in rows]
    size = [float(r["int8 file"].split()[0]) for r in rows]
    latency = [float(r["int8 latency, 1 thread"].split()[0]) for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, values, unit in ((axes[0], size, "int8 file (KB)"), (axes[1], latency, "ms")):
        bars = ax.barh(labels, values, color=["tab:gray"] + ["tab:blue"] * 4 + ["tab:orange"] * 2)
        ax.bar_label(bars, fmt="%g", fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(unit)
    axes[0].set_title("int8 TFLite file")
    axes[1].set_title("int8 latency, LiteRT, 1 thread")
    axes[1].set_yticklabels([])
    fig.suptitle("Fashion-MNIST VGG-style (benchmarks/structured.py)", fontsize=10)
    _save(fig, path)


def plot_lottery(text: str, path: Path) -> None:
    """Test accuracy vs weights remaining: tickets, random reinit, random masks."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, (index, title) in zip(axes, ((0, "Fashion-MNIST"), (1, "MNIST-1D"))):
        rows = table(text, "Lottery tickets", index)
        remaining = [float(r["weights remaining"].rstrip(" %")) for r in rows]
        for column in ("ticket", "reinit", "random mask"):
            ax.plot(
                remaining, [float(r[f"{column}: test acc"]) for r in rows], marker=".", label=column
            )
        ax.set_xscale("log")
        ax.set_xticks([100, 50, 20, 10, 5])
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.invert_xaxis()
        ax.set(xlabel="weights remaining (%)", ylabel="test accuracy", title=title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("IMP, rewinding to initialisation (benchmarks/lottery.py)", fontsize=10)
    _save(fig, path)


def plot_methods(text: str, path: Path) -> None:
    """Accuracy change vs MACs removed: channel pruning, unstructured, and the learned methods."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    rows = table(text, "Structured vs unstructured pruning")
    dense = float(rows[0]["test acc (Keras)"])
    for marker, prefix in (("o", "channel"), ("x", "unstructured")):
        picked = [r for r in rows if r["model"].startswith(prefix)]
        xs = [100 * (1 - 1 / float(r["MAC ratio"].rstrip("x"))) for r in picked]
        ys = [100 * (float(r["test acc (Keras)"]) - dense) for r in picked]
        ax.scatter(xs, ys, marker=marker, label=f"{prefix} (VGG-style, structured.py)")
    learned = (
        (0, "L0 gates, shrunk + fine-tune", "L0 gates (LeNet-300-100)", "tab:green"),
        (1, "group lasso, shrunk + fine-tune", "group lasso (LeNet-5)", "tab:purple"),
        (2, "slimming", "slimming (VGG)", "tab:red"),
    )
    for index, prefix, label, color in learned:
        rows = table(text, "Learned sparsity on Fashion-MNIST", index)
        for name, marker, suffix in ((prefix, "s", ""), ("magnitude", "^", ": magnitude control")):
            picked = [r for r in rows if r["model"].startswith(name)]
            xs = [float(r["MACs removed"].rstrip("%")) for r in picked]
            ys = [float(r["vs dense (pt)"]) for r in picked]
            ax.scatter(xs, ys, marker=marker, color=color, label=label + suffix, alpha=0.7)
    ax.axhline(0, color="gray", lw=0.8)
    ax.axhline(-1, color="gray", lw=0.8, ls="--")
    ax.set(xlabel="MACs removed (%)", ylabel="test accuracy vs dense (points)")
    ax.set_title("Fashion-MNIST: what each method removed and what it cost", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3)
    _save(fig, path)


def oneshot_tables(text: str) -> dict[str, tuple[str, float, list[dict[str, str]]]]:
    """The latest one-shot table of each model in the "One-shot pruning" sections.

    `benchmarks/oneshot.py` writes each model's table after a one-line paragraph that starts
    with the model's name (up to " (") and gives its dense "test accuracy 0.8712" or
    "perplexity 2.345".

    Args:
        text: Markdown (the content of RESULTS.md).

    Returns:
        `{model: (metric, dense value, rows)}`, `metric` being "test accuracy" or
        "perplexity"; a later section replaces an earlier table of the same model.
    """
    out = {}
    for section in re.split(r"\n(?=## )", text):
        if not section.startswith("## One-shot pruning"):
            continue
        heading = section.splitlines()[0].lstrip("#").strip()
        captions = re.findall(r"^([^|\n].*)\n\n\|", section, flags=re.M)  # one per table
        for index, caption in enumerate(captions):
            rows = table(section, heading, index)
            dense = re.search(r"(test accuracy|perplexity) ([\d.]+[\d])", caption)
            if "method" in rows[0] and dense is not None:
                out[caption.split(" (")[0]] = (dense.group(1), float(dense.group(2)), rows)
    return out


def plot_oneshot(text: str, path: Path) -> None:
    """One-shot accuracy (perplexity) per method and target, without and with fine-tuning."""
    tables = oneshot_tables(text)
    fig, axes = plt.subplots(1, len(tables), figsize=(4.2 * len(tables), 3.8), squeeze=False)
    targets = ["dense", "50 %", "70 %", "2:4"]
    colors = {"magnitude": "tab:gray", "LAMP": "tab:green", "Wanda": "tab:orange"}
    for ax, (model, (metric, dense, rows)) in zip(axes[0], tables.items()):
        oneshot = next(c for c in rows[0] if c.startswith("one-shot"))
        tuned = next(c for c in rows[0] if c.startswith("after"))
        for method in dict.fromkeys(r["method"] for r in rows):
            color = colors.get(method, "tab:blue")
            picked = {r["target"]: r for r in rows if r["method"] == method}
            for column, style, label in ((oneshot, "-", method), (tuned, "--", None)):
                line = [t for t in ("50 %", "70 %") if t in picked]
                xs = [0] + [targets.index(t) for t in line]
                ys = [dense] + [float(picked[t][column]) for t in line]
                ax.plot(xs, ys, style, marker="o", color=color, label=label)
                if "2:4" in picked:
                    fill = color if style == "-" else "none"
                    y = float(picked["2:4"][column])
                    ax.plot(3, y, marker="s", color=color, markerfacecolor=fill)
        ax.set_xticks(range(len(targets)), targets)
        lower = " (lower is better)" if metric == "perplexity" else ""
        ax.set(xlabel="sparsity of the pruned kernels", ylabel=metric + lower, title=model)
        ax.grid(alpha=0.3)
    axes[0][0].legend(
        fontsize=8, title="solid, filled: one shot\ndashed, hollow: + 1 epoch", title_fontsize=8
    )
    fig.suptitle("One-shot pruning from 256 calibration examples (benchmarks/oneshot.py)")
    _save(fig, path)


def main(argv=None) -> list[Path]:
    """Writes the figures; returns their paths."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="output folder (default docs/img)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    text = RESULTS.read_text()
    paths = [args.out / f"{name}.png" for name in FIGURES]
    plot_schedules(paths[0])
    plot_accuracy(text, paths[1])
    plot_shrink(text, paths[2])
    plot_lottery(text, paths[3])
    plot_methods(text, paths[4])
    plot_oneshot(text, paths[5])
    for p in paths:
        print(p)
    return paths


if __name__ == "__main__":
    main()
