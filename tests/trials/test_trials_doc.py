"""The ```python blocks of docs/trials.md run as written, and its shipped-example table names every example."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from medtwin.trials import example_specs

DOC = Path(__file__).resolve().parents[2] / "docs" / "trials.md"


def test_trials_doc_examples_run(capsys: pytest.CaptureFixture[str]) -> None:
    text = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 1
    namespace: dict[str, object] = {"__name__": "__doc_example__"}
    for code in blocks:
        exec(compile(code, str(DOC), "exec"), namespace)
    assert capsys.readouterr().out.splitlines() == ["['difference', 'ancova', 'procova']", "True"]


def test_every_example_is_in_the_doc_table() -> None:
    text = DOC.read_text(encoding="utf-8")
    for name in example_specs():
        assert f"| `{name}` |" in text, name
