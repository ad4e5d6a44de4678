"""The MLLP server's connection handling: backpressure, ACK order under slow commits, half-close, shutdown, uvloop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from medtwin.interop.mllp import MemorySink, MllpClient, MllpConfig, MllpServer, frame, run
from medtwin.records import Record
from medtwin.store import RawMessage, WriteResult

FIXTURES = Path(__file__).parent.parent / "fixtures" / "hl7v2"
PCD = (FIXTURES / "authored_ORU_R01_vitals_pcd01_mdc_v26.hl7").read_bytes()  # MSH-16 AL: application ACK


def oru(control_id: str) -> bytes:
    return PCD.replace(b"PCD-000042", control_id.encode())


def msa(ack: str) -> list[str]:
    return next(s for s in ack.split("\r") if s.startswith("MSA|")).split("|")


class SlowSink(MemorySink):
    """Each commit takes *delay* seconds; records the largest number of messages in one group commit."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.largest_group = 0
        self.release = threading.Event()
        self.release.set()

    def write_batch(self, items: Sequence[tuple[Sequence[Record], RawMessage | None]]) -> list[WriteResult]:
        self.release.wait(30)
        time.sleep(self.delay)
        self.largest_group = max(self.largest_group, len(items))
        return super().write_batch(items)

    def write(self, records: Sequence[Record], raw: RawMessage | None = None) -> WriteResult:
        self.release.wait(30)
        time.sleep(self.delay)
        self.largest_group = max(self.largest_group, 1)
        return super().write(records, raw)


async def _connect(server: MllpServer) -> MllpClient:
    assert server.port is not None
    return await MllpClient.connect("127.0.0.1", server.port, timeout_s=20)


def test_a_slow_store_pauses_reading_instead_of_queueing_without_bound() -> None:
    N = 1000
    sink = SlowSink(delay=0.003)
    config = MllpConfig(port=0, max_in_flight=4)

    async def main() -> MllpServer:
        async with MllpServer(sink, config) as server:
            c = await _connect(server)
            c._writer.write(b"".join(frame(oru(f"BP-{i}")) for i in range(N)))  # ~1.2 MB at once
            ids = [msa(await c.read_ack())[2] for _ in range(N)]
            assert ids == [f"BP-{i}" for i in range(N)]  # every message answered, in order
            await c.close()
        return server

    server = asyncio.run(main())
    assert server.stats.accepted == N
    assert server.stats.reads_paused >= 2
    # the socket is read in chunks (at most 256 KiB, ~200 frames): one chunk may hold more frames than
    # max_in_flight, but reading stops until that backlog drains, so no group commit comes near the whole stream
    assert sink.largest_group <= N // 3


def test_acks_are_coalesced_but_never_reordered_across_connections() -> None:
    sink = SlowSink(delay=0.01)

    async def main() -> None:
        async with MllpServer(sink, MllpConfig(port=0)) as server:
            clients = [await _connect(server) for _ in range(5)]
            for k, c in enumerate(clients):
                c._writer.write(b"".join(frame(oru(f"C{k}-{i}")) for i in range(40)))
            for k, c in enumerate(clients):
                assert [msa(await c.read_ack())[2] for _ in range(40)] == [f"C{k}-{i}" for i in range(40)]
                await c.close()

    asyncio.run(main())
    assert len(sink.entries("accepted")) == 200


def test_half_closed_client_still_gets_every_ack() -> None:
    async def main() -> list[str]:
        async with MllpServer(SlowSink(delay=0.05), MllpConfig(port=0)) as server:
            assert server.port is not None
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"".join(frame(oru(f"H-{i}")) for i in range(5)))
            writer.write_eof()  # the sender is done; the ACKs still owed must arrive before the server closes
            data = await asyncio.wait_for(reader.read(), 20)  # until EOF
            writer.close()
            return [msa(part.decode())[2] for part in data.split(b"\x1c\r") if part.strip()]

    assert asyncio.run(main()) == [f"H-{i}" for i in range(5)]


def test_close_sends_the_acks_still_owed_then_closes() -> None:
    sink = SlowSink(delay=0.0)
    sink.release.clear()  # commits wait until released

    async def main() -> list[str]:
        server = MllpServer(sink, MllpConfig(port=0))
        await server.start()
        c = await _connect(server)
        c._writer.write(b"".join(frame(oru(f"S-{i}")) for i in range(3)))
        await asyncio.sleep(0.2)  # frames read and queued, commit blocked
        closing = asyncio.create_task(server.close())
        await asyncio.sleep(0.1)
        sink.release.set()
        await asyncio.wait_for(closing, 20)
        acks = [msa(await c.read_ack())[2] for _ in range(3)]
        with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
            await c.read_ack()  # then the server hung up
        await c.close()
        return acks

    assert asyncio.run(main()) == ["S-0", "S-1", "S-2"]
    assert [e[0].source_id for e in sink.entries("accepted")] == ["S-0", "S-1", "S-2"]


def test_server_runs_on_uvloop_with_the_same_behaviour() -> None:
    pytest.importorskip("uvloop")

    async def main() -> tuple[str, list[str]]:
        loop_name = type(asyncio.get_running_loop()).__module__
        async with MllpServer(MemorySink(), MllpConfig(port=0)) as server, await _connect(server) as c:
            acks = [msa(await c.send(oru(f"U-{i}")))[1] for i in range(3)]
            acks.append(msa(await c.send(oru("U-0")))[1])  # duplicate: acknowledged again
            acks.append(msa(await c.send(b"not hl7"))[1])
        return loop_name, acks

    loop_name, acks = run(main())
    assert loop_name.startswith("uvloop")
    assert acks == ["AA", "AA", "AA", "AA", "AR"]


def test_reuse_port_lets_two_listeners_share_one_port() -> None:
    async def main() -> tuple[int, int, list[str]]:
        first = MllpServer(MemorySink(), MllpConfig(port=0, reuse_port=True))
        port = await first.start()
        second = MllpServer(MemorySink(), MllpConfig(port=port, reuse_port=True))  # would fail: address in use
        try:
            assert await second.start() == port
            acks = []
            for i in range(6):  # the kernel spreads connections over both listeners; each answers
                async with await MllpClient.connect("127.0.0.1", port, timeout_s=20) as c:
                    acks.append(msa(await c.send(oru(f"RP-{i}")))[1])
        finally:
            await second.close()
            await first.close()
        return first.stats.accepted, second.stats.accepted, acks

    a, b, acks = asyncio.run(main())
    assert acks == ["AA"] * 6
    assert a + b == 6
