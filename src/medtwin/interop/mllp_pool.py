"""More MLLP listener processes on one port, so the storage path is not bounded by one interpreter lock.

One listener process (event loop + group-commit writer thread) runs its Python under one interpreter lock: on the
project's 2-core VM it stored at most 4,100-4,300 messages/s with the machine half idle (``bench/stream.py
--with-ingest-only``; docs/benchmarks.md, "Streaming ingest"). :class:`ListenerPool` starts more listener
processes that bind the same port with ``SO_REUSEPORT``, so the kernel spreads new connections over all of them.
Each has its own :class:`~medtwin.store.Store` on the same database and takes the parent's
:class:`~medtwin.store.SharedWriteLock` around every write transaction (its yielding view: a waiting twin worker
still goes first), and leaves WAL checkpoints to the parent's checkpointer (:func:`medtwin.twin.worker.listener_store`).

Why the guarantees of one listener still hold:

* a resent message that reaches another process is still stored once and acknowledged again: duplicates are
  found by the database's unique index on (sender, control id), not by a per-process cache;
* every message is durable before its ACK, in whichever process received it (each commits its own group);
* the twin runtime's worker still sees every message in order: under SQLite's single writer a raw id is
  assigned inside the write transaction, so ids become visible in commit order. PostgreSQL gives no such order
  across concurrent writers (a lower id can commit after a higher one that the worker has already passed), so a
  pool on PostgreSQL is refused until the worker reads with a look-back.

A child stops when asked (:meth:`ListenerPool.stop`: it stops accepting, sends the ACKs it owes, finishes its
commits and reports its counters) or within a fraction of a second of its parent's death (``kill -9`` of
``medtwin listen``): messages it had not committed were not acknowledged, and senders resend them.
:meth:`ListenerPool.revive` starts a child again in place of one that died.
Needs Linux or another system whose ``SO_REUSEPORT`` balances connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import ssl
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

from medtwin.errors import ValidationError
from medtwin.interop.mllp import MllpConfig, MllpServer, run
from medtwin.service import exit_with_parent, prepare_service_heap
from medtwin.store import SharedWriteLock, Store
from medtwin.store.config import resolve_database_url
from medtwin.store.engine import is_memory_url

__all__ = ["ListenerPool", "RefusalRecorder", "server_ssl_context"]

log = logging.getLogger("medtwin.interop.mllp")

_PARENT_POLL_S = 0.2


class RefusalRecorder(Protocol):
    """What a listener process does with a refused sender (``MllpServer(on_refused=...)``), then closes at its
    end; ``medtwin listen`` gives :class:`medtwin.security.audit.SenderRefusals` (the audit chain)."""

    def __call__(self, facility: str, peer: str, why: str) -> None: ...

    def close(self) -> None: ...


def server_ssl_context(cert: str | None, key: str | None, client_ca: str | None = None) -> ssl.SSLContext | None:
    """A server-side TLS context from a PEM certificate chain and key file (None when *cert* is None); with
    *client_ca* (PEM) every client must present a certificate issued by it (mutual TLS: the handshake fails
    without one; :mod:`medtwin.interop.mllp_auth` then checks the facility it names)."""
    if cert is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(client_ca)
    return ctx


@dataclass(frozen=True, slots=True)
class _ChildSpec:
    """What a child needs to serve (sent to it at start; an SSL context cannot be, so the files are)."""

    db: str
    config: MllpConfig
    tls_cert: str | None
    tls_key: str | None
    client_ca: str | None = None
    refusals: Callable[[Store], RefusalRecorder] | None = None  # a class or module-level function: sent by pickle


class ListenerPool:
    """*extra* more listener processes beside the caller's own :class:`MllpServer` (see the module docstring).

    Start the parent's server first with ``MllpConfig(reuse_port=True)`` and pass its bound port to
    :meth:`start`. *write_lock* is the lock of the parent's store (:func:`medtwin.twin.worker.listener_store`);
    *config* gives the limits of each child (``max_connections`` is per process); its ``ssl_context`` is ignored:
    give the PEM files as *tls_cert* / *tls_key* and each child loads them. *refusals* makes, in each child and on
    its store, the recorder of refused senders (a class or a module-level function, since it is sent to the child);
    without it a child only logs its refusals.
    """

    def __init__(
        self,
        db: str | None,
        config: MllpConfig,
        *,
        extra: int,
        write_lock: SharedWriteLock,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        client_ca: str | None = None,
        refusals: Callable[[Store], RefusalRecorder] | None = None,
    ) -> None:
        if extra < 1:
            raise ValidationError(f"ListenerPool: extra must be at least 1, got {extra}")
        url = resolve_database_url(db)
        if not url.startswith("sqlite"):
            raise ValidationError(
                "ListenerPool: more than one listener process needs SQLite (on PostgreSQL raw ids can become "
                "visible out of order across writers, and the twin worker would skip messages); run one process"
            )
        if is_memory_url(url):
            raise ValidationError("ListenerPool: an in-memory database cannot be shared by processes; use a file")
        self.extra = extra
        self.write_lock = write_lock
        self._spec = _ChildSpec(
            url, replace(config, ssl_context=None, reuse_port=True), tls_cert, tls_key, client_ca, refusals
        )
        self._ctx = multiprocessing.get_context("spawn")
        self._stop: Any = None
        self._children: list[tuple[Any, multiprocessing.connection.Connection]] = []
        self.port: int | None = None
        self.revived = 0
        self.stats: list[dict[str, Any]] = []

    def start(self, port: int, timeout_s: float = 120.0) -> None:
        """Start the children on *port* (the parent's bound port) and wait until each is accepting."""
        self.port = port
        self._stop = self._ctx.Event()
        try:
            for _ in range(self.extra):
                self._children.append(self._spawn(timeout_s))
        except BaseException:
            self.stop()
            raise

    def _spawn(self, timeout_s: float) -> tuple[Any, multiprocessing.connection.Connection]:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(
            target=_child,
            args=(self._spec, self.port, self.write_lock, self._stop, child),
            name="medtwin-mllp-listener",
            daemon=True,
        )
        proc.start()
        child.close()
        reply: dict[str, Any] = {}
        if parent.poll(timeout_s):
            try:
                reply = dict(parent.recv())
            except EOFError:  # it died before it could say why (its log has the reason)
                proc.join(10)
                reply = {"error": f"the process exited with code {proc.exitcode}"}
        else:
            proc.kill()
            reply = {"error": f"not accepting within {timeout_s:.0f} s"}
        if "ready" not in reply:
            proc.join(10)
            parent.close()
            raise RuntimeError(f"an MLLP listener process failed to start: {reply.get('error', reply)}")
        return proc, parent

    def alive(self) -> int:
        """How many children are running."""
        return sum(1 for proc, _ in self._children if proc.is_alive())

    def revive(self, timeout_s: float = 120.0) -> int:
        """Start a new child in place of each one that died (logged); returns how many were started."""
        started = 0
        for i, (proc, conn) in enumerate(self._children):
            if proc.is_alive() or self._stop is None or self._stop.is_set():
                continue
            log.error("MLLP listener process %s exited (code %s); starting another", proc.pid, proc.exitcode)
            try:
                replacement = self._spawn(timeout_s)
            except RuntimeError:  # the others keep serving; the next call tries again
                log.exception("could not start an MLLP listener process in place of %s", proc.pid)
                continue
            conn.close()
            self._children[i] = replacement
            started += 1
        self.revived += started
        return started

    def stop(self, timeout_s: float = 60.0) -> list[dict[str, Any]]:
        """Ask every child to finish (ACKs owed, commits queued) and exit; returns their counters."""
        if self._stop is not None:
            self._stop.set()
        stats: list[dict[str, Any]] = []
        for proc, conn in self._children:
            report: dict[str, Any] = {"error": "the listener process exited without a report"}
            if conn.poll(timeout_s):  # a report, or the end of the pipe of a child that died
                with contextlib.suppress(EOFError, OSError):
                    report = dict(conn.recv())
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
            conn.close()
            stats.append(report)
        self._children = []
        self.stats = stats
        return stats

    def __repr__(self) -> str:
        return f"ListenerPool(extra={self.extra}, port={self.port}, alive={self.alive()})"


def _child(
    spec: _ChildSpec,
    port: int,
    lock: SharedWriteLock,
    stop: Any,
    conn: multiprocessing.connection.Connection,
) -> None:
    """A listener process: serve *port* until *stop* is set or the parent dies, then report the counters."""
    # Ctrl-C in a terminal reaches the whole process group: the parent stops this process through *stop*, after
    # it has sent the ACKs it owes; an interrupt would drop them
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        run(_serve(spec, port, lock, stop, conn))
    except Exception as exc:  # report, then fail: the parent logs why
        log.exception("MLLP listener process failed")
        with contextlib.suppress(OSError):
            conn.send({"error": f"{type(exc).__name__}: {exc}"})
        raise


async def _serve(
    spec: _ChildSpec, port: int, lock: SharedWriteLock, stop: Any, conn: multiprocessing.connection.Connection
) -> None:
    store = Store(spec.db, write_lock=lock.yielding(), checkpoints_elsewhere=True)
    refusals: RefusalRecorder | None = None
    try:
        config = replace(
            spec.config, port=port, ssl_context=server_ssl_context(spec.tls_cert, spec.tls_key, spec.client_ca)
        )
        refusals = None if spec.refusals is None else spec.refusals(store)
        server = MllpServer(store, config, on_refused=refusals)
        prepare_service_heap()  # this process is a service of its own (medtwin.service)
        await server.start()
        conn.send({"ready": os.getpid()})
        exit_with_parent(lambda: None)  # the loop below notices within 0.2 s; ended after a grace period at the latest
        parent = multiprocessing.parent_process()
        while not stop.is_set() and (parent is None or parent.is_alive()):
            await asyncio.sleep(_PARENT_POLL_S)
        await server.close()
        if not conn.closed:
            with contextlib.suppress(OSError):  # the parent is gone: nobody to report to
                conn.send({"pid": os.getpid(), **asdict(server.stats)})
    finally:
        try:
            if refusals is not None:  # its queued refusals are committed before the store goes
                refusals.close()
        finally:
            store.close()
