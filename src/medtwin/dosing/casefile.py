"""Case files for the dosing twin: reading JSON and CSV files, and the allowed keys of each part.

:func:`read_case_file` turns a ``.json`` or ``.csv`` case file into the mapping that
:func:`medtwin.dosing.case.parse_case` validates (the CSV has one row per record: format in
docs/dosing-model-format.md, section "Case files (CSV)").  :func:`check_keys` refuses unknown
keys in every part of a case (a misspelt ``duration_h`` must not silently turn an infusion into
a bolus); keys starting with ``_`` are comments.  :class:`CaseError` names the file, entry and
field of every problem.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medtwin.errors import ValidationError, did_you_mean

__all__ = [
    "CASE_KEYS",
    "CSV_FIELDS",
    "DOSE_KEYS",
    "LEVEL_KEYS",
    "REGIMEN_KEYS",
    "STANDARD_COVARIATE_FIELDS",
    "CaseError",
    "check_keys",
    "csv_to_mapping",
    "parse_bool",
    "read_case_file",
]


class CaseError(ValidationError):
    """A patient case that cannot be used (names the file, entry and field)."""


# Keys each part of a case may hold; anything else is refused (a misspelt "duration_h" must not
# silently turn an infusion into a bolus).  Keys starting with "_" are comments.
CASE_KEYS = frozenset(
    {"patient_id", "model", "origin", "covariates", "covariate_interpolation", "doses", "levels", "target", "regimen"}
)
DOSE_KEYS = frozenset(
    {"time_h", "time", "amount", "amount_mg", "duration_h", "rate", "interval_h", "additional", "steady_state", "route"}
)
LEVEL_KEYS = frozenset({"time_h", "time", "value", "unit", "id"})
REGIMEN_KEYS = frozenset(
    {
        "start_h",
        "intervals_h",
        "increment_mg",
        "max_dose_mg",
        "max_rate_mg_h",
        "min_duration_h",
        "loading_dose",
        "n_doses",
    }
)
STANDARD_COVARIATE_FIELDS = frozenset({"age_y", "sex", "weight_kg", "height_cm", "scr", "crcl", "dialysis"})
_TRUE = frozenset({"true", "yes", "1", "1.0"})
_FALSE = frozenset({"false", "no", "0", "0.0", ""})


def check_keys(entry: Any, allowed: frozenset[str], where: str) -> Mapping[str, Any]:
    """*entry* as a mapping; an entry that is not an object or has unknown keys is a :class:`CaseError`."""
    if not isinstance(entry, Mapping):
        raise CaseError(f"{where}: expected an object, got {entry!r}")
    unknown = sorted(str(k) for k in entry if str(k) not in allowed and not str(k).startswith("_"))
    if unknown:
        hint = did_you_mean(unknown[0], allowed)
        raise CaseError(f"{where}: unknown keys {unknown}{hint} (known: {', '.join(sorted(allowed))})")
    return entry


def parse_bool(value: Any, where: str) -> bool:
    """A boolean from true/false, yes/no, 1/0 (any case); anything else is a :class:`CaseError`."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise CaseError(f"{where}: expected true or false, got {value!r}")


CSV_FIELDS = (
    "record",
    "name",
    "time_h",
    "time",
    "value",
    "unit",
    "duration_h",
    "rate",
    "interval_h",
    "additional",
    "steady_state",
    "route",
    "low",
    "high",
    "start_h",
    "end_h",
    "threshold_mg_l",
)


_RECORD_TYPES = ("model", "patient", "covariate", "dose", "level", "target", "target_also", "regimen")


def csv_to_mapping(path: Path) -> dict[str, Any]:
    """The case in a CSV file (one row per record, header :data:`CSV_FIELDS`) as a case mapping."""
    data: dict[str, Any] = {"covariates": {}, "doses": [], "levels": [], "regimen": {}}
    target_also: list[dict[str, Any]] = []
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or "record" not in reader.fieldnames:
            raise CaseError(
                f"{path}: a case CSV needs a header with a 'record' column (columns: {', '.join(CSV_FIELDS)})"
            )
        for n, row in enumerate(reader, start=2):
            r = {k: v.strip() for k, v in row.items() if k and v is not None and v.strip() != ""}
            kind = r.get("record", "")
            where = f"{path}:{n}"
            if kind == "model":
                data["model"] = r.get("name", "")
            elif kind == "patient":
                data["patient_id"] = r.get("name", "")
            elif kind == "covariate":
                if "name" not in r or "value" not in r:
                    raise CaseError(f"{where}: covariate rows need name and value")
                val: Any = r["value"] if r["name"] == "sex" else {"value": r["value"]}
                if "unit" in r and isinstance(val, dict):
                    val["unit"] = r["unit"]
                timed = {k: r[k] for k in ("time_h", "time") if k in r}
                covs = data["covariates"]
                previous = covs.get(r["name"])
                if timed:  # one row per observation: a time-varying covariate
                    if previous is not None and not isinstance(previous, list):
                        raise CaseError(f"{where}: covariate {r['name']!r} given both with and without a time")
                    entry = timed | (val if isinstance(val, dict) else {"value": val})
                    covs[r["name"]] = [*(previous or []), entry]
                elif previous is not None:
                    raise CaseError(
                        f"{where}: covariate {r['name']!r} given twice; give time_h or time on each row "
                        "for a value that changes"
                    )
                else:
                    covs[r["name"]] = val
            elif kind == "dose":
                d: dict[str, Any] = {"amount": {"value": r.get("value"), "unit": r.get("unit", "mg")}}
                for key in ("time_h", "time", "duration_h", "interval_h", "additional", "route"):
                    if key in r:
                        d[key] = r[key]
                if "rate" in r:
                    d["rate"] = r["rate"]
                if r.get("steady_state", "").lower() in ("1", "true", "yes"):
                    d["steady_state"] = True
                data["doses"].append(d)
            elif kind == "level":
                data["levels"].append(
                    {k: r[k] for k in ("time_h", "time", "value", "unit") if k in r}
                    | ({"id": r["name"]} if "name" in r else {})
                )
            elif kind == "target":
                data["target"] = {
                    "metric": r.get("name", "auc24_ss"),
                    **{
                        k: r[k]
                        for k in ("value", "low", "high", "time_h", "start_h", "end_h", "threshold_mg_l")
                        if k in r
                    },
                }
            elif kind == "target_also":
                target_also.append({"metric": r.get("name", ""), **{k: r[k] for k in ("low", "high") if k in r}})
            elif kind == "regimen":
                if "name" not in r or "value" not in r:
                    raise CaseError(f"{where}: regimen rows need name and value")
                if r["name"] == "intervals_h":
                    data["regimen"]["intervals_h"] = [float(x) for x in r["value"].split(";")]
                else:
                    data["regimen"][r["name"]] = r["value"]
            else:
                raise CaseError(f"{where}: unknown record type {kind!r}{did_you_mean(kind, _RECORD_TYPES)}")
    if target_also:
        data.setdefault("target", {"metric": "auc24_ss", "low": 400, "high": 600})["also"] = target_also
    return data


def read_case_file(path: str | Path) -> dict[str, Any]:
    """The case in a ``.json`` or ``.csv`` file as a mapping (not yet validated)."""
    p = Path(path)
    if not p.is_file():
        raise CaseError(f"case file {p} does not exist")
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise CaseError(f"{p}: invalid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise CaseError(f"{p}: a case file must hold a JSON object")
        return data
    if p.suffix.lower() == ".csv":
        return csv_to_mapping(p)
    raise CaseError(f"{p}: unsupported case file type (use .json or .csv)")
