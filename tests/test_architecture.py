"""The house rules that can be checked mechanically: floors, ``__all__``, module docstrings."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import medtwin

SRC = Path(medtwin.__file__).parent

# Lower floors never import higher ones (ARCHITECTURE.md).
FLOORS: dict[str, int] = {
    "errors": 0,
    "records": 0,
    "codes": 0,
    "sim": 0,
    "service": 0,
    "glucose": 1,
    "dosing": 1,
    "monitoring": 1,
    "hospital": 1,
    "risk": 1,
    "trials": 1,
    "twin": 2,
    "interop": 2,
    "store": 2,
    "crypto": 2,
    "cli": 3,
    "server": 3,
    "security": 3,
}


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "migrations" not in p.parts)


def _top_package(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def _imported_medtwin_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "medtwin" and len(parts) > 1:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_lower_floors_never_import_higher_ones(path: Path) -> None:
    own = _top_package(path)
    if own not in FLOORS:
        return
    for imported in _imported_medtwin_packages(path):
        assert imported in FLOORS, f"{path.name} imports medtwin.{imported}, which has no floor in FLOORS"
        assert FLOORS[imported] <= FLOORS[own], (
            f"medtwin.{own} (floor {FLOORS[own]}) imports medtwin.{imported} (floor {FLOORS[imported]})"
        )


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_every_module_has_a_docstring_and_all(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    assert ast.get_docstring(tree), f"{path} has no module docstring"
    if path.name == "__main__.py":
        return
    targets: list[ast.expr] = []
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets.extend(node.targets)
        elif isinstance(node, ast.AnnAssign):
            targets.append(node.target)
    has_all = any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets)
    assert has_all, f"{path} declares no __all__"


def test_every_public_name_in_all_exists() -> None:
    for info in pkgutil.walk_packages(medtwin.__path__, "medtwin."):
        if ".migrations" in info.name or info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name in getattr(module, "__all__", []):
            assert hasattr(module, name), f"{info.name}.__all__ names {name!r}, which does not exist"
