"""Every relative link and repository path in README.md and docs/ points at a file of this repository.

A fresh clone has only the repository: a link to the developers' shared folder (``../shared/...``) or to a file
that was renamed is a dead end for a reader. Checked: Markdown links ``[text](target)`` that are not URLs or
anchors, and paths written in backticks that start at the repository root (``src/``, ``docs/``, ``tests/``,
``bench/``); any mention of the shared folder (``shared/...``) is refused.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_REPO_PATH = re.compile(r"`((?:src|docs|tests|bench)/[\w./-]+)`")
_SHARED = re.compile(r"(?<![\w/])(?:\.\./)*shared/[\w./-]+")


def _inside(path: Path, root: Path) -> bool:
    resolved = path.resolve()
    return resolved.exists() and (resolved == root or root in resolved.parents)


def problems(doc: Path, root: Path = ROOT) -> list[str]:
    """The dead links and paths of *doc* (in the repository at *root*) as ``line: target``."""
    text = doc.read_text(encoding="utf-8")
    out: list[str] = []

    def where(pos: int) -> int:
        return text.count("\n", 0, pos) + 1

    for m in _LINK.finditer(text):
        target = m.group(1)
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL or an anchor on the same page
        path = target.split("#", 1)[0]
        if path and not _inside(doc.parent / path, root):
            out.append(f"{where(m.start())}: link {target}")
    for m in _REPO_PATH.finditer(text):
        if not _inside(root / m.group(1).rstrip("."), root) and "<" not in m.group(1):
            out.append(f"{where(m.start())}: path {m.group(1)}")
    out += [f"{where(m.start())}: outside the repository {m.group(0)}" for m in _SHARED.finditer(text)]
    return out


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_links_and_paths_resolve_inside_the_repository(doc: Path) -> None:
    assert problems(doc) == []


def test_the_checker_finds_dead_links(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "architecture.md").write_text("# a\n")
    doc = tmp_path / "docs" / "probe.md"
    doc.write_text(
        "[ok](architecture.md) [gone](nowhere.md) [web](https://example.org) [anchor](#x) [up](../../x.md)\n"
        "`src/medtwin/nosuch.py` `docs/architecture.md` see ../shared/ARCHITECTURE.md\n",
        encoding="utf-8",
    )
    assert problems(doc, tmp_path) == [
        "1: link nowhere.md",
        "1: link ../../x.md",
        "2: path src/medtwin/nosuch.py",
        "2: outside the repository ../shared/ARCHITECTURE.md",
    ]
