"""When the log-following worker polls and checkpoints: on a fake clock (no timing assertions), the order of its
polls, group transactions, checkpoints and sleeps, and that a checkpoint encodes its snapshots before it writes."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from medtwin.twin import TwinRuntime, follow, follow_loop, worker_process


class FakeClock:
    """``time`` as the worker module uses it: monotonic and perf_counter read a clock that only :meth:`sleep` and
    :meth:`advance` move; every sleep is recorded."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def perf_counter(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0.0
        self.sleeps.append(seconds)
        self.now += seconds

    def advance(self, seconds: float) -> None:
        self.now += seconds


class ScriptedFollower:
    """A log follower whose polls return the groups of *groups* in turn (each a number of messages), then nothing;
    every poll and commit is logged in *log* with the clock's time."""

    def __init__(self, groups: list[int], clock: FakeClock, log: list[tuple[str, float]]) -> None:
        self.groups = list(groups)
        self.clock = clock
        self.log = log
        self.read = self.position = self.messages = self.unmappable = self.shared_messages = 0
        self.last_poll_full = False

    def poll(self) -> list[tuple[Sequence[Any], float]]:
        self.log.append(("poll", self.clock.now))
        if not self.groups:
            return []
        n = self.groups.pop(0)
        self.read += n
        self.messages += n
        return [([], self.clock.now)] * n

    def commit(self) -> None:
        self.log.append(("cursor", self.clock.now))
        self.position = self.read


class ScriptedRuntime:
    """A runtime whose group takes *group_s* and whose checkpoint takes *checkpoint_s* on the fake clock; logs
    each group transaction and checkpoint."""

    def __init__(self, clock: FakeClock, log: list[tuple[str, float]], group_s: float, checkpoint_s: float) -> None:
        self.clock, self.log, self.group_s, self.checkpoint_s = clock, log, group_s, checkpoint_s
        self.alert_latencies_s: list[float] = []
        self.processed_latencies_s: list[float] = []
        self.events_published = self.alerts_raised = 0

    def process_many(self, items: Sequence[Any], *, also: Callable[[], None] | None = None,
                     checkpoint: bool = False) -> list[Any]:  # fmt: skip
        self.clock.advance(self.group_s)
        self.log.append(("group" if also is None and not checkpoint else "group+checkpoint", self.clock.now))
        if also is not None:
            also()
        return []

    def checkpoint(self, *, also: Callable[[], None] | None = None) -> None:
        self.clock.advance(self.checkpoint_s)
        self.log.append(("checkpoint", self.clock.now))
        if also is not None:
            also()


def run(monkeypatch: pytest.MonkeyPatch, groups: list[int], *, group_s: float, checkpoint_s: float = 0.0,
        **kw: Any) -> tuple[FakeClock, list[tuple[str, float]], Any]:  # fmt: skip
    clock = FakeClock()
    monkeypatch.setattr(follow_loop, "time", clock)
    log: list[tuple[str, float]] = []
    follower = ScriptedFollower(groups, clock, log)
    runtime = ScriptedRuntime(clock, log, group_s, checkpoint_s)
    stats = follow(follower, runtime, should_stop=lambda: not follower.groups, **kw)  # type: ignore[arg-type]
    return clock, log, stats


def test_a_group_s_processing_is_part_of_the_window_not_added_to_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # groups taking 0.05 s in a 0.2 s window: the worker sleeps the 0.15 s left, so it polls every 0.2 s
    # (until 2026-12-07 it slept 0.2 s after each group: a poll every 0.25 s, each reading waiting longer)
    clock, log, stats = run(monkeypatch, [10, 10, 10], group_s=0.05, group_window_s=0.2, cursor_every_s=1e9)
    polls = [t for what, t in log if what == "poll"]
    assert [round(b - a, 9) for a, b in itertools.pairwise(polls)] == [0.2, 0.2, 0.2]
    assert clock.sleeps[:3] == pytest.approx([0.15, 0.15, 0.15])
    assert stats.messages == 30


def test_a_group_longer_than_the_window_is_followed_by_the_next_poll_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    clock, log, _ = run(monkeypatch, [10, 10], group_s=0.5, group_window_s=0.2, cursor_every_s=1e9)
    polls = [t for what, t in log if what == "poll"]
    assert polls[1] - polls[0] == pytest.approx(0.5)  # no sleep after a group that outlasted the window
    assert clock.sleeps[0] == 0.0


def test_a_checkpoint_is_its_own_transaction_after_the_group_s(monkeypatch: pytest.MonkeyPatch) -> None:
    # every group is due a checkpoint: the group's outputs are committed first (their latency does not include the
    # snapshots), then the twins and the cursor together
    _, log, _ = run(monkeypatch, [5, 5], group_s=0.01, checkpoint_s=0.3, group_window_s=0.2, cursor_every_s=0.0)
    steps = [what for what, _ in log if what != "poll"]
    assert steps[:6] == ["group", "checkpoint", "cursor", "group", "checkpoint", "cursor"]
    assert "group+checkpoint" not in steps


def test_the_first_checkpoint_comes_after_first_checkpoint_s(monkeypatch: pytest.MonkeyPatch) -> None:
    # a group every 0.2 s for 2 s; checkpoints every 1 s, the first after 0.5 s (a second shard's phase)
    _, log, _ = run(monkeypatch, [1] * 10, group_s=0.0, group_window_s=0.2, cursor_every_s=1.0,
                    first_checkpoint_s=0.5)  # fmt: skip
    start = log[0][1]
    checkpoints = [round(t - start, 6) for what, t in log if what == "checkpoint"]
    assert checkpoints[:2] == [0.6, 1.6]  # the first group at or after 0.5 s, then 1 s later
    _, log, _ = run(monkeypatch, [1] * 10, group_s=0.0, group_window_s=0.2, cursor_every_s=1.0)
    start = log[0][1]
    assert next(round(t - start, 6) for what, t in log if what == "checkpoint") == 1.0  # default: one interval


def test_shards_are_given_staggered_first_checkpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[float | None] = []

    def fake_follow(*args: Any, first_checkpoint_s: float | None = None, **kw: Any) -> Any:
        seen.append(first_checkpoint_s)
        raise SystemExit  # enough: recover_and_follow's first call is what is checked

    monkeypatch.setattr(worker_process, "follow", fake_follow)

    class NoStore:
        pass

    monkeypatch.setattr(worker_process, "LogFollower", lambda *a, **kw: SimpleNamespace(position=0, messages=0))
    for shard in range(3):
        with pytest.raises(SystemExit):
            worker_process.recover_and_follow(NoStore(), lambda: NoStore(), should_stop=lambda: False,  # type: ignore[arg-type]
                                              shard=shard, shards=3)  # fmt: skip
    every = follow_loop.CHECKPOINT_EVERY_S
    assert seen == pytest.approx([every / 3, 2 * every / 3, every])


class RecordingStore:
    """A store that logs its writes and when its (one) unit of work takes the write lock: at its first write."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self._in_unit = False
        self._locked = False

    @contextmanager
    def unit_of_work(self) -> Any:
        self._in_unit, self._locked = True, False
        try:
            yield
        finally:
            self._in_unit = False
            self.log.append("commit")

    def save_snapshot(self, twin_id: str, blob: bytes, at: datetime) -> None:
        if self._in_unit and not self._locked:
            self._locked = True
            self.log.append("lock")
        self.log.append(f"insert {twin_id}")

    def latest_snapshot(self, twin_id: str) -> None:
        return None


def test_a_checkpoint_encodes_every_snapshot_before_it_takes_the_write_lock(tmp_path: Path) -> None:
    log: list[str] = []
    runtime = TwinRuntime(RecordingStore(log), snapshot_every=None)  # type: ignore[arg-type]
    for patient_id in ("p1", "p2", "p3"):
        twin = runtime.twin(patient_id)
        original = twin.snapshot

        def encoded(original: Callable[[], bytes] = original, patient_id: str = patient_id) -> bytes:
            log.append(f"encode {patient_id}")
            return original()

        twin.snapshot = encoded  # type: ignore[method-assign]
    runtime._dirty.update({"p1", "p2", "p3"})
    runtime.checkpoint(also=lambda: log.append("cursor"))
    assert log[:4] == ["encode p1", "encode p2", "encode p3", "lock"]
    assert log[4:] == ["insert patient:p1", "insert patient:p2", "insert patient:p3", "cursor", "commit"]
