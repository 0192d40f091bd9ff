"""The documentation checks that `mkdocs build --strict` cannot do.

- Every fenced code block in `docs/` is tested or says it is not: it either includes an
  example script that a test runs (`--8<-- "examples/NAME.py:section"`, pymdownx.snippets) or
  is marked `<!-- illustrative -->` on the line before it (blank lines may sit between).
- Every result table marked `<!-- from benchmarks/RESULTS.md -->` is copied from
  `benchmarks/RESULTS.md`: its header and each of its rows is a line of that file.
- The API reference hook lists exactly `tfprune.__all__`.
- The examples in the docstrings (rendered in the API reference) run as doctests.

The site itself (broken links, anchors, missing references, snippets that do not exist) is
checked by `mkdocs build --strict`, which the test command runs.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pathlib
import re

import pytest

import tfprune

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
ILLUSTRATIVE = "<!-- illustrative -->"
FROM_RESULTS = "<!-- from benchmarks/RESULTS.md -->"
FENCE = re.compile(r"^(\s*)(`{3,}(?=[^`]*$)|~{3,})")  # CommonMark: no ` after a ` fence
SNIPPET = re.compile(r'^--8<-- "(examples/(?:output/)?[\w-]+\.(?:py|txt))(?::([\w-]+))?"$')


def _load_hook(name="api_reference"):
    path = DOCS / "hooks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pages() -> list[pathlib.Path]:
    return sorted(p for p in DOCS.rglob("*.md") if "hooks" not in p.relative_to(DOCS).parts)


def code_blocks(text: str) -> list[tuple[int, str, list[str]]]:
    """(line number of the opening fence, line before it, body lines) of each fenced block."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence = match.groups()
        before = next((x.strip() for x in reversed(lines[:i]) if x.strip()), "")
        end = i + 1
        while end < len(lines) and not (
            lines[end].strip().startswith(fence[0] * len(fence))
            and not lines[end].strip().strip(fence[0])
        ):
            end += 1
        body = [x[len(indent) :] if x.startswith(indent) else x for x in lines[i + 1 : end]]
        blocks.append((i + 1, before, body))
        i = end + 1
    return blocks


def _tested_examples(tests_dir: pathlib.Path = ROOT / "tests") -> set[str]:
    """Example scripts and printed outputs that some test names in a string literal.

    A test runs `examples/NAME.py` when it quotes `"NAME"`, `"NAME.py"` or
    `"examples/NAME.py"` (whichever way it loads the script), and compares a printed output
    when it quotes `"output/NAME.txt"`.
    """
    text = "\n".join(p.read_text() for p in tests_dir.glob("test_*.py"))
    quoted = set(re.findall(r"[\"']([\w/.-]+)[\"']", text))
    examples = tests_dir.parent / "examples"
    stems = {q.removeprefix("examples/").removesuffix(".py") for q in quoted}
    scripts = {f"examples/{n}.py" for n in stems if (examples / f"{n}.py").is_file()}
    outputs = {f"examples/{q}" for q in quoted if re.fullmatch(r"output/[\w-]+\.txt", q)}
    return scripts | outputs


def block_problems(text: str, tested: set[str], root: pathlib.Path = ROOT) -> list[str]:
    """What is wrong with the code blocks of one page; empty when every block is fine."""
    problems = []
    for line, before, body in code_blocks(text):
        if before == ILLUSTRATIVE:
            continue
        includes = [SNIPPET.match(x.strip()) for x in body if x.strip()]
        if not includes or not all(includes):
            problems.append(
                f"line {line}: a code block that no test runs. Include a tested example "
                f'(--8<-- "examples/NAME.py:section") or put {ILLUSTRATIVE} on the line before.'
            )
            continue
        for match in includes:
            path, section = match.groups()
            if path not in tested:
                problems.append(f"line {line}: {path} is not run by any test in tests/.")
            elif section and (
                f"--8<-- [start:{section}]" not in (source := (root / path).read_text())
                or f"--8<-- [end:{section}]" not in source
            ):
                problems.append(f"line {line}: {path} has no section {section!r}.")
    return problems


def tables(text: str, marker: str) -> list[tuple[int, list[str]]]:
    """(line number, lines) of each markdown table that follows `marker`."""
    lines = text.splitlines()
    found = []
    for i, line in enumerate(lines):
        if line.strip() != marker:
            continue
        start = next((j for j in range(i + 1, len(lines)) if lines[j].strip()), len(lines))
        end = start
        while end < len(lines) and lines[end].startswith("|"):
            end += 1
        found.append((start + 1, lines[start:end]))
    return found


def table_problems(text: str, results: str) -> list[str]:
    """Rows of marked result tables that are not lines of RESULTS.md."""
    known = set(results.splitlines())
    problems = []
    for line, rows in tables(text, FROM_RESULTS):
        if not rows:
            problems.append(f"line {line}: {FROM_RESULTS} is not followed by a table.")
        problems += [
            f"line {line + k}: not in RESULTS.md: {r}" for k, r in enumerate(rows) if r not in known
        ]
    return problems


def test_block_checker_flags_untested_blocks_and_honours_the_marker(tmp_path):
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "a.py").write_text("# --8<-- [start:s]\nx = 1\n# --8<-- [end:s]\n")
    text = "\n".join(
        [
            "```python",  # 1: untested
            "x = 1",
            "```",
            ILLUSTRATIVE,
            "",
            "```bash",  # 6: illustrative
            "pip install tfprune",
            "```",
            "```python",  # 9: tested, section exists
            '--8<-- "examples/a.py:s"',
            "```",
            "    ```python",  # 12: indented (in a list), missing section
            '    --8<-- "examples/a.py:t"',
            "    ```",
            "````",  # 15: not run by a test
            '--8<-- "examples/b.py"',
            "````",
            "```` ```python ````: inline code, not a fence",
            "```text",  # 19: a printed output that a test compares
            '--8<-- "examples/output/a.txt"',
            "```",
        ]
    )
    tested = {"examples/a.py", "examples/output/a.txt"}
    assert block_problems(text, tested, tmp_path) == [
        "line 1: a code block that no test runs. Include a tested example "
        f'(--8<-- "examples/NAME.py:section") or put {ILLUSTRATIVE} on the line before.',
        "line 12: examples/a.py has no section 't'.",
        "line 15: examples/b.py is not run by any test in tests/.",
    ]


def test_tested_examples_are_the_scripts_and_outputs_that_tests_name(tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "examples").mkdir()
    for name in ("quickstart", "export_tflite", "jax_training", "untested"):
        (tmp_path / "examples" / f"{name}.py").write_text("")
    (tmp_path / "tests" / "test_x.py").write_text(
        '_load("quickstart")\nrun("examples/export_tflite.py")\n'
        "_example('jax_training')\n"
        '(EXAMPLES / "output/quickstart.txt").read_text()\n'
        'x = "not_an_example"\n'
    )
    (tmp_path / "tests" / "helper.py").write_text('_load("untested")\n')
    assert _tested_examples(tmp_path / "tests") == {
        "examples/quickstart.py",
        "examples/export_tflite.py",
        "examples/jax_training.py",
        "examples/output/quickstart.txt",
    }


def test_table_checker_flags_rows_not_in_results():
    results = "| a | b |\n| --- | --- |\n| 1 | 2 |\n"
    text = f"{FROM_RESULTS}\n\n| a | b |\n| --- | --- |\n| 1 | 3 |\n\n| 9 | 9 |\n"
    assert table_problems(text, results) == ["line 5: not in RESULTS.md: | 1 | 3 |"]
    assert table_problems(f"text\n{FROM_RESULTS}\n", results) == [
        f"line 3: {FROM_RESULTS} is not followed by a table."
    ]


def test_every_code_block_runs_in_the_tests_or_is_marked_illustrative():
    tested = _tested_examples()
    problems = {str(p.relative_to(ROOT)): block_problems(p.read_text(), tested) for p in _pages()}
    assert {k: v for k, v in problems.items() if v} == {}


def test_result_tables_are_copied_from_results_md():
    results = RESULTS.read_text()
    problems = {str(p.relative_to(ROOT)): table_problems(p.read_text(), results) for p in _pages()}
    assert {k: v for k, v in problems.items() if v} == {}


def test_api_reference_has_one_page_per_public_name():
    hook = _load_hook()
    assert hook.public_names() == tfprune.__all__
    nav = hook.nav_entries(tfprune.__all__)
    assert nav[0] == {"Overview": "api/index.md"}
    assert sorted(v for entry in nav[1:] for v in entry.values()) == sorted(
        f"api/{n}.md" for n in tfprune.__all__
    )
    assert hook.page("wrap") == "::: tfprune.wrap\n"
    assert hook.is_module("export") and hook.is_module("callbacks") and not hook.is_module("wrap")
    # `tfprune.shrink` is the function, though tfprune/shrink.py exists: its own path.
    assert not hook.is_module("shrink")
    assert hook.page("shrink") == "::: tfprune.shrink.shrink\n"


def test_api_reference_index_lists_names_with_their_first_docstring_line(tmp_path):
    pkg = tmp_path / "tfprune"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "from tfprune import mod, sub\n"
        "from tfprune.mod import run\n"
        'def here():\n    """Defined here.\n\n    More."""\n'
        '__all__ = ["run", "here", "mod", "sub"]\n'
    )
    (pkg / "mod.py").write_text('"""A module | with a bar."""\ndef run():\n    """Runs."""\n')
    (pkg / "sub" / "__init__.py").write_text("x = 1\n")
    hook = _load_hook()
    init = pkg / "__init__.py"
    assert [hook.summary(n, init) for n in hook.public_names(init)] == [
        "Runs.",
        "Defined here.",
        "A module | with a bar.",
        "",
    ]
    assert hook.index_page(hook.public_names(init), init).splitlines()[6:17] == [
        "| name | what it does |",
        "| --- | --- |",
        "| [`tfprune.run`](run.md) | Runs. |",
        "| [`tfprune.here`](here.md) | Defined here. |",
        "",
        "## Modules",
        "",
        "| name | what it holds |",
        "| --- | --- |",
        "| [`tfprune.mod`](mod.md) | A module &#124; with a bar. |",
        "| [`tfprune.sub`](sub.md) |  |",
    ]


def test_api_reference_hook_rejects_a_computed_all(tmp_path):
    init = tmp_path / "__init__.py"
    init.write_text("names = ['a']\n__all__ = names + ['b']\n")
    with pytest.raises(ValueError, match=r"Received: __all__=names \+ \['b'\]"):
        _load_hook().public_names(init)


def test_pages_missing_from_nav_are_added_to_it(tmp_path):
    for path, text in {
        "index.md": "# Home\n",
        "guides/a.md": "# A guide\n",
        "guides/new.md": "intro\n# New guide\n",
        "faq.md": "no heading\n",
        "hooks/x.md": "# not a page\n",
    }.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    nav = [
        {"Home": "index.md"},
        {"Guides": [{"A": "guides/a.md"}]},
        {"API reference": "api/index.md"},
    ]
    assert _load_hook("nav_pages").add_missing(nav, tmp_path) == [
        {"Home": "index.md"},
        {"Guides": [{"A": "guides/a.md"}, {"New guide": "guides/new.md"}]},
        {"faq": "faq.md"},
        {"API reference": "api/index.md"},
    ]


def _documented_modules() -> list[str]:
    names = []
    for path in sorted((ROOT / "tfprune").rglob("*.py")):
        if ">>>" in path.read_text():
            parts = path.relative_to(ROOT).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


@pytest.mark.parametrize("name", _documented_modules())
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    assert result.attempted > 0


def _load_plots():
    spec = importlib.util.spec_from_file_location("plots", ROOT / "benchmarks" / "plots.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plot_script_reads_the_nth_table_of_a_section():
    table = _load_plots().table
    text = "\n".join(
        [
            "# A",
            "| x | y |",
            "| --- | --- |",
            "| 1 | 2 |",
            "",
            "| x | z |",
            "| :-- | --: |",
            "| 3 | 4 |",
            "## A.1",
            "| q |",
            "| --- |",
            "| 5 |",
            "# B",
            "| x |",
            "| --- |",
            "| 9 |",
        ]
    )
    assert table(text, "A") == [{"x": "1", "y": "2"}]
    assert table(text, "A", 1) == [{"x": "3", "z": "4"}]
    assert table(text, "A", 2) == [{"q": "5"}]
    assert table(text, "B") == [{"x": "9"}]
    with pytest.raises(ValueError, match=r"has 3 tables\. Received: index=3"):
        table(text, "A", 3)
    with pytest.raises(ValueError, match=r"Received: heading='C'"):
        table(text, "C")


def test_plot_script_reads_the_latest_one_shot_table_of_each_model():
    tables = _load_plots().oneshot_tables
    head = "| target | method | one-shot {} | calibration (s) | after 1 epoch of fine-tuning |"
    text = "\n".join(
        [
            "## One-shot pruning: SparseGPT (2026-01-01)",
            "",
            "Cost (a d x d layer):",
            "",
            "| d | s |",
            "| --- | --- |",
            "| 8 | 1 |",
            "",
            "CNN (`cnn`), trained: test accuracy 0.87. Pruned.",
            "",
            head.format("accuracy"),
            "| --- | --- | ---: | ---: | ---: |",
            "| 50 % | Wanda | 0.80 | 1.0 | 0.86 |",
            "",
            "## Other (2026-01-01)",
            "",
            "LM (`lm`): held-out perplexity 9.0.",
            "",
            head.format("perplexity"),
            "| 50 % | Wanda | 1.0 | 1.0 | 1.0 |",
            "",
            "## One-shot pruning: SparseGPT (2026-01-02)",
            "",
            "CNN (`cnn`), trained: test accuracy 0.88. Pruned.",
            "",
            head.format("accuracy"),
            "| --- | --- | ---: | ---: | ---: |",
            "| 2:4 | SparseGPT | 0.85 | 2.0 | 0.87 |",
            "",
            "LM (`lm`), 4 blocks: held-out perplexity 4.25 per byte.",
            "",
            head.format("perplexity"),
            "| --- | --- | ---: | ---: | ---: |",
            "| 70 % | LAMP | 6.5 | 3.0 | 5.0 |",
        ]
    )
    row = {"target": "2:4", "method": "SparseGPT", "one-shot accuracy": "0.85"}
    lm = {"target": "70 %", "method": "LAMP", "one-shot perplexity": "6.5"}
    out = tables(text)
    assert list(out) == ["CNN", "LM"]
    assert out["CNN"][:2] == ("test accuracy", 0.88)
    assert out["LM"][:2] == ("perplexity", 4.25)
    assert [{k: r[k] for k in row} for r in out["CNN"][2]] == [row]
    assert [{k: r[k] for k in lm} for r in out["LM"][2]] == [lm]


def test_plot_script_draws_every_figure_from_results_md(tmp_path):
    plots = _load_plots()
    names = [f"{name}.png" for name in plots.FIGURES]
    paths = plots.main(["--out", str(tmp_path)])
    assert [p.name for p in paths] == names
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)  # no temp files left
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert all((DOCS / "img" / name).is_file() for name in names)  # committed for the site


def test_readme_test_command_is_what_ci_runs_and_builds_the_docs():
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert f"```bash\n{ci}\n```" in (ROOT / "README.md").read_text()
    assert "&& mkdocs build --strict && python -m pytest" in ci


def test_readme_links_point_at_files_in_the_repository():
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    missing = [x for x in links if "://" not in x and not (ROOT / x).exists()]
    assert missing == []
