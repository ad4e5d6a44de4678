"""Consumer leases: one worker set at a time follows a consumer's cursors; a lease no longer renewed is taken over
once it has expired, and its old holder can renew it no more."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

import medtwin
from medtwin.store import Store, schema
from medtwin.store.leases import (
    ConsumerBusyError,
    ConsumerLease,
    ConsumerLeaseLostError,
    HeldLease,
    acquire_lease,
    keep_lease,
    new_holder,
    release_lease,
)


def test_a_live_lease_refuses_another_holder_and_names_it(store: Store) -> None:
    first = ConsumerLease("twin-runtime", "ward-host pid 101 #a1")
    second = ConsumerLease("twin-runtime", "ward-host pid 202 #b2")
    acquire_lease(store, first)
    acquire_lease(store, first)  # its holder again: renewed, not refused
    with pytest.raises(ConsumerBusyError, match="held by ward-host pid 101 #a1") as refused:
        acquire_lease(store, second)
    assert "stop the other `medtwin listen` first" in str(refused.value)
    acquire_lease(store, ConsumerLease("another-consumer", second.holder))  # a lease per consumer
    release_lease(store, second)  # not its lease: nothing happens
    with pytest.raises(ConsumerBusyError):
        acquire_lease(store, second)
    release_lease(store, first)
    acquire_lease(store, second)  # given up: taken at once


def test_an_expired_lease_is_taken_over_and_its_old_holder_can_no_longer_renew_it(store: Store) -> None:
    killed = ConsumerLease("twin-runtime", "killed", lease_s=0.3)
    successor = ConsumerLease("twin-runtime", "successor")
    acquire_lease(store, killed)
    keep_lease(store, killed)
    with pytest.raises(ConsumerBusyError, match="held by killed"):
        acquire_lease(store, successor)
    acquire_lease(store, successor, wait_s=10.0)  # nobody renews it: taken over once it has expired
    with pytest.raises(ConsumerLeaseLostError, match="taken over"):
        keep_lease(store, killed)
    release_lease(store, killed)  # no longer its lease: the successor keeps it
    keep_lease(store, successor)
    with pytest.raises(ConsumerBusyError, match="held by successor"):
        acquire_lease(store, killed)


def test_a_lease_needs_a_consumer_a_holder_and_a_period() -> None:
    with pytest.raises(ValueError, match="lease_s > 0"):
        ConsumerLease("twin-runtime", "h", lease_s=0.0)
    with pytest.raises(ValueError, match="need a consumer"):
        ConsumerLease("", "h")


KILLED_HOLDER = """
import os, signal, sys
from medtwin.store import Store
from medtwin.store.leases import ConsumerLease, acquire_lease, new_holder
store = Store(sys.argv[1])
acquire_lease(store, ConsumerLease("twin-runtime", new_holder(), lease_s=3600.0))
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_the_lease_of_a_killed_process_on_this_machine_is_taken_over_at_once(store: Store) -> None:
    # the medtwin this test imported (a worktree's src, not the environment's editable install)
    path = os.pathsep.join([str(Path(medtwin.__file__).resolve().parents[1]), os.getcwd()])
    killed = subprocess.Popen([sys.executable, "-c", KILLED_HOLDER, store.url], env={**os.environ, "PYTHONPATH": path})
    assert killed.wait(120) == -signal.SIGKILL
    with store._reading() as conn:
        (holder,) = conn.execute(select(schema.consumer_leases.c.holder)).scalars()
    assert f" pid {killed.pid} " in holder  # its lease runs another hour
    acquire_lease(store, ConsumerLease("twin-runtime", "restarted"))  # its process is gone: taken at once
    keep_lease(store, ConsumerLease("twin-runtime", "restarted"))
    alive = ConsumerLease("another-consumer", new_holder())  # a live process of this machine: not taken over
    acquire_lease(store, alive)
    with pytest.raises(ConsumerBusyError, match=f"pid {os.getpid()} "):
        acquire_lease(store, ConsumerLease("another-consumer", new_holder()))


def test_a_held_lease_is_renewed_by_its_thread_until_released_and_says_when_it_is_lost(store: Store) -> None:
    lost: list[str] = []
    held = HeldLease(
        store, ConsumerLease("twin-runtime", "listen thread", lease_s=1.5), on_lost=lambda: lost.append("first")
    )
    time.sleep(3.5)  # past two periods: alive only because its thread renews it
    with pytest.raises(ConsumerBusyError, match="held by listen thread"):
        acquire_lease(store, ConsumerLease("twin-runtime", "another set"), wait_s=1.0)
    held.release()
    acquire_lease(store, ConsumerLease("twin-runtime", "another set"))  # given up: taken at once
    with pytest.raises(ConsumerBusyError, match="held by another set"):
        HeldLease(store, ConsumerLease("twin-runtime", "listen thread"))
    release_lease(store, ConsumerLease("twin-runtime", "another set"))
    taken_over = HeldLease(store, ConsumerLease("twin-runtime", "stalled", lease_s=0.6),
                           on_lost=lambda: lost.append("stalled"))  # fmt: skip
    release_lease(store, taken_over.lease)  # as if it had expired and another set had taken it over
    assert taken_over.lost.wait(5)
    taken_over.release()  # after a loss: nothing to give up
    assert lost == ["stalled"]  # the first was released, never lost
