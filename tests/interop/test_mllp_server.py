"""MLLP framing and the MLLP server: ACK modes, idempotency, dead letters, limits, fuzzing, the real store."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medtwin.interop.mllp import (
    FrameError,
    MemorySink,
    MllpClient,
    MllpConfig,
    MllpFramer,
    MllpServer,
    StoredBatch,
    frame,
)
from medtwin.records import Observation, Record
from medtwin.store import RawMessage, Store, WriteResult

FIXTURES = Path(__file__).parent.parent / "fixtures" / "hl7v2"
ORU = (FIXTURES / "authored_ORU_R01_vitals_loinc_v251.hl7").read_bytes()  # enhanced mode: MSH-15 AL
PCD = (FIXTURES / "authored_ORU_R01_vitals_pcd01_mdc_v26.hl7").read_bytes()  # MSH-16 AL: application ACK
ORIGINAL = (FIXTURES / "pythonhl7_sample_hl7.hl7").read_bytes()  # original mode


def oru(control_id: str) -> bytes:
    return PCD.replace(b"PCD-000042", control_id.encode())


def msa(ack: str) -> list[str]:
    seg = next(s for s in ack.split("\r") if s.startswith("MSA|"))
    return seg.split("|")


def err(ack: str) -> list[str]:
    seg = next(s for s in ack.split("\r") if s.startswith("ERR|"))
    return seg.split("|")


def serve(
    sink: Any,
    body: Callable[[MllpServer], Awaitable[None]],
    config: MllpConfig | None = None,
    on_stored: Callable[[StoredBatch], None] | None = None,
) -> MllpServer:
    async def main() -> MllpServer:
        server = MllpServer(sink, config or MllpConfig(port=0), on_stored=on_stored)
        await server.start()
        try:
            await asyncio.wait_for(body(server), 60)
        finally:
            await server.close()
        return server

    return asyncio.run(main())


async def connect(server: MllpServer) -> MllpClient:
    assert server.port is not None
    return await MllpClient.connect("127.0.0.1", server.port, timeout_s=10)


# -- framing ------------------------------------------------------------------------------------------------


def test_framer_splits_concatenated_frames_and_reports_junk() -> None:
    f = MllpFramer(max_bytes=100)
    out = f.feed(frame("A") + b"junk" + frame("B") + b"\r\n" + frame("C")[:-1])
    assert out[0] == b"A"
    assert isinstance(out[1], FrameError)
    assert "outside" in out[1].reason
    assert out[2] == b"B"
    assert f.feed(b"\r") == [b"C"]
    (bad,) = f.feed(b"no start\x1c\r")
    assert isinstance(bad, FrameError)
    assert "no start block" in bad.reason
    (unterminated, good) = f.feed(b"\x0bhalf" + frame("D"))
    assert isinstance(unterminated, FrameError)
    assert "not terminated" in unterminated.reason
    assert good == b"D"


def test_framer_oversize_frames_are_refused_and_skipped() -> None:
    f = MllpFramer(max_bytes=10)
    out = f.feed(b"\x0b" + b"x" * 50)
    assert len(out) == 1
    assert isinstance(out[0], FrameError)
    assert out[0].oversize
    assert f.feed(b"y" * 20 + b"\x1c\r" + frame("ok")) == [b"ok"]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\x0b", b"").replace(b"\x1c", b"")), max_size=8),
    st.lists(st.integers(1, 30), min_size=1, max_size=20),
)
def test_framer_is_independent_of_chunking(messages: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(frame(m) for m in messages)
    f = MllpFramer(max_bytes=1000)
    out: list[bytes | FrameError] = []
    pos, i = 0, 0
    while pos < len(stream):
        step = cuts[i % len(cuts)]
        out.extend(f.feed(stream[pos : pos + step]))
        pos += step
        i += 1
    assert out == messages


# -- server -------------------------------------------------------------------------------------------------


def test_ack_after_store_and_duplicates_stored_once() -> None:
    sink = MemorySink()

    async def body(server: MllpServer) -> None:
        async with await connect(server) as c:
            first = await c.send(oru("M-1"))
            again = await c.send(oru("M-1"))
            enhanced = await c.send(ORU)
            original = await c.send(ORIGINAL)
        assert msa(first)[1:3] == ["AA", "M-1"]
        assert msa(again)[1:3] == ["AA", "M-1"]
        assert "duplicate" in msa(again)[3]
        assert msa(enhanced)[1:3] == ["CA", "VS-000123"]
        assert msa(original)[1:3] == ["AA", "CNTRL-3456"]

    server = serve(sink, body)
    observations = [r for r in sink.records if isinstance(r, Observation)]
    assert len(observations) == 6 + 7 + 2
    assert server.stats.accepted == 3
    assert server.stats.duplicates == 1
    assert len(sink.entries("duplicate")) == 1


@pytest.mark.parametrize(
    ("payload", "code", "err_code", "reason"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "AR", "100", "before any MSH"),
        (b"\x00\x01\x02", "AR", "100", "MSH"),
        (oru("E-1").replace(b"|ORU^R01^ORU_R01|", b"||"), "AR", "101", "MSH-9"),
        (oru("E-2").replace(b"Testpatient", b"Test\xff\xfe"), "AR", "102", "not valid utf-8"),
        (oru("E-4").replace(b"PID|||MRN-4711^^^DT_HOSP^MR|", b"PID||||"), "AE", "101", "PID-3"),
    ],
)
def test_bad_input_gets_negative_ack_and_dead_letter(payload: bytes, code: str, err_code: str, reason: str) -> None:
    sink = MemorySink()

    async def body(server: MllpServer) -> None:
        async with await connect(server) as c:
            ack = await c.send(payload)
            assert msa(ack)[1] == code
            assert err(ack)[3].split("^")[0] == err_code
            assert reason in ack
            assert msa(await c.send(oru("OK-1")))[1] == "AA"  # the connection and server survive

    server = serve(sink, body)
    (dead,) = sink.entries("rejected")
    assert reason in (dead[2] or "")
    assert dead[0].payload == payload
    assert server.stats.rejected == 1
    assert server.stats.accepted == 1


def test_a_result_that_cannot_be_used_costs_only_itself() -> None:
    """One OBX with a value that is not a number: the other five results and the patient are stored, the message is
    kept whole in the raw log (accepted, the refusal in its reason), and the ACK is AE with an ERR naming the OBX."""
    sink = MemorySink()

    async def body(server: MllpServer) -> None:
        async with await connect(server) as c:
            ack = await c.send(oru("E-3").replace(b"|88|264864^", b"|fast|264864^"))
            assert msa(ack)[1:4] == ["AE", "E-3", "stored 5 result(s); 1 refused (see ERR)"]
            assert err(ack)[2:4] == ["OBX[1]^5", "102^Data type error^HL70357"]
            assert "not a number" in err(ack)[8]
            again = await c.send(oru("E-3").replace(b"|88|264864^", b"|fast|264864^"))
            assert msa(again)[1] == "AA"  # the same message again: a duplicate of what is stored

    server = serve(sink, body)
    assert not sink.entries("rejected")
    ((raw, _, reason),) = sink.entries("accepted")
    assert raw.source_id == "E-3"
    assert "refused OBX[1]^5" in (reason or "")
    assert sum(isinstance(r, Observation) for r in sink.records) == 5
    assert (server.stats.accepted, server.stats.refused_results, server.stats.duplicates) == (1, 1, 1)


def test_bad_encoding_nak_references_the_control_id() -> None:
    async def body(server: MllpServer) -> None:
        async with await connect(server) as c:
            ack = await c.send(oru("ENC-7").replace(b"Testpatient", b"Test\xff"))
        assert msa(ack)[1:3] == ["AR", "ENC-7"]

    serve(MemorySink(), body)


def test_oversize_and_malformed_frames() -> None:
    sink = MemorySink()

    async def body(server: MllpServer) -> None:
        c = await connect(server)
        await c.send_frame(b"MSH|" + b"x" * 5000)
        big = await c.read_ack()
        assert msa(big)[1] == "AR"
        assert "exceeds 2000 bytes" in big
        c._writer.write(b"garbage without frame\x1c\r")
        assert msa(await c.read_ack())[1] == "AR"
        assert msa(await c.send(oru("AFTER")))[1] == "AA"
        await c.close()

    serve(sink, body, MllpConfig(port=0, max_message_bytes=2000))
    reasons = [e[2] or "" for e in sink.entries("rejected")]
    assert any("exceeds" in r for r in reasons)
    assert any("no start block" in r for r in reasons)


def test_unmapped_types_and_batches() -> None:
    sink = MemorySink()
    ack_msg = (FIXTURES / "authored_ACK_AA_for_VS-000123.hl7").read_bytes()
    batch = (FIXTURES / "pythonhl7_sample_file.hl7").read_bytes()

    async def body(server: MllpServer) -> None:
        async with await connect(server) as c:
            assert msa(await c.send(ack_msg))[1] == "AA"
            # the batch's MSH-15/16 say NE/NE (never acknowledge): stored, and no ACK is sent
            await c.send_frame(batch)
            assert msa(await c.send(oru("B-2")))[1:3] == ["AA", "B-2"]
            original_mode = batch.replace(b"|NE|NE|AU|", b"|||AU|").replace(b"12334456778890", b"B-3")
            assert msa(await c.send(original_mode))[1:3] == ["AA", "B-3"]

    server = serve(sink, body)
    assert len(sink.entries("unmapped")) == 1
    assert server.stats.unmapped == 1
    assert any(type(r).__name__ == "Encounter" for r in sink.records)


def test_pipelined_messages_are_acked_in_order_and_group_committed() -> None:
    sink = MemorySink()
    stored: list[StoredBatch] = []

    async def body(server: MllpServer) -> None:
        clients = [await connect(server) for _ in range(4)]
        for k, c in enumerate(clients):
            for i in range(50):
                await c.send_frame(oru(f"P{k}-{i}"))
        for k, c in enumerate(clients):
            ids = [msa(await c.read_ack())[2] for _ in range(50)]
            assert ids == [f"P{k}-{i}" for i in range(50)]
            await c.close()

    server = serve(sink, body, on_stored=stored.append)
    assert server.stats.accepted == 200
    assert len(stored) == 200
    assert all(b.received_monotonic > 0 for b in stored)


def test_connection_limit_and_idle_timeout() -> None:
    async def body(server: MllpServer) -> None:
        first = await connect(server)
        assert msa(await first.send(oru("L-1")))[1] == "AA"
        second = await connect(server)
        with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
            await second.send(oru("L-2"))
        await second.close()
        await asyncio.sleep(0.6)  # idle timeout closes the first connection
        with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
            await first.send(oru("L-3"))
        await first.close()

    server = serve(MemorySink(), body, MllpConfig(port=0, max_connections=1, idle_timeout_s=0.3))
    assert server.stats.refused_connections == 1


class FailingSink(MemorySink):
    def write(self, records: Sequence[Record], raw: RawMessage | None = None) -> WriteResult:
        raise OSError("disk full")


def test_storage_failure_gives_application_error_not_a_crash() -> None:
    async def body(server: MllpServer) -> None:
        async with await connect(server) as c:
            ack = await c.send(oru("F-1"))
        assert msa(ack)[1] == "AE"
        assert err(ack)[3].startswith("207")
        assert "resend later" in ack

    server = serve(FailingSink(), body)
    assert server.stats.errors == 1


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=5))
def test_fuzz_server_answers_every_frame_and_keeps_serving(payloads: list[bytes]) -> None:
    payloads = [p.replace(b"\x0b", b"").replace(b"\x1c", b"") or b"x" for p in payloads]

    async def body(server: MllpServer) -> None:
        async with await connect(server) as c:
            for p in payloads:
                ack = await c.send(p)
                assert msa(ack)[1] in ("AA", "AR", "AE", "CA", "CR", "CE")
            assert msa(await c.send(oru("FUZZ-OK")))[1] == "AA"

    serve(MemorySink(), body)


def test_real_store_group_commit_and_dead_letters(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'mllp.db'}")

    async def body(server: MllpServer) -> None:
        clients = [await connect(server) for _ in range(3)]
        for k, c in enumerate(clients):
            for i in range(20):
                await c.send_frame(oru(f"S{k}-{i}"))
            await c.send_frame(oru(f"S{k}-0"))  # a resend
            await c.send_frame(b"not hl7")
        for c in clients:
            codes = [msa(await c.read_ack())[1] for _ in range(22)]
            assert codes == ["AA"] * 21 + ["AR"]
            await c.close()

    try:
        serve(store, body)
        counts = store.counts()
        assert counts["observations"] == 60 * 6
        assert counts["patients"] == 1
        assert len(store.raw_log(status="accepted", limit=1000)) == 60
        assert len(store.raw_log(status="duplicate", limit=1000)) == 3
        rejected = store.raw_log(status="rejected", limit=1000)
        assert len(rejected) == 3
        assert all("MSH" in (r.reason or "") for r in rejected)
        assert store.raw_seen("BEDSIDE_MON@ICU1", "S1-7") is not None
    finally:
        store.close()


def test_tls(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))

    async def body(server: MllpServer) -> None:
        assert server.port is not None
        c = await MllpClient.connect("127.0.0.1", server.port, ssl_context=client_ctx, timeout_s=10)
        assert msa(await c.send(oru("TLS-1")))[1] == "AA"
        await c.close()

    serve(MemorySink(), body, MllpConfig(port=0, ssl_context=server_ctx))


def test_full_subscriber_queue_delays_the_ack_instead_of_blocking_the_loop() -> None:
    calls: list[int] = []

    def on_stored(batch: StoredBatch) -> bool:
        calls.append(len(batch.records))
        return len(calls) >= 3  # "queue full" twice, then accepted

    async def body(server: MllpServer) -> None:
        async with await connect(server) as c:
            assert msa(await c.send(oru("BP-1")))[1] == "AA"

    serve(MemorySink(), body, on_stored=on_stored)
    assert len(calls) == 3


class PoisonSink(MemorySink):
    """A batch-capable sink that refuses one message: the group commit must isolate it."""

    def write(self, records: Sequence[Record], raw: RawMessage | None = None) -> WriteResult:
        if raw is not None and raw.source_id == "POISON":
            raise OSError("disk says no to this one")
        return super().write(records, raw)

    def write_batch(self, items: Sequence[tuple[Sequence[Record], RawMessage | None]]) -> list[WriteResult]:
        if any(raw is not None and raw.source_id == "POISON" for _, raw in items):
            raise OSError("the batch holds a poisoned message")
        return super().write_batch(items)


def test_group_commit_settles_each_asyncio_future_with_its_own_outcome() -> None:
    from medtwin.interop.mllp import GroupCommitWriter, _Job

    sink = PoisonSink()
    writer = GroupCommitWriter(sink)

    def raw(control_id: str) -> RawMessage:
        received = datetime(2026, 1, 1, tzinfo=UTC)
        return RawMessage(
            source_system="T@T", source_id=control_id, payload=b"MSH", content_type="x", received=received
        )

    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        futures = [writer.submit_to_loop(_Job("write", raw(c)), loop) for c in ("A", "POISON", "B", "A")]
        futures.append(writer.submit_to_loop(_Job("reject", raw("R#1"), reason="bad"), loop))
        return await asyncio.gather(*futures, return_exceptions=True)

    try:
        a, poison, b, again, rejected = asyncio.run(main())
    finally:
        writer.close()
    assert isinstance(a, WriteResult)
    assert not a.raw_duplicate
    assert isinstance(poison, OSError)
    assert isinstance(b, WriteResult)
    assert not b.raw_duplicate
    assert isinstance(again, WriteResult)
    assert again.raw_duplicate
    assert rejected is None
    assert [e[0].source_id for e in sink.entries("accepted")] == ["A", "B"]
    assert [e[0].source_id for e in sink.entries("rejected")] == ["R#1"]
