"""The ```python blocks of the dosing docs run as written (docs that cannot rot)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from medtwin.dosing import parse_case

ROOT = Path(__file__).resolve().parents[2]
DOCS = [
    ROOT / "docs" / "dosing-model-format.md",
    *(
        ROOT / "docs" / "models" / f"{name}.md"
        for name in ("goti2018_vancomycin", "thomson2009_vancomycin", "buelga2005_vancomycin", "xuan2003_gentamicin")
    ),
]
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks(path: Path) -> list[str]:
    return _BLOCK.findall(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_dosing_doc_has_python_examples(path: Path) -> None:
    assert python_blocks(path), f"{path} has no ```python example"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_python_blocks_run(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # examples may write files (plots, model files)
    namespace: dict[str, object] = {"__name__": f"doc_{path.stem}"}
    for i, block in enumerate(python_blocks(path)):
        code = compile(block, f"{path.name}[python block {i}]", "exec")
        exec(code, namespace)  # running our own documentation is the point


def test_json_case_example_in_the_format_doc_is_a_valid_case() -> None:
    text = DOCS[0].read_text(encoding="utf-8")
    blocks = re.findall(r"^```json\n(.*?)^```", text, re.DOTALL | re.MULTILINE)
    assert blocks
    for block in blocks:
        case = parse_case(json.loads(block), source="docs/dosing-model-format.md")
        assert case.doses[1].time_h == pytest.approx(24.2)  # "2026-11-02T08:12:00Z" from the origin
        assert any("converted 84 umol/L" in n for n in case.notes)
