"""The ```python blocks of docs/store.md, docs/fhir.md and docs/models/uva_padova.md run as written, in order.

A block preceded by an ``<!-- docs-test: skip (...) -->`` line is not run (the reason is in the comment).
"""

from __future__ import annotations

import ast
import json
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FHIR_FIXTURES = ROOT / "tests" / "fixtures" / "fhir"
_BLOCK = re.compile(r"(<!-- docs-test: skip[^>]*-->\n)?```python\n(.*?)```", re.S)


def python_blocks(doc: Path) -> list[tuple[int, str]]:
    """(line number, code) of every runnable ```python block of *doc*."""
    text = doc.read_text()
    return [(text.count("\n", 0, m.start(2)) + 1, m.group(2)) for m in _BLOCK.finditer(text) if m.group(1) is None]


def run_doc(doc: Path) -> dict[str, object]:
    """Execute the blocks of *doc* one after the other in one namespace (a notebook session)."""
    namespace: dict[str, object] = {"__name__": "__doc_example__"}
    for line, code in python_blocks(doc):
        exec(compile("\n" * (line - 1) + code, str(doc), "exec"), namespace)
    return namespace


def test_block_extraction_honours_skip_markers(tmp_path: Path) -> None:
    doc = tmp_path / "x.md"
    doc.write_text("a\n```python\nx = 1\n```\n<!-- docs-test: skip (why) -->\n```python\nraise SystemExit\n```\n")
    assert python_blocks(doc) == [(3, "x = 1\n")]
    assert run_doc(doc)["x"] == 1


def test_store_doc_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = ROOT / "docs" / "store.md"
    assert len(python_blocks(doc)) >= 1
    monkeypatch.chdir(tmp_path)
    namespace = run_doc(doc)
    assert repr(namespace["result"]) == "WriteResult(inserted=1, duplicates=0, raw_duplicate=False, raw_id=1)"
    assert (tmp_path / "medtwin.db").exists()


def test_fhir_doc_examples_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = ROOT / "docs" / "fhir.md"
    assert len(python_blocks(doc)) == 3
    # the files the page's example names: a folder of exports, one resource, and a bulk NDJSON file
    (tmp_path / "exports").mkdir()
    shutil.copy(FHIR_FIXTURES / "synthea_liz_conn.json", tmp_path / "exports")
    shutil.copy(FHIR_FIXTURES / "patient-example.json", tmp_path / "patient.json")
    lines = [
        json.dumps(json.loads((FHIR_FIXTURES / name).read_text()), separators=(",", ":"))
        for name in ("observation-example-heart-rate.json", "observation-example-bloodpressure.json")
    ]
    (tmp_path / "Observation.ndjson").write_text("\n".join(lines) + "\n")
    monkeypatch.chdir(tmp_path)
    run_doc(doc)
    printed = capsys.readouterr().out.splitlines()
    ok, inserted, unmapped = printed[0].split(" ", 2)
    assert (ok, inserted) == ("True", "76")  # Liz Conn's 46 records and 27 kept resources + the patient + 2 obs
    assert sum(ast.literal_eval(unmapped).values()) == 27
    assert printed[1] == "1 {} []"
    assert printed[2] == "p1 8867-4 Quantity(value=72.0, unit='/min')"
    assert printed[3].startswith("Patient collection ")


def test_glucose_model_doc_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = ROOT / "docs" / "models" / "uva_padova.md"
    assert len(python_blocks(doc)) == 1
    monkeypatch.chdir(tmp_path)
    run_doc(doc)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "('adult#001', 'child#002') (1441, 2)"
    assert printed[1].startswith("mean 14")  # adult#001 on the benchmark day: ~141 mg/dL, TIR ~96 %
    assert printed[2] == "(20,)"
