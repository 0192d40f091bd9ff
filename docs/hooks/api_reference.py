"""MkDocs hook: the API reference, one generated page per name in `tfprune.__all__`.

The names are read from `tfprune/__init__.py` without importing tfprune (no TensorFlow at
build time), so a name another engineer adds to `__all__` gets its page and its nav entry
with no edit to the docs. Each page is a mkdocstrings directive (`::: tfprune.<name>`), so a
name whose docstring cannot be rendered, or that does not resolve, fails `mkdocs build
--strict`.
"""

from __future__ import annotations

import ast
from pathlib import Path

from mkdocs.structure.files import File, Files

PACKAGE = "tfprune"
API_DIR = "api"
NAV_TITLE = "API reference"
INIT = Path(__file__).resolve().parents[2] / PACKAGE / "__init__.py"


def public_names(init: Path = INIT) -> list[str]:
    """The names listed in a package's `__all__`, read statically from its `__init__.py`.

    Args:
        init: Path of the package's `__init__.py`.

    Returns:
        The names, in the order of `__all__`.

    Raises:
        ValueError: If `__all__` is missing or not a literal list or tuple of strings.
    """
    value = None
    for node in ast.parse(init.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            value = node.value
    try:
        names = ast.literal_eval(value) if value is not None else None
    except ValueError:
        names = None
    if isinstance(names, list | tuple) and all(isinstance(n, str) for n in names):
        return list(names)
    received = ast.unparse(value) if value is not None else None
    raise ValueError(
        f"The API reference needs `__all__` in {init} as a literal list of strings, e.g. "
        f'__all__ = ["wrap", "strip"]. Received: __all__={received}'
    )


def sources(init: Path = INIT) -> dict[str, str]:
    """Where each name of the package is imported from, read from its `__init__.py`.

    Args:
        init: Path of the package's `__init__.py`.

    Returns:
        `{name: module}`: `"tfprune"` for a submodule (`from tfprune import callbacks`),
        the defining module for an object (`from tfprune.surgery import wrap` gives
        `{"wrap": "tfprune.surgery"}`). Names defined in `__init__.py` itself are absent.
    """
    found = {}
    for node in ast.parse(init.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.update({a.asname or a.name: node.module for a in node.names})
    return found


def is_module(name: str, init: Path = INIT) -> bool:
    """Whether `tfprune.<name>` is a submodule (imported as `from tfprune import <name>`)."""
    return sources(init).get(name) == PACKAGE


def target(name: str, init: Path = INIT) -> str:
    """The mkdocstrings identifier of a public name.

    `tfprune.<name>`, except for an object imported from a submodule of the same name
    (`from tfprune.shrink import shrink`): read statically, `tfprune.shrink` is that module,
    so the identifier is the object's own path, `tfprune.shrink.shrink`.
    """
    module = sources(init).get(name, PACKAGE)
    if module != PACKAGE and module == f"{PACKAGE}.{name}":
        return f"{module}.{name}"
    return f"{PACKAGE}.{name}"


def page_path(name: str) -> str:
    """The docs path of a name's reference page, e.g. `api/wrap.md`."""
    return f"{API_DIR}/{name}.md"


def page(name: str, init: Path = INIT) -> str:
    """The markdown of a name's reference page: one mkdocstrings directive."""
    return f"::: {target(name, init)}\n"


def _module_file(module: str, init: Path) -> Path:
    """The source file of `tfprune.x.y`: `tfprune/x/y.py` or `tfprune/x/y/__init__.py`."""
    relative = Path(*module.split(".")[1:])
    path = init.parent / relative.with_suffix(".py")
    return path if path.is_file() else init.parent / relative / "__init__.py"


def summary(name: str, init: Path = INIT) -> str:
    """The first line of a public name's docstring, read statically ("" if it has none)."""
    source = sources(init).get(name)
    if source == PACKAGE:  # a submodule: its module docstring
        node = ast.parse(_module_file(f"{PACKAGE}.{name}", init).read_text())
    else:  # a class or function, defined in a submodule or in __init__.py itself
        path = init if source is None else _module_file(source, init)
        defs = (ast.FunctionDef, ast.ClassDef)
        body = ast.parse(path.read_text()).body
        node = next((n for n in body if isinstance(n, defs) and n.name == name), None)
    doc = ast.get_docstring(node) if node is not None else None
    return doc.strip().splitlines()[0] if doc else ""


def index_page(names: list[str], init: Path = INIT) -> str:
    """The markdown of the reference's overview: classes and functions, then modules."""
    modules = [n for n in names if is_module(n, init)]
    objects = [n for n in names if not is_module(n, init)]

    def entry(n):
        return f"| [`{PACKAGE}.{n}`]({n}.md) | {summary(n, init).replace('|', '&#124;')} |"

    lines = [
        "# API reference",
        "",
        f"Everything in `{PACKAGE}.__all__`, rendered from the docstrings.",
        "",
        "## Functions and classes",
        "",
        "| name | what it does |",
        "| --- | --- |",
        *(entry(n) for n in objects),
        "",
        "## Modules",
        "",
        "| name | what it holds |",
        "| --- | --- |",
        *(entry(n) for n in modules),
        "",
    ]
    return "\n".join(lines)


def nav_entries(names: list[str]) -> list[dict[str, str]]:
    """The nav children of the API reference: the overview, then one entry per name."""
    objects = [n for n in names if not is_module(n)]
    modules = [n for n in names if is_module(n)]
    return [
        {"Overview": f"{API_DIR}/index.md"},
        *({f"{PACKAGE}.{n}": page_path(n)} for n in objects + modules),
    ]


def on_config(config):
    """Expands the nav entry `API reference: api/index.md` into one entry per name."""
    nav = config["nav"] or []
    for i, entry in enumerate(nav):
        if isinstance(entry, dict) and NAV_TITLE in entry:
            nav[i] = {NAV_TITLE: nav_entries(public_names())}
    return config


def on_files(files: Files, config) -> Files:
    """Adds the generated reference pages to the site's files."""
    names = public_names()
    files.append(File.generated(config, f"{API_DIR}/index.md", content=index_page(names)))
    for name in names:
        files.append(File.generated(config, page_path(name), content=page(name)))
    return files
