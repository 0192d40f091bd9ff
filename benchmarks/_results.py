"""Shared by the benchmark scripts: where results go and how they are added."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def append_results(section: str) -> None:
    """Appends a markdown section to benchmarks/RESULTS.md.

    Args:
        section: The text to append (a heading, the command, the table).
    """
    text = RESULTS.read_text() if RESULTS.exists() else ""
    # One blank line between sections, whatever the file or the section ends with.
    RESULTS.write_text(text.rstrip("\n") + "\n\n" + section.strip("\n") + "\n")


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
