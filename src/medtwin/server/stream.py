"""Live events: new alerts and derived events pushed over Server-Sent Events and WebSocket.

The twin worker that raises them is another process, so the server learns of them from the database:

* PostgreSQL: migration 0020's trigger sends ``NOTIFY medtwin_events, '<event id>'`` when an event is stored or
  updated; a listening connection (``LISTEN``) wakes at once, and the server reads those events.
* SQLite has no notification between processes: the server polls the events table every ``poll_s`` (0.2 s) for
  ids above its cursor. Event ids are time-ordered (UUIDv7, :func:`medtwin.records.new_id`), so the cursor is an
  id; it starts :data:`LOOKBACK_MS` behind the newest id seen and remembers the ids it has sent, because ids made in
  the same millisecond by different writers are not ordered by commit.

Either way one thread per server reads; each subscriber (an SSE response or a WebSocket) has a bounded queue
(a subscriber that does not read loses the oldest events, never the server's memory) and receives only the events
of patients it may see, of the kinds its token permits (alerts: ``Flag``; derived events: ``DetectedIssue``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter, Query, Request, WebSocket, WebSocketDisconnect
from sqlalchemy import make_url, select
from starlette.responses import StreamingResponse

from medtwin.records import Event
from medtwin.security.principal import Principal
from medtwin.server.errors import ERROR_RESPONSES, ApiError
from medtwin.server.guard import authenticate, platform_of, require, source_of
from medtwin.store import Store, codec, schema

__all__ = ["LOOKBACK_MS", "EventBroker", "router"]

log = logging.getLogger(__name__)
router = APIRouter(tags=["live"])

LOOKBACK_MS = 5000
"""How far behind the newest id seen the SQLite poll looks again (commits can land out of id order)."""
_QUEUE = 1000
_TIME_ORDERED = re.compile(r"^[0-9a-f]{32}$")
_KINDS = {"alert": "Flag", "derived": "DetectedIssue", "recommendation": "DetectedIssue"}


class EventBroker:
    """Follows the store's events (LISTEN/NOTIFY on PostgreSQL, a polled id cursor on SQLite) and fans them out."""

    def __init__(self, store: Store, *, poll_s: float = 0.2) -> None:
        self.store = store
        self.poll_s = poll_s
        self.postgres = store.engine.dialect.name == "postgresql"
        self._subscribers: set[asyncio.Queue[Event]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sent: OrderedDict[str, None] = OrderedDict()
        self._cursor = _id_floor(int(time.time() * 1000))
        self.ready = threading.Event()

    # -- subscribers ------------------------------------------------------------------------------------------
    def subscribe(self) -> asyncio.Queue[Event]:
        """A new subscriber's queue (call from the event loop); starts the follower on first use."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Event] = asyncio.Queue(_QUEUE)
        self._subscribers.add(queue)
        self.start()
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Event]) -> None:
        """Stop delivering to *queue*."""
        self._subscribers.discard(queue)

    def _publish(self, event: Event) -> None:  # in the event loop
        for queue in list(self._subscribers):
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(event)

    def _deliver(self, events: list[Event]) -> None:  # in the follower thread
        loop = self._loop
        if loop is None or not events:
            return
        for event in events:
            loop.call_soon_threadsafe(self._publish, event)

    # -- following --------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the follower thread (idempotent)."""
        if self._thread is None:
            target = self._listen if self.postgres else self._poll
            self._thread = threading.Thread(target=target, name="medtwin-event-broker", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the follower thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _read_after(self, floor: str) -> list[Event]:
        t = schema.events
        rows: list[Any] = []
        after = floor
        with self.store.engine.connect() as conn:
            while True:  # page on: a lookback window can hold more than one page of events (200+ events/s)
                stmt = select(t.c.event_id, t.c.body).where(t.c.event_id > after).order_by(t.c.event_id).limit(1000)
                page = list(conn.execute(stmt))
                rows.extend(page)
                if len(page) < 1000:
                    break
                after = page[-1][0]
        fresh = []
        for event_id, body in rows:
            if event_id in self._sent:
                continue
            self._sent[event_id] = None
            fresh.append(codec.decode(Event, body))
        while len(self._sent) > 100_000:
            self._sent.popitem(last=False)
        stamped = [r[0] for r in rows if _TIME_ORDERED.match(r[0])]  # ids made by new_id(); others are sent once
        if stamped:
            newest_ms = int(stamped[-1][:12], 16)
            self._cursor = max(self._cursor, _id_floor(newest_ms - LOOKBACK_MS))
        return fresh

    def _poll(self) -> None:
        self.ready.set()
        while not self._stop.is_set():
            try:
                self._deliver(self._read_after(self._cursor))
            except Exception:  # a database hiccup must not end the stream: log it and poll again
                log.exception("reading new events failed")
            self._stop.wait(self.poll_s)

    def _read_ids(self, ids: list[str]) -> list[Event]:
        t = schema.events
        with self.store.engine.connect() as conn:
            rows = list(conn.execute(select(t.c.body).where(t.c.event_id.in_(ids))).scalars())
        return [codec.decode(Event, b) for b in rows]

    def _listen(self) -> None:
        import psycopg

        url = make_url(self.store.url).set(drivername="postgresql")
        dsn = url.render_as_string(hide_password=False)
        while not self._stop.is_set():
            try:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute("LISTEN medtwin_events")
                    self.ready.set()
                    while not self._stop.is_set():
                        ids = [n.payload for n in conn.notifies(timeout=0.5, stop_after=500)]
                        if ids:
                            self._deliver(self._read_ids(list(dict.fromkeys(ids))))
            except Exception:  # reconnect after a lost connection
                log.exception("listening for events failed; reconnecting")
                self._stop.wait(1.0)


def _id_floor(millis: int) -> str:
    """The smallest event id made at Unix time *millis* (ids start with 48 bits of milliseconds)."""
    return f"{max(0, millis) & ((1 << 48) - 1):012x}" + "0" * 20


def _visible(request_app_platform: Any, principal: Principal, event: Event) -> bool:
    """True when *principal* may receive *event* (its kind's type readable, its patient reachable, not research)."""
    platform = request_app_platform
    if not platform.settings.security:
        return True
    rtype = _KINDS.get(event.kind, "DetectedIssue")
    if not platform.policy.may(principal, rtype, "r"):
        return False
    if event.patient_id is None:
        return principal.role == "admin"
    access = platform.policy.patient_access(principal, event.patient_id, rtype, "r", at=datetime.now(UTC))
    return access.allowed and not access.deidentify and not access.break_glass


def _event_json(event: Event) -> dict[str, Any]:
    return {
        "id": event.event_id,
        "kind": event.kind,
        "code": event.code,
        "patient_id": event.patient_id,
        "severity": event.severity,
        "status": event.status,
        "time": event.time.isoformat(),
        "message": event.message,
    }


async def _stream_principal(conn: Request | WebSocket) -> Principal:
    principal = await authenticate(conn, query_token=True)
    if principal.role in ("researcher", "device"):
        raise ApiError(403, "forbidden", f"the live stream is not available to the {principal.role} role")
    await require(conn, principal, "Flag", "r", "stream")
    return principal


def _broker(conn: Request | WebSocket) -> EventBroker:
    platform = platform_of(conn)
    broker: EventBroker | None = platform.extra.get("broker")
    if broker is None:
        broker = EventBroker(platform.store, poll_s=platform.settings.stream_poll_s)
        platform.extra["broker"] = broker
    return broker


@router.get(
    "/api/stream",
    responses=ERROR_RESPONSES,
    summary="Live alerts and derived events (Server-Sent Events)",
    response_class=StreamingResponse,
)
async def stream(request: Request, access_token: str | None = Query(None, max_length=4096)) -> StreamingResponse:
    """An SSE stream (``text/event-stream``): one ``event: alert|derived`` with a JSON ``data`` line per event."""
    principal = await _stream_principal(request)
    platform = platform_of(request)
    broker = _broker(request)
    queue = broker.subscribe()
    await platform.record(principal, "read", "stream", source=source_of(request), detail="live events (SSE)")

    async def events() -> AsyncIterator[bytes]:
        try:
            yield b": medtwin live events\n\n"
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), 15.0)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                if _visible(platform, principal, event):
                    data = orjson.dumps(_event_json(event))
                    yield (
                        b"event: "
                        + event.kind.encode()
                        + b"\nid: "
                        + event.event_id.encode()
                        + b"\ndata: "
                        + data
                        + b"\n\n"
                    )
        finally:
            broker.unsubscribe(queue)

    return StreamingResponse(events(), media_type="text/event-stream", headers={"X-Accel-Buffering": "no"})


@router.websocket("/api/ws")
async def websocket_stream(websocket: WebSocket) -> None:
    """The same events as JSON messages over a WebSocket (token: ``?access_token=`` or the Authorization header)."""
    try:
        principal = await _stream_principal(websocket)
    except ApiError as exc:
        await websocket.close(code=1008, reason=exc.message[:120])
        return
    platform = platform_of(websocket)
    broker = _broker(websocket)
    await websocket.accept()
    queue = broker.subscribe()
    await platform.record(principal, "read", "stream", source=source_of(websocket), detail="live events (WebSocket)")
    try:
        while True:
            event = await queue.get()
            if _visible(platform, principal, event):
                await websocket.send_text(orjson.dumps(_event_json(event)).decode())
    except WebSocketDisconnect:
        pass
    finally:
        broker.unsubscribe(queue)
