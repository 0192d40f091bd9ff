"""MkDocs hook: pages under `docs/` that `nav` in mkdocs.yml does not list are added to it.

A page in `docs/guides/` goes at the end of the "Guides" section, any other page at the top
level before the API reference, titled by its first `# ` heading. So a guide merged without
a nav line is still on the site; list it in `nav` to choose its place and title.
"""

from __future__ import annotations

from pathlib import Path

GUIDES_TITLE = "Guides"
API_TITLE = "API reference"
SKIP_DIRS = ("hooks",)


def listed(nav) -> set[str]:
    """Every page path that a nav structure (lists, dicts, strings) names."""
    if isinstance(nav, str):
        return {nav}
    if isinstance(nav, dict):
        return set().union(*(listed(v) for v in nav.values()))
    if isinstance(nav, list):
        return set().union(*(listed(v) for v in nav)) if nav else set()
    return set()


def title(page: Path) -> str:
    """The text of a page's first `# ` heading, or its file name without `.md`."""
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return page.stem


def add_missing(nav: list, docs_dir: Path) -> list:
    """Returns `nav` with the pages of `docs_dir` it does not list added (see module doc)."""
    known = listed(nav)
    pages = sorted(
        p.relative_to(docs_dir).as_posix()
        for p in docs_dir.rglob("*.md")
        if not set(p.relative_to(docs_dir).parts) & set(SKIP_DIRS)
    )
    missing = [p for p in pages if p not in known]
    guides = next((e for e in nav if isinstance(e, dict) and GUIDES_TITLE in e), None)
    api = next((i for i, e in enumerate(nav) if isinstance(e, dict) and API_TITLE in e), len(nav))
    top = []
    for path in missing:
        entry = {title(docs_dir / path): path}
        if path.startswith("guides/") and guides is not None:
            guides[GUIDES_TITLE].append(entry)
        else:
            top.append(entry)
    return nav[:api] + top + nav[api:]


def on_config(config):
    """Adds the pages that `nav` does not list (a no-op without an explicit `nav`)."""
    if config["nav"]:
        config["nav"] = add_missing(config["nav"], Path(config["docs_dir"]))
    return config
