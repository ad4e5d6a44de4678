"""Shared helpers of the adversarial tests: an MLLP server running in a thread of its own, a blocking client."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from medtwin.interop.mllp import END_BLOCK, MllpConfig, MllpServer, frame
from medtwin.store import Store

FIXTURES = Path(__file__).parent.parent / "fixtures" / "hl7v2"


@contextlib.contextmanager
def serving(sink: Any, config: MllpConfig | None = None) -> Iterator[MllpServer]:
    """An :class:`MllpServer` on *sink*, in a thread with its own event loop, for the duration of the block."""
    ready = threading.Event()
    held: dict[str, Any] = {}

    async def main() -> None:
        server = MllpServer(sink, config or MllpConfig(port=0))
        await server.start()
        held.update(server=server, loop=asyncio.get_running_loop(), stop=asyncio.Event())
        ready.set()
        await held["stop"].wait()
        await server.close()

    def run() -> None:
        try:
            asyncio.run(main())
        finally:
            ready.set()

    thread = threading.Thread(target=run, name="test-mllp-server", daemon=True)
    thread.start()
    assert ready.wait(60), "the server did not start"
    assert "server" in held, "the server did not start"
    try:
        yield held["server"]
    finally:
        held["loop"].call_soon_threadsafe(held["stop"].set)
        thread.join(60)


def read_ack(sock: socket.socket, buffer: bytearray) -> str:
    """The next ACK on *sock* (text without framing); *buffer* keeps bytes read past it."""
    while END_BLOCK not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        buffer += chunk
    end = buffer.index(END_BLOCK)
    ack = bytes(buffer[1:end])
    del buffer[: end + 2]
    return ack.decode("utf-8", errors="replace")


def exchange(port: int, payloads: list[bytes], *, timeout_s: float = 30.0) -> list[str]:
    """Send each payload as one frame and read its ACK, one after the other, on one connection."""
    acks = []
    buffer = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        for payload in payloads:
            sock.sendall(frame(payload))
            acks.append(read_ack(sock, buffer))
    return acks


def send_only(port: int, payload: bytes) -> None:
    """Send *payload* as one frame and close, without waiting for an ACK."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(frame(payload))
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass


def msa(ack: str) -> list[str]:
    """The MSA fields of *ack* (``[MSA, code, control id, text...]``)."""
    return next(s for s in ack.split("\r") if s.startswith("MSA|")).split("|")


def errs(ack: str) -> list[list[str]]:
    """The ERR segments of *ack*, split into fields."""
    return [s.split("|") for s in ack.split("\r") if s.startswith("ERR|")]


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


class MllpKit:
    """The helpers above, handed to tests by the ``mllp`` fixture (test modules cannot import a conftest)."""

    serving = staticmethod(serving)
    exchange = staticmethod(exchange)
    send_only = staticmethod(send_only)
    read_ack = staticmethod(read_ack)
    msa = staticmethod(msa)
    errs = staticmethod(errs)
    fixture_bytes = staticmethod(fixture_bytes)
    fixtures = FIXTURES


@pytest.fixture
def mllp() -> MllpKit:
    """Helpers to run an MLLP server in a thread and talk to it."""
    return MllpKit()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """An empty store in a SQLite file."""
    s = Store(f"sqlite:///{tmp_path / 'adversarial.db'}")
    try:
        yield s
    finally:
        s.close()
