"""Consumer leases: one worker set at a time follows a consumer of the raw inbound log.

A hospital runs one set of twin workers per store. Two ``medtwin listen`` processes on one store used to run
workers under the same cursor names: both read, processed and checkpointed the same cursors (messages processed
twice, alerts raised twice, a cursor moved under the other worker). Now the set holds the consumer's row in
``consumer_leases`` (revision 0050): its *holder* token and until when the lease runs. The holder renews it while it
runs (:func:`keep_lease`, in the same transaction as each cursor save, so a worker whose lease was taken over can
never move a cursor); another set is refused while the lease runs (:class:`ConsumerBusyError`) and takes it over
once it has expired, so a holder killed with ``kill -9`` (which renews no more) blocks the next start for at most
one lease period, never forever. A holder on the same machine whose process is gone (its token names its process
id, boot and process-id namespace: :func:`new_holder`) is taken over at once: a listener restarted after a crash
does not wait for the lease to run out.

A worker set that saves no cursor (the twin runtime thread of ``medtwin listen --runtime thread``, fed by its own
listener) holds the same lease from a thread that renews it (:class:`HeldLease`).

A row, not an operating-system lock: it works alike on SQLite and PostgreSQL (workers on several hosts), and the
check is in the database that holds the cursors. Expiry is judged on each process's own clock (UTC): hosts sharing
a PostgreSQL store need synchronised clocks, well within a lease period.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from medtwin.errors import MedtwinError, ValidationError
from medtwin.store import schema
from medtwin.store.engine import safe_url

if TYPE_CHECKING:
    from medtwin.store.store import Store

__all__ = [
    "DEFAULT_LEASE_S",
    "ConsumerBusyError",
    "ConsumerLease",
    "ConsumerLeaseLostError",
    "HeldLease",
    "acquire_lease",
    "keep_lease",
    "new_holder",
    "process_holder",
    "release_lease",
]

log = logging.getLogger(__name__)

DEFAULT_LEASE_S = 30.0
"""How long a lease runs after its last renewal; its holder renews it every third of that."""


class ConsumerBusyError(MedtwinError):
    """Another worker set holds the consumer's lease: this one may not follow its cursors."""


class ConsumerLeaseLostError(MedtwinError):
    """The lease a worker held expired and another set took it over: the worker must stop."""


@dataclass(frozen=True, slots=True)
class ConsumerLease:
    """The lease of consumer *consumer* (the base cursor name) held by *holder* for *lease_s* seconds at a time."""

    consumer: str
    holder: str
    lease_s: float = DEFAULT_LEASE_S

    def __post_init__(self) -> None:
        if not self.consumer or not self.holder or not self.lease_s > 0:
            raise ValidationError(f"consumer lease: need a consumer, a holder and lease_s > 0, got {self!r}")


def _this_kernel() -> str:
    """This process's boot and process-id namespace (Linux; empty elsewhere): holders that share both see each
    other's process ids."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()[:8]
        return f"{boot}/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return ""


def new_holder() -> str:
    """A new holder token, naming this host and process (shown to a set that is refused)."""
    kernel = _this_kernel()
    return f"{socket.gethostname()[:100]} pid {os.getpid()} #{secrets.token_hex(4)}" + (f" @{kernel}" if kernel else "")


_HOLDER_PROCESS = re.compile(r".* pid (\d+) #\w+ @(\S+)")


def _is_gone(holder: str) -> bool:
    """Whether *holder* was a process of this kernel's boot and process-id namespace that no longer exists (its
    lease can be taken over at once, without waiting for it to expire; a reused process id counts as alive)."""
    found = _HOLDER_PROCESS.fullmatch(holder)
    if found is None or found.group(2) != _this_kernel():
        return False
    try:
        os.kill(int(found.group(1)), 0)
    except ProcessLookupError:
        return True
    except OSError:  # e.g. another user's process: alive
        return False
    return False


_PROCESS_HOLDERS: dict[int, str] = {}


def process_holder() -> str:
    """This process's own holder token (one per process, a forked child included)."""
    pid = os.getpid()
    holder = _PROCESS_HOLDERS.get(pid)
    if holder is None:
        holder = _PROCESS_HOLDERS[pid] = new_holder()
    return holder


def _try_acquire(store: Store, lease: ConsumerLease) -> tuple[str, datetime] | None:
    """Take or renew *lease*: None when held now, else the other holder and until when its lease runs."""
    t = schema.consumer_leases
    now = datetime.now(UTC)
    values = {"holder": lease.holder, "expires": now + timedelta(seconds=lease.lease_s), "updated": now}
    with store._transaction() as conn:
        row = conn.execute(select(t.c.holder, t.c.expires).where(t.c.consumer == lease.consumer)).first()
        if row is None:
            conn.execute(t.insert().values(consumer=lease.consumer, **values))
            return None
        holder, until = str(row[0]), row[1]
        gone = holder != lease.holder and until > now and _is_gone(holder)
        if holder != lease.holder and until > now and not gone:
            return holder, until
        # the WHERE is checked again on the row as it is when updated: of two sets taking a lease over at once, one
        # finds the other's holder there and updates nothing
        stale = t.c.expires <= now if holder != lease.holder and not gone else t.c.holder == holder
        taken = conn.execute(
            update(t).where(t.c.consumer == lease.consumer, t.c.holder == holder, stale).values(**values)
        ).rowcount
    if not taken:
        return holder, until
    if holder != lease.holder:
        log.warning("consumer %r: took over the lease of %s (%s)", lease.consumer, holder,
                    "its process is gone" if gone else f"expired at {until:%H:%M:%S} UTC")  # fmt: skip
    return None


def acquire_lease(store: Store, lease: ConsumerLease, *, wait_s: float = 0.0) -> None:
    """Take *lease* (or renew it, when its holder holds it already).

    Held by another holder: wait up to *wait_s* for that lease to expire (a holder that was killed renews it no
    more) and take it over; raise :class:`ConsumerBusyError` at once when the holder renews it meanwhile (it is
    alive), or when *wait_s* has passed.
    """
    deadline = time.monotonic() + wait_s
    seen: tuple[str, datetime] | None = None
    raced = False
    while True:
        try:
            held = _try_acquire(store, lease)
        except IntegrityError:
            if raced:
                raise
            raced = True  # another set inserted the row first (PostgreSQL): look again
            continue
        if held is None:
            return
        if seen is None:
            seen = held
        left = deadline - time.monotonic()
        if held != seen or left <= 0:
            break
        time.sleep(min(0.25, left))
    holder, until = held
    raise ConsumerBusyError(
        f"the twin workers of consumer {lease.consumer!r} already run on {safe_url(store.url)}: its lease is held "
        f"by {holder} (renewed until {until.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC). One worker set follows a "
        "store: stop the other `medtwin listen` first; if it was killed, its lease is taken over once it has expired"
    )


def keep_lease(store: Store, lease: ConsumerLease) -> None:
    """Renew *lease* for another ``lease_s`` (call it inside the transaction of a cursor save: the save then commits
    only while the lease is held); raise :class:`ConsumerLeaseLostError` when another holder has taken it over."""
    t = schema.consumer_leases
    now = datetime.now(UTC)
    with store._transaction() as conn:
        kept = conn.execute(
            update(t)
            .where(t.c.consumer == lease.consumer, t.c.holder == lease.holder)
            .values(expires=now + timedelta(seconds=lease.lease_s), updated=now)
        ).rowcount
    if not kept:
        raise ConsumerLeaseLostError(
            f"the lease of consumer {lease.consumer!r} held by {lease.holder} expired and was taken over (or "
            "released): this worker stops; its cursors are another worker set's now"
        )


def release_lease(store: Store, lease: ConsumerLease) -> None:
    """Give *lease* up (nothing happens when its holder no longer holds it), so the next set starts at once."""
    t = schema.consumer_leases
    with store._transaction() as conn:
        conn.execute(delete(t).where(t.c.consumer == lease.consumer, t.c.holder == lease.holder))


class HeldLease:
    """*lease* taken (as :func:`acquire_lease` takes it, waiting up to *wait_s*) and renewed from a thread of its own
    every third of its period until :meth:`release`: for a worker set with no cursor saves to renew it with.

    A renewal that finds the lease taken over (the process stalled past its period and another set started) sets
    :attr:`lost` and calls *on_lost* in the renewing thread: the set must stop, another follows the consumer now. A
    renewal that fails otherwise (the database out of reach for a moment) is logged and tried again a third of a
    period later; past the period, another set may take the lease over, and the next renewal finds it lost.
    """

    def __init__(
        self,
        store: Store,
        lease: ConsumerLease,
        *,
        wait_s: float = 0.0,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        acquire_lease(store, lease, wait_s=wait_s)
        self.store = store
        self.lease = lease
        self.lost = threading.Event()
        self._on_lost = on_lost
        self._released = threading.Event()
        self._thread = threading.Thread(target=self._renew, name=f"medtwin-lease-{lease.consumer}", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._released.wait(self.lease.lease_s / 3):
            try:
                keep_lease(self.store, self.lease)
            except ConsumerLeaseLostError as exc:
                log.error("%s", exc)
                self.lost.set()
                if self._on_lost is not None:
                    self._on_lost()
                return
            except Exception as exc:
                log.warning("consumer %r: cannot renew the lease of %s (%s); trying again in %.1f s",
                            self.lease.consumer, self.lease.holder, exc, self.lease.lease_s / 3)  # fmt: skip

    def release(self) -> None:
        """Stop renewing the lease and give it up (when it is still held), so the next set starts at once."""
        self._released.set()
        self._thread.join()
        if not self.lost.is_set():
            release_lease(self.store, self.lease)
