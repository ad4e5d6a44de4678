"""Benchmark: medtwin's full FHIR ingest (parse, validate, store) vs. parsing alone with fhir.resources (R4B).

Claim (issue 2): medtwin ingests the shared Synthea bundles end to end at least 3x faster than fhir.resources'
R4B models merely parse them, and ingesting a 100 MB bulk NDJSON file peaks under 300 MB of RSS (streamed).

Run:  .venv/bin/python bench/ingest_fhir.py [--quick] [--data ../shared/data] [--ndjson-mb 100] [--encryption both]
Needs the `bench` extra (fhir.resources) for the peer; both sides run in this one process, same files.
``--encryption on`` (default: what medtwin always does: identities and payloads sealed, AES-256-GCM), ``off``
(written in clear, the cost of encryption measured) or ``both`` (side by side, interleaved).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["main"]

REPO = Path(__file__).resolve().parents[1]


def _medtwin_ingest_s(files: list[Path], workdir: Path, run: int | str, encryption: bool = True) -> float:
    from medtwin.interop.fhir import ingest_paths
    from medtwin.store import Store

    url = f"sqlite:///{workdir / f'bench-{run}-{int(encryption)}.db'}"
    with Store(url, encryption=encryption) as store:  # fresh database, migrated before timing
        t0, c0 = time.perf_counter(), time.process_time()
        report = ingest_paths(store, files)
        elapsed = time.perf_counter() - t0
        _CPU.setdefault(encryption, []).append(time.process_time() - c0)
        if not report.ok:
            raise SystemExit(f"medtwin ingest reported errors: {report.as_dict()['files']}")
    return elapsed


_CPU: dict[bool, list[float]] = {}  # CPU seconds of each timed medtwin ingest, by encryption mode


def _peer_parse_s(files: list[Path]) -> float:
    from fhir.resources.R4B.bundle import Bundle

    t0 = time.perf_counter()
    for f in files:
        Bundle.model_validate_json(f.read_bytes())
    return time.perf_counter() - t0


_NDJSON_CHILD = """
import resource, sys, time
from medtwin.interop.fhir import ingest_file
from medtwin.store import Store
with Store(sys.argv[2]) as store:
    t0 = time.perf_counter()
    report = ingest_file(store, sys.argv[1])
    elapsed = time.perf_counter() - t0
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(elapsed, peak_mb, report.inserted, len(report.errors))
"""


def _write_ndjson(path: Path, target_mb: float) -> int:
    """A bulk-export style Observation.ndjson of about *target_mb* MB (vital signs of 1000 patients)."""
    lines = 0
    written = 0
    with path.open("w") as fh:
        while written < target_mb * 1e6:
            pid = f"patient-{lines % 1000:04d}"
            resource = {
                "resourceType": "Observation",
                "id": f"obs-{lines:08d}",
                "meta": {"lastUpdated": "2024-03-01T08:00:00Z", "source": "bench#generated"},
                "status": "final",
                "category": [
                    {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                "code": "vital-signs",
                                "display": "Vital Signs",
                            }
                        ]
                    }
                ],
                "code": {
                    "coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}],
                    "text": "Heart rate",
                },
                "subject": {"reference": f"Patient/{pid}"},
                "encounter": {"reference": f"Encounter/enc-{lines % 1000:04d}"},
                "effectiveDateTime": f"2024-03-{1 + (lines // 86400) % 28:02d}T{(lines // 3600) % 24:02d}:"
                f"{(lines // 60) % 60:02d}:{lines % 60:02d}+00:00",
                "issued": "2024-03-01T08:00:00.000+00:00",
                "valueQuantity": {
                    "value": 60 + lines % 60,
                    "unit": "beats/minute",
                    "system": "http://unitsofmeasure.org",
                    "code": "/min",
                },
                "interpretation": [
                    {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                                "code": "N",
                                "display": "Normal",
                            }
                        ]
                    }
                ],
            }
            line = json.dumps(resource) + "\n"
            fh.write(line)
            written += len(line)
            lines += 1
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="shared data folder")
    parser.add_argument("--quick", action="store_true", help="one repetition and a 10 MB NDJSON file")
    parser.add_argument("--ndjson-mb", type=float, default=None, help="size of the generated NDJSON (default 100)")
    parser.add_argument("--repeats", type=int, default=None, help="repetitions of each side (default 5, quick 1)")
    parser.add_argument(
        "--encryption", choices=["on", "off", "both"], default="on", help="seal identities/payloads (default on)"
    )
    args = parser.parse_args()
    modes = {"on": [True], "off": [False], "both": [True, False]}[args.encryption]
    repeats = args.repeats or (1 if args.quick else 5)
    ndjson_mb = args.ndjson_mb or (10.0 if args.quick else 100.0)

    files = sorted((args.data / "fhir" / "synthea").glob("*.json"))
    if not files:
        raise SystemExit(f"no Synthea bundles under {args.data / 'fhir' / 'synthea'}")
    size_mb = sum(f.stat().st_size for f in files) / 1e6
    print(f"Synthea bundles: {len(files)} files, {size_mb:.2f} MB; {repeats} repetition(s), median reported")

    with tempfile.TemporaryDirectory(prefix="medtwin-bench-") as tmp:
        work = Path(tmp)
        _peer_parse_s(files[:1])  # import and warm both sides before timing
        for mode in modes:
            _medtwin_ingest_s(files[:1], work, "warm", mode)
        ours: dict[bool, list[float]] = {m: [] for m in modes}
        peer = []
        for run in range(repeats):
            for mode in modes:
                ours[mode].append(_medtwin_ingest_s(files, work, run, mode))
            peer.append(_peer_parse_s(files))
        peer_s = statistics.median(peer)
        for mode in modes:
            ours_s = statistics.median(ours[mode])
            label = "encryption on " if mode else "encryption OFF"
            print(
                f"  medtwin full ingest (parse+validate+store, SQLite FULL, {label}): {ours_s:.3f} s  "
                f"{size_mb / ours_s:6.1f} MB/s  ({ours_s / size_mb:.3f} s/MB)"
            )
        print(
            f"  fhir.resources R4B Bundle.model_validate_json (parse only):                  {peer_s:.3f} s  "
            f"{size_mb / peer_s:6.1f} MB/s  ({peer_s / size_mb:.3f} s/MB)"
        )
        for mode in modes:
            ours_s = statistics.median(ours[mode])
            print(f"  ratio (peer time / medtwin time), encryption {'on' if mode else 'off'}: "
                  f"{peer_s / ours_s:.2f}x   (goal >= 3x)")  # fmt: skip
        for mode in modes:
            cpu = statistics.median(_CPU[mode][-repeats:])
            print(f"  medtwin CPU time (median), encryption {'on' if mode else 'off'}: {cpu:.3f} s")
        if len(modes) == 2:
            on, off = statistics.median(ours[True]), statistics.median(ours[False])
            cpu_on, cpu_off = statistics.median(_CPU[True][-repeats:]), statistics.median(_CPU[False][-repeats:])
            print(f"  encryption cost: {on / off:.3f}x the wall time, {cpu_on / cpu_off:.3f}x the CPU time of ingest "
                  "in clear (runs interleaved on and off)")  # fmt: skip

        ndjson = work / "Observation.ndjson"
        lines = _write_ndjson(ndjson, ndjson_mb)
        actual_mb = ndjson.stat().st_size / 1e6
        env = dict(os.environ)
        if modes == [False]:
            env["MEDTWIN_UNSAFE_NO_ENCRYPTION"] = "1"
        out = subprocess.run(
            [sys.executable, "-c", _NDJSON_CHILD, str(ndjson), f"sqlite:///{work / 'ndjson.db'}"],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        ).stdout.split()
        elapsed, peak_mb, inserted, errors = float(out[0]), float(out[1]), int(out[2]), int(out[3])
        print(f"Bulk NDJSON: {actual_mb:.1f} MB, {lines} Observations; inserted {inserted}, errors {errors}")
        print(
            f"  ingest {elapsed:.1f} s ({actual_mb / elapsed:.1f} MB/s); peak RSS of the ingesting process "
            f"{peak_mb:.0f} MB   (goal < 300 MB)"
        )


if __name__ == "__main__":
    main()
