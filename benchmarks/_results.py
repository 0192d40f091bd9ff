"""Shared by the benchmark scripts: where results go and how they are added."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def append_results(section: str) -> None:
    """Appends a markdown section to benchmarks/RESULTS.md.

    Args:
        section: The text to append (a heading, the command, the table).
    """
    with open(RESULTS, "a") as f:
        f.write(section)


def publish(lines: list[str], write: bool) -> None:
    """Prints a markdown section and, when `write`, appends it to benchmarks/RESULTS.md.

    Args:
        lines: The section's lines: heading, conditions, table, notes.
        write: Append to RESULTS.md (else print only).
    """
    text = "\n".join(lines)
    print(text)
    if write:
        append_results("\n" + text)
