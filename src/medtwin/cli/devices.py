"""`medtwin devices register|list|simulate`: wearables bound to patients, and simulated CGM wearers over MQTT.

``simulate`` runs virtual type 1 patients (UVA/Padova, medtwin.glucose, closed loop with the basal-bolus
controller and randomized meals) and publishes their 5-minute CGM readings and carbohydrate intake as compact JSON
(docs/living-twin.md) to ``<prefix>devices/<id>/obs`` at QoS 1, in accelerated time (``--speed`` simulated minutes per
real second). ``--register`` first stores a Patient per wearer and binds its device (so ``medtwin listen --mqtt``
accepts the readings). The broker is reached as ``medtwin listen --mqtt`` reaches it: ``mqtts://`` for TLS, the
URL's user with the password from a file or the environment (medtwin.interop.mqtt_broker).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import typer

from medtwin.cli.console import make_console
from medtwin.cli.mqtt_options import (
    MQTT_URL_HELP,
    MqttCaOption,
    MqttCertOption,
    MqttKeyOption,
    MqttPasswordFileOption,
    broker_or_exit,
)
from medtwin.cli.records import open_existing, print_json, store_errors
from medtwin.errors import MedtwinError

__all__ = ["app", "simulated_readings"]

app = typer.Typer(help="Wearables over MQTT: register and bind devices, simulate CGM wearers.", no_args_is_help=True,
                  add_completion=False)  # fmt: skip

DbOption = typer.Option(None, "--db", help="Database URL (default: $MEDTWIN_DATABASE_URL, medtwin.toml, ./medtwin.db).")


@app.command("register")
def register(device: str = typer.Argument(..., help="Device id (letters, digits, '-', '_', '.')."),
             patient: str = typer.Option(..., "--patient", help="The stored patient to bind it to."),
             kind: str = typer.Option("cgm", "--kind", help="Kind of device (cgm, pulse-oximeter, ...)."),
             db: str | None = DbOption) -> None:  # fmt: skip
    """Register a device and bind it to a patient (a FHIR Device in the patient's record)."""
    from medtwin.interop.devices import register_device

    console = make_console(stderr=True)
    store = open_existing(db, console)
    try:
        with store_errors(console):
            binding = register_device(store, device, patient, kind=kind)
    except MedtwinError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    finally:
        store.close()
    make_console().print(f"device {binding.device_id} ({binding.kind}) bound to patient {binding.patient_id}",
                         highlight=False)  # fmt: skip


@app.command("list")
def list_command(db: str | None = DbOption,
                 as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:  # fmt: skip
    """The registered devices and the patients they are bound to."""
    from medtwin.interop.devices import list_devices

    console = make_console(stderr=True)
    store = open_existing(db, console)
    try:
        with store_errors(console):
            devices = list_devices(store)
    finally:
        store.close()
    rows = [{"device": d.device_id, "kind": d.kind, "patient_id": d.patient_id, "status": d.status} for d in devices]
    if as_json:
        print_json(rows)
        return
    out = make_console()
    for r in rows:
        out.print(f"{r['device']:<24} {r['kind']:<16} {r['patient_id'] or '-':<24} {r['status']}", highlight=False)
    out.print(f"{len(rows)} device(s)", highlight=False)


def simulated_readings(
    wearers: int, days: int, *, seed: int = 1, start: datetime | None = None
) -> tuple[list[str], list[tuple[datetime, int, dict[str, Any]]]]:
    """Virtual patients' names and their readings in time order: (time, wearer index, compact payload).

    CGM every 5 minutes (LOINC 99504-3, mg/dL) and each meal's carbohydrate (9059-7, g) when it is eaten.
    """
    import numpy as np

    from medtwin.glucose.scenarios import run_scenario

    names = [f"adult#{(i % 10) + 1:03d}" for i in range(wearers)]
    result = run_scenario(names, days=days, randomize_meals=True, seed=seed)
    start = start or datetime(2026, 1, 1, tzinfo=UTC)
    out: list[tuple[datetime, int, dict[str, Any]]] = []
    cgm = result.cgm_mg_dl
    carbs = result.cho_announced_g
    for minute in range(0, cgm.shape[0], 5):
        at = start + timedelta(minutes=minute)
        for i in range(wearers):
            value = float(np.clip(cgm[minute, i], 40.0, 400.0))
            out.append((at, i, {"code": "99504-3", "value": round(value, 1), "unit": "mg/dL",
                                "time": at.isoformat()}))  # fmt: skip
    for minute, i in zip(*np.nonzero(carbs > 0), strict=True):
        at = start + timedelta(minutes=int(minute))
        out.append((at, int(i), {"code": "9059-7", "value": round(float(carbs[minute, i]), 1), "unit": "g",
                                  "time": at.isoformat()}))  # fmt: skip
    out.sort(key=lambda e: (e[0], e[1]))
    return names, out


@app.command("simulate")
def simulate(mqtt: str = typer.Option(..., "--mqtt", help=f"Broker URL. {MQTT_URL_HELP}"),
             mqtt_ca: str | None = MqttCaOption, mqtt_cert: str | None = MqttCertOption,
             mqtt_key: str | None = MqttKeyOption, mqtt_password_file: str | None = MqttPasswordFileOption,
             cgm: int = typer.Option(4, "--cgm", min=1, max=10_000, help="Number of simulated CGM wearers."),
             days: int = typer.Option(1, "--days", min=1, max=14, help="Simulated days."),
             speed: float = typer.Option(60.0, "--speed", min=0.0,
                                         help="Simulated minutes per real second (0: as fast as possible)."),
             prefix: str = typer.Option("", "--prefix", help="Topic prefix before devices/<id>/obs."),
             register: bool = typer.Option(False, "--register", help="Store a Patient per wearer and bind devices."),
             db: str | None = DbOption, seed: int = typer.Option(1, "--seed", help="Meal randomization seed."),
             as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON.")) -> None:  # fmt: skip
    """Publish simulated CGM wearers' readings over MQTT (QoS 1) in accelerated time."""
    from medtwin.interop.mqtt_wire import (
        DISCONNECT_PACKET,
        MqttAccessError,
        MqttProtocolError,
        PublishWindow,
        encode_connect,
        encode_publish,
    )

    broker = broker_or_exit(mqtt, mqtt_ca, mqtt_cert, mqtt_key, mqtt_password_file)
    devices = [f"sim-cgm-{i:04d}" for i in range(cgm)]
    if register:
        _register_wearers(db, devices)
    names, readings = simulated_readings(cgm, days, seed=seed)
    steps: dict[datetime, list[tuple[int, bytes]]] = {}  # the readings of each simulated time, encoded
    for k, (at, i, payload) in enumerate(readings):
        mid = k % 65_535 + 1
        topic = f"{prefix}devices/{devices[i]}/obs"
        steps.setdefault(at, []).append((mid, encode_publish(topic, json.dumps(payload).encode(), mid)))
    client_id = f"medtwin-sim-{int(time.time())}"
    # no keep alive: at a slow --speed the wearers can be silent for minutes
    connect = encode_connect(client_id, clean_start=True, keep_alive_s=0, username=broker.username,
                             password=broker.password)  # fmt: skip
    try:
        conn, connack = broker.open(connect, 10.0)
    except MqttAccessError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except MqttProtocolError as exc:
        typer.echo(f"error: the MQTT broker at {broker.url} did not accept the connection: {exc}", err=True)
        raise typer.Exit(2) from None
    except OSError as exc:
        typer.echo(f"error: cannot reach the MQTT broker at {broker.url}: {exc}", err=True)
        raise typer.Exit(2) from None
    window = PublishWindow(conn, min(1000, connack.receive_maximum))  # QoS 1, at most 1,000 unacknowledged
    t0 = time.monotonic()
    first = readings[0][0] if readings else datetime.now(UTC)
    try:
        for at, packets in steps.items():
            if speed > 0:
                wait = (at - first).total_seconds() / 60.0 / speed - (time.monotonic() - t0)
                if wait > 0:
                    time.sleep(wait)
            window.publish(packets)
        window.wait_all(30)
        conn.send(DISCONNECT_PACKET)
    except (OSError, MqttProtocolError) as exc:
        typer.echo(f"error: publishing to the MQTT broker at {broker.url}: {exc}", err=True)
        raise typer.Exit(2) from None
    finally:
        conn.close()
    summary = {"wearers": cgm, "published": window.acked, "seconds": round(time.monotonic() - t0, 2),
               "virtual_patients": sorted(set(names)),
               "devices": devices[:5] + (["..."] if cgm > 5 else [])}  # fmt: skip
    if as_json:
        print_json(summary)
    else:
        make_console().print(f"published {summary['published']} readings of {cgm} wearer(s) in "
                             f"{summary['seconds']} s", highlight=False)  # fmt: skip


def _register_wearers(db: str | None, devices: list[str]) -> None:
    from medtwin.interop.devices import register_device
    from medtwin.records import Patient
    from medtwin.store import Store

    store = Store(db)
    try:
        store.write([Patient(patient_id=f"pt-{d}", gender="unknown") for d in devices])
        for d in devices:
            register_device(store, d, f"pt-{d}", kind="cgm")
    finally:
        store.close()
