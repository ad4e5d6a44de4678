"""Virtual bedside monitors on the wire: ORU^R01 messages from :mod:`medtwin.monitoring.virtual`, sent over MLLP.

Each virtual patient has its own connection, like a bedside monitor gateway. A message is resent (same control id)
until a positive ACK arrives, reconnecting when the listener goes away, so every reading is stored exactly once even
across a listener crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from medtwin import codes
from medtwin.interop.hl7v2 import OruResult, build_oru_r01
from medtwin.interop.mllp import MllpClient
from medtwin.monitoring.virtual import VirtualPatient, VitalsSample

__all__ = ["FeedStats", "run_virtual_monitors", "sample_to_oru"]


def sample_to_oru(patient: VirtualPatient, sample: VitalsSample, control_id: str) -> str:
    """The ORU^R01 a bedside monitor would send for *sample* (missing values are left out)."""
    results: list[OruResult] = []
    numeric = (
        (codes.HEART_RATE, sample.heart_rate_per_min, "/min"),
        (codes.RESPIRATORY_RATE, sample.respiration_rate_per_min, "/min"),
        (codes.OXYGEN_SATURATION_PULSE_OX, sample.spo2_percent, "%"),
        (codes.SYSTOLIC_BP, sample.systolic_bp_mm_hg, "mm[Hg]"),
        (codes.DIASTOLIC_BP, sample.diastolic_bp_mm_hg, "mm[Hg]"),
        (codes.BODY_TEMPERATURE, sample.temperature_c, "Cel"),
        (codes.INHALED_OXYGEN_FLOW, sample.oxygen_flow_l_min, "L/min"),
    )
    for coding, value, unit in numeric:
        if value is not None:
            results.append(OruResult(coding, float(value), unit))
    if sample.acvpu is not None:
        results.append(OruResult(codes.LEVEL_OF_CONSCIOUSNESS, codes.ACVPU[sample.acvpu]))
    return build_oru_r01(
        control_id=control_id,
        mrn=patient.key,
        results=results,
        observed=sample.time,
        family="Virtual",
        given=patient.profile.capitalize(),
        location="WARD-SIM",
        device=f"MON-{patient.key}",
    )


@dataclass(slots=True)
class FeedStats:
    """What a virtual-monitor run sent."""

    sent: int = 0
    acked: int = 0
    negative: int = 0
    resends: int = 0
    reconnects: int = 0
    ack_latencies_s: list[float] = field(default_factory=list)


async def _one_monitor(
    patient: VirtualPatient,
    host: str,
    port: int,
    *,
    interval_s: float,
    deadline: float,
    time_scale: float,
    t0_real: float,
    stats: FeedStats,
    on_ack: Callable[[str, str], None] | None,
    prefix: str,
    resend_grace_s: float,
) -> None:
    client: MllpClient | None = None
    seq = 0
    next_send = time.monotonic()
    try:
        while time.monotonic() < deadline:
            await asyncio.sleep(max(0.0, next_send - time.monotonic()))
            next_send += interval_s
            seq += 1
            sim_time = patient.start + timedelta(seconds=(time.monotonic() - t0_real) * time_scale)
            control_id = f"{prefix}{patient.key}-{seq:07d}"
            message = sample_to_oru(patient, patient.sample(sim_time), control_id)
            attempts = 0
            while time.monotonic() < deadline + resend_grace_s:
                try:
                    if client is None:
                        client = await MllpClient.connect(host, port, timeout_s=10)
                        stats.reconnects += attempts > 0
                    sent_at = time.perf_counter()
                    stats.sent += 1
                    stats.resends += attempts > 0
                    ack = await client.send(message)
                except (OSError, TimeoutError, asyncio.IncompleteReadError):
                    attempts += 1
                    if client is not None:
                        await client.close()
                        client = None
                    await asyncio.sleep(min(1.0, 0.05 * attempts))
                    continue
                stats.ack_latencies_s.append(time.perf_counter() - sent_at)
                code = ack.split("MSA|", 1)[1][:2] if "MSA|" in ack else "??"
                if code in ("AA", "CA"):
                    stats.acked += 1
                else:
                    stats.negative += 1
                if on_ack is not None:
                    on_ack(control_id, code)
                break
    finally:
        if client is not None:
            await client.close()


async def run_virtual_monitors(
    host: str,
    port: int,
    patients: Sequence[VirtualPatient],
    *,
    interval_s: float = 1.0,
    duration_s: float = 60.0,
    time_scale: float = 1.0,
    on_ack: Callable[[str, str], None] | None = None,
    control_prefix: str | None = None,
    resend_grace_s: float = 10.0,
) -> FeedStats:
    """Run one monitor per patient for *duration_s*, each sending every *interval_s* seconds.

    *time_scale* compresses simulated time (360 = six simulated minutes per real second). An unacknowledged message
    is resent until acknowledged, for up to *resend_grace_s* after the run ends. Returns the send / ACK counts and
    the send-to-ACK latencies.
    """
    stats = FeedStats()
    t0 = time.monotonic()
    prefix = control_prefix if control_prefix is not None else datetime.now(UTC).strftime("%H%M%S-")
    tasks = [
        asyncio.create_task(
            _one_monitor(
                p,
                host,
                port,
                interval_s=interval_s,
                deadline=t0 + duration_s,
                time_scale=time_scale,
                t0_real=t0,
                stats=stats,
                on_ack=on_ack,
                prefix=prefix,
                resend_grace_s=resend_grace_s,
            )
        )
        for p in patients
    ]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
    return stats
