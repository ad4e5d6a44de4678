"""Benchmark: R4 structural validation of FHIR bundles, the two ways issue 13 weighed, side by side.

* fhirclient's R4 models (``fhirclient.models.bundle.Bundle(json, strict=True)``): builds the model objects and
  checks element names, types of the first item of each array, required elements;
* medtwin's tables generated from those models (``medtwin.interop.fhir.r4_structure``): a walk over the parsed JSON
  that also checks every array item, choice groups, date formats and real days.

Both on the same parsed JSON (orjson), on the shared Synthea bundles; medians of repetitions; prints the ratio.

Run:  .venv/bin/python bench/fhir_validation.py [--data ../shared/data] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import orjson

__all__ = ["main"]

REPO = Path(__file__).resolve().parents[1]


def _tables_s(bundles: list[object]) -> float:
    from medtwin.interop.fhir.r4_structure import validate_bundle_shell, validate_resource

    t0 = time.perf_counter()
    for bundle in bundles:
        assert isinstance(bundle, dict)
        assert not validate_bundle_shell(bundle)
        for entry in bundle["entry"]:
            errors, _ = validate_resource(entry["resource"])
            assert not errors, errors
    return time.perf_counter() - t0


def _fhirclient_s(bundles: list[object]) -> float:
    from fhirclient.models.bundle import Bundle

    t0 = time.perf_counter()
    for bundle in bundles:
        Bundle(bundle, strict=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="shared data folder")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    files = sorted((args.data / "fhir" / "synthea").glob("*.json"))
    raw = [f.read_bytes() for f in files]
    megabytes = sum(map(len, raw)) / 1e6
    _tables_s([orjson.loads(b) for b in raw[:1]])  # load the tables once, outside the timing
    tables, client = [], []
    for _ in range(args.repeats):  # interleaved, each on freshly parsed JSON
        tables.append(_tables_s([orjson.loads(b) for b in raw]))
        client.append(_fhirclient_s([orjson.loads(b) for b in raw]))
    t, c = statistics.median(tables), statistics.median(client)
    resources = sum(len(orjson.loads(b)["entry"]) for b in raw)
    print(f"R4 structural validation of {len(files)} Synthea bundles ({megabytes:.2f} MB, {resources} resources), "
          f"median of {args.repeats}")  # fmt: skip
    print(f"  medtwin tables (r4_structure):        {t:.3f} s   {t / megabytes * 1e3:.1f} ms/MB")
    print(f"  fhirclient R4 models, strict:          {c:.3f} s   {c / megabytes * 1e3:.1f} ms/MB")
    print(f"  ratio (fhirclient / tables): {c / t:.2f}x")


if __name__ == "__main__":
    main()
