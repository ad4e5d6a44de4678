"""Risk inputs from the record (times, sources, look-back rules), FHIR RiskAssessment, storage and the CLI."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest
from fhirclient.models.bundle import Bundle as R4Bundle
from fhirclient.models.riskassessment import RiskAssessment as R4RiskAssessment
from typer.testing import CliRunner

from medtwin import codes
from medtwin.cli import app
from medtwin.records import Coding, Condition, MedicationRequest, Observation, Patient, Quantity, Record
from medtwin.risk.simulate import simulate_censored, synthetic_cohort
from medtwin.store import Store
from medtwin.twin.risk_assessment import assess_patient
from medtwin.twin.risk_inputs import assemble, assemble_cohort

NOW = datetime(2026, 6, 1, tzinfo=UTC)
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


def _obs(pid: str, code: str, value: float | Coding, unit: str, days: int, oid: str) -> Observation:
    v = value if isinstance(value, Coding) else Quantity(value=value, unit=unit)
    return Observation(
        patient_id=pid, code=codes.loinc(code, code), effective=NOW - timedelta(days=days), value=v, observation_id=oid
    )


def _patient(pid: str = "pt-1", *, egfr_days: int = 400) -> list[Record]:
    snomed = codes.SNOMED
    return [
        Patient(patient_id=pid, gender="female", birth_date=date(1976, 3, 1)),
        _obs(pid, "8480-6", 150, "mm[Hg]", 300, f"{pid}-sbp-old"),
        _obs(pid, "8480-6", 160, "mm[Hg]", 30, f"{pid}-sbp"),
        _obs(pid, "2093-3", 200 / 38.665, "mmol/L", 100, f"{pid}-tc"),  # 200 mg/dL (molar mass 386.65 g/mol)
        _obs(pid, "2085-9", 45, "mg/dL", 100, f"{pid}-hdl"),
        _obs(pid, "33914-3", 90, "mL/min/{1.73_m2}", egfr_days, f"{pid}-egfr"),
        _obs(pid, "29463-7", 88.2, "kg", 50, f"{pid}-wt"),
        _obs(pid, "8302-2", 158.75, "cm", 900, f"{pid}-ht"),
        _obs(pid, "72166-2", Coding(system=snomed, code="266919005", display="Never smoked"), "", 20, f"{pid}-smk"),
        Condition(
            condition_id=f"{pid}-dm",
            patient_id=pid,
            onset=NOW - timedelta(days=3000),
            code=Coding(system=snomed, code="44054006", display="Diabetes mellitus type 2"),
        ),
        Condition(
            condition_id=f"{pid}-af-old",
            patient_id=pid,
            onset=NOW - timedelta(days=3000),
            abatement=NOW - timedelta(days=1000),
            clinical_status="resolved",
            code=Coding(system=snomed, code="49436004", display="Atrial fibrillation"),
        ),
        MedicationRequest(
            request_id=f"{pid}-acei",
            patient_id=pid,
            authored=NOW - timedelta(days=200),
            medication=Coding(system=RXNORM, code="314076", display="lisinopril 10 MG Oral Tablet"),
        ),
        MedicationRequest(
            request_id=f"{pid}-statin-stopped",
            patient_id=pid,
            authored=NOW - timedelta(days=900),
            status="stopped",
            medication=Coding(system=RXNORM, code="312961", display="Simvastatin 20 MG Oral Tablet"),
        ),
    ]


@pytest.fixture
def store() -> Store:
    s = Store("sqlite://")
    s.write(_patient())
    return s


def test_inputs_come_with_time_source_and_window(store: Store) -> None:
    got = assemble(store, "pt-1", NOW)
    assert got is not None
    v = got.values
    assert v["age_years"].value == 50
    assert v["sbp_mm_hg"].value == 160
    assert v["sbp_mm_hg"].reference == "Observation/pt-1-sbp"
    assert v["sbp_mm_hg"].time == NOW - timedelta(days=30)
    assert v["total_chol_mg_dl"].value == pytest.approx(200.0, abs=0.01)  # converted from mmol/L
    assert v["bmi_kg_m2"].value == pytest.approx(35.0, abs=0.01)  # weight / height^2
    assert v["sbp_sd_mm_hg"].value == pytest.approx(np.std([150, 160], ddof=1))
    assert "egfr_ml_min_1_73m2" not in v
    assert got.notes == ["eGFR: latest value is 13 months old (rule: within 12 months)"]
    assert (v["smoker"].value, v["smoking_category"].value) == (0.0, 0.0)
    assert v["diabetes"].value == 1
    assert v["diabetes"].reference == "Condition/pt-1-dm"
    assert v["af"].value == 0  # resolved before the assessment
    assert v["bp_treated"].value == 1
    assert v["bp_treated"].reference == "MedicationRequest/pt-1-acei"
    assert v["statin"].value == 0  # stopped
    assert assemble(store, "nobody", NOW) is None


def test_missing_input_is_named_with_its_window(store: Store) -> None:
    result = assess_patient(store, "pt-1", as_of=NOW, overrides={"race": "white"})
    assert result is not None
    prevent = result.explanations["prevent-cvd-10y"]
    assert prevent.risk is None
    assert prevent.reasons == ("cannot compute PREVENT 10-year total CVD: no eGFR in the last 12 months",)
    assert result.explanations["pce"].risk is not None


def test_table_s12_person_from_the_record() -> None:
    with Store("sqlite://") as s:
        s.write(_patient(egfr_days=40))
        result = assess_patient(s, "pt-1", as_of=NOW, overrides={"race": "white"})
    assert result is not None
    assert round(result.explanations["prevent-cvd-10y"].risk or 0, 4) == 0.1468  # Khan 2023 Table S12 (woman)


def test_every_risk_assessment_is_valid_fhir_r4_and_references_its_basis(store: Store) -> None:
    result = assess_patient(store, "pt-1", as_of=NOW, overrides={"race": "white"}, save=True)
    assert result is not None
    statuses = set()
    for resource in result.resources.values():
        R4RiskAssessment(resource, strict=True)
        statuses.add(resource["status"])
        assert {"reference": "Observation/pt-1-sbp"} in resource["basis"]
        assert not any("sbp-old" in b["reference"] for b in resource["basis"])
    assert statuses == {"final", "preliminary", "cannot-be-obtained"}
    pce = result.resources["pce"]
    assert pce["prediction"][0]["whenRange"]["high"]["code"] == "a"
    assert "systolic BP 160 mmHg on treatment" in pce["note"][0]["text"]
    assert "RR 0.8 per 10 mmHg" in pce["mitigation"]


def test_stored_assessments_are_idempotent_and_keep_changed_ones(store: Store) -> None:
    assess_patient(store, "pt-1", as_of=NOW, overrides={"race": "white"}, save=True)
    n = len(store.events("pt-1"))
    assess_patient(store, "pt-1", as_of=NOW, overrides={"race": "white"}, save=True)
    assert len(store.events("pt-1")) == n
    assess_patient(store, "pt-1", as_of=NOW, overrides={"race": "white", "egfr_ml_min_1_73m2": 88}, save=True)
    events = store.events("pt-1")
    assert len(events) == 2 * n
    fhir = [e.data["fhir"] for e in events if e.code == "risk:prevent-cvd-10y"]
    assert sorted(r["status"] for r in fhir) == ["cannot-be-obtained", "final"]


def test_cohort_reader_equals_the_one_patient_reader() -> None:
    with Store("sqlite://") as s:
        for k in range(5):
            s.write(_patient(f"pt-{k}", egfr_days=40 + 200 * k))
        one = [assemble(s, f"pt-{k}", NOW) for k in range(5)]
        many = assemble_cohort(s, [f"pt-{k}" for k in range(5)], NOW)
    assert [m.values for m in many] == [o.values for o in one if o is not None]
    assert [m.notes for m in many] == [o.notes for o in one if o is not None]


runner = CliRunner()


def _db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    with Store(url) as s:
        s.write(_patient(egfr_days=40))
    return url


def test_cli_risk_patient_table_json_and_fhir(tmp_path: Path) -> None:
    db = _db(tmp_path)
    at = ["--at", "2026-06-01T00:00:00Z", "--set", "race=white"]
    res = runner.invoke(app, ["risk", "pt-1", "--db", db, *at])
    assert res.exit_code == 0, res.output
    assert "14.7 %" in res.output  # PREVENT 10-year CVD, Table S12
    assert "what if systolic BP at 130 mmHg" in res.output
    res = runner.invoke(app, ["risk", "pt-1", "--db", db, *at, "--json", "--model", "pce"])
    data = orjson.loads(res.stdout)
    assert data["inputs"]["sbp_mm_hg"]["source"].startswith("systolic BP 2026-05-02")
    assert list(data["results"]) == ["pce"]
    res = runner.invoke(app, ["risk", "pt-1", "--db", db, *at, "--fhir"])
    R4Bundle(orjson.loads(res.stdout), strict=True)
    bad = runner.invoke(app, ["risk", "nobody", "--db", db])
    assert bad.exit_code == 1
    assert "no patient with id 'nobody'" in bad.output
    bad = runner.invoke(app, ["risk", "pt-1", "--db", db, "--model", "framingham"])
    assert bad.exit_code == 1
    assert "unknown equation" in bad.output


def test_cli_risk_patient_accepts_a_unique_id_prefix(tmp_path: Path) -> None:
    db = _db(tmp_path)
    at = ["--at", "2026-06-01T00:00:00Z", "--set", "race=white", "--model", "pce", "--no-save"]
    res = runner.invoke(app, ["risk", "pt-", "--db", db, *at, "--json"])
    assert res.exit_code == 0, res.output
    assert orjson.loads(res.stdout)["patient_id"] == "pt-1"
    with Store(db) as s:
        s.write(_patient("pt-2"))
    ambiguous = runner.invoke(app, ["risk", "pt-", "--db", db, *at])
    assert ambiguous.exit_code == 1
    assert "'pt-' matches 2 patients (pt-1, pt-2); give more of the id" in ambiguous.stderr
    assert runner.invoke(app, ["risk", "pt-2", "--db", db, *at]).exit_code == 0  # a whole id is never ambiguous
    missing = runner.invoke(app, ["risk", "pt-1", "--db", f"sqlite:///{tmp_path / 'typo.db'}", *at])
    assert missing.exit_code == 1
    assert not (tmp_path / "typo.db").exists()  # a mistyped --db is an error, not a new empty database
    bad = runner.invoke(app, ["risk", "pt-1", "--db", db, "--model", "prevent-cvd-10"])
    assert "did you mean 'prevent-cvd-10y'?" in bad.output


def test_cli_risk_cohort_writes_every_patient(tmp_path: Path) -> None:
    db = _db(tmp_path)
    with Store(db) as s:
        s.write(_patient("pt-2", egfr_days=400))
    out = tmp_path / "risks.parquet"
    res = runner.invoke(app, ["risk", "cohort", "--db", db, "--out", str(out), "--at", "2026-06-01", "--batch", "1"])
    assert res.exit_code == 0, res.output
    frame = pd.read_parquet(out).set_index("patient_id")
    assert len(frame) == 2
    assert round(frame.loc["pt-1", "prevent-cvd-10y_risk"], 4) == 0.1468
    assert frame.loc["pt-2", "prevent-cvd-10y_status"] == "refused"
    assert "eGFR: latest value is 13 months old" in frame.loc["pt-2", "unused_values"]


def test_cli_risk_evaluate(tmp_path: Path) -> None:
    c = synthetic_cohort(3000, seed=4)
    from medtwin.risk import pooled_cohort

    risk = pooled_cohort(c).risk
    out = simulate_censored(np.nan_to_num(risk, nan=0.1), horizon=10, seed=5)
    frame = pd.DataFrame({"pce": risk, "years": out.time, "event": out.event, "sex": c["sex"], "age": c["age_years"]})
    path = tmp_path / "pred.parquet"
    frame.to_parquet(path)
    res = runner.invoke(
        app,
        [
            "risk",
            "evaluate",
            str(path),
            "--pred",
            "pce",
            "--event",
            "event",
            "--time",
            "years",
            "--group",
            "sex",
            "--age-col",
            "age",
            "--out-dir",
            str(tmp_path),
            "--n-boot",
            "20",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "| sex | female |" in res.stdout
    assert (tmp_path / "pce_reliability.png").read_bytes()[:4] == b"\x89PNG"
    report = orjson.loads((tmp_path / "pce_validation.json").read_bytes())
    assert report["refused_or_missing_predictions"] == int(np.isnan(risk).sum())
    assert any(r["variable"] == "age band" for r in report["subgroups"])
    bad = runner.invoke(app, ["risk", "evaluate", str(path), "--pred", "nope", "--event", "event"])
    assert bad.exit_code == 1
    assert "no column(s) nope" in bad.output


def test_a_value_in_an_unknown_unit_is_reported_not_used() -> None:
    with Store("sqlite://") as s:
        s.write([*_patient(), _obs("pt-1", "2085-9", 1.2, "g", 5, "pt-1-hdl-bad")])
        got = assemble(s, "pt-1", NOW)
    assert got is not None
    assert got.values["hdl_mg_dl"].reference == "Observation/pt-1-hdl"  # the older readable value
    assert any("1.2 'g' cannot be read as mg/dL (Observation/pt-1-hdl-bad)" in n for n in got.notes)
