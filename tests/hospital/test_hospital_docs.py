"""The ```python blocks of docs/models/hospital.md run as written, in order."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "models" / "hospital.md"


def test_hospital_doc_examples_run(capsys: pytest.CaptureFixture[str]) -> None:
    text = DOC.read_text(encoding="utf-8")
    blocks = [
        (text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in re.finditer(r"```python\n(.*?)```", text, re.S)
    ]
    assert len(blocks) == 2
    namespace: dict[str, object] = {"__name__": "__doc_example__"}
    for line, code in blocks:
        exec(compile("\n" * (line - 1) + code, str(DOC), "exec"), namespace)
    out = capsys.readouterr().out.splitlines()
    arrivals = int(out[0].split()[0])
    assert 190 <= arrivals <= 215  # the example's 204/day, estimated from 8 weeks
    assert out[1].startswith("ICU P50 in 24 h:")
    icu = [float(x) for x in out[2].split("[")[1].rstrip("]").split()]
    assert icu[1] < icu[0]  # 4 more ICU beds lower ICU occupancy %
