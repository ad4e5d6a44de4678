"""The example in docs/store.md runs and prints what the page says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "store.md"


def test_store_doc_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(blocks[0], str(DOC), "exec"), namespace)
    assert (tmp_path / "medtwin.db").exists()
    result = namespace["result"]
    assert repr(result) == "WriteResult(inserted=1, duplicates=0, raw_duplicate=False, raw_id=1)"
