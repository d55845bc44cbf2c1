"""``ChimeClient``: the async Chime client over ``websockets``, with reconnects.

The I/O half of the client library. :class:`~chime_actors.client.state.ClientState`
decides what to remember and what to write; this module owns the socket: it
connects, feeds every frame to the state, writes what the state queues, turns
replies into answers for the awaiting callers, hands every event to one bounded
queue (``events()``), and after a lost connection waits as
:class:`~chime_actors.client.backoff.Reconnector` says and connects again with
``resume``.

Backpressure, not loss: when the event queue is full the client stops reading
the socket until the application takes events, and the server holds its
messages back (docs/protocol.md flow control). An application must therefore keep
consuming ``events()`` (or ``next_event()``); replies to ``send``, ``history``
and the other requests travel outside that queue, but are read off the same
socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from chime_actors.client.backoff import Backoff, Reconnector
from chime_actors.client.events import (
    Ack,
    Attachment,
    Connected,
    Disconnected,
    Error,
    Event,
    History,
    MessageDeleted,
    MessageEdited,
    Pong,
    Presence,
    Subscribed,
    Unsubscribed,
)
from chime_actors.client.state import ClientState, PendingSend
from chime_actors.client.uploads import DEFAULT_UPLOAD_TIMEOUT_S, UploadSource, upload
from chime_actors.errors import (
    ClientClosed,
    ClientError,
    ConnectFailed,
    ConnectionLost,
    RequestFailed,
    RequestTimeout,
    TooManyPending,
)
from chime_actors.protocol.codes import CloseCode

log = logging.getLogger(__name__)

# HTTP answers to the upgrade that another attempt will not change.
FATAL_HTTP_STATUSES = frozenset({400, 401, 403, 404})

Outcome = Callable[[Event], Event | BaseException | None]
"""Says whether an event answers a waiter: the answer, an exception, or None (not it)."""


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """Timeouts and bounds of a :class:`ChimeClient`; every wait has one.

    Attributes:
        connect_timeout_s: how long ``connect()`` waits for the first ``connected``
            (retrying meanwhile).
        open_timeout_s: one WebSocket opening handshake.
        handshake_timeout_s: the ``connect`` frame until ``connected``.
        request_timeout_s: default wait for an ack or a reply.
        upload_timeout_s: default wait for a whole ``upload``.
        close_timeout_s: the WebSocket closing handshake.
        backoff: the delays between reconnect attempts.
        max_attempts: failed attempts in a row before giving up (None: never).
        stable_s: a connection open this long resets the attempt count.
        max_pending: unacked sends kept for resending.
        max_requests: requests awaiting a reply at once.
        event_queue_size: events buffered for the application.
        max_frame_bytes: the largest server frame accepted.
    """

    connect_timeout_s: float = 10.0
    open_timeout_s: float = 10.0
    handshake_timeout_s: float = 10.0
    request_timeout_s: float = 10.0
    upload_timeout_s: float = DEFAULT_UPLOAD_TIMEOUT_S
    close_timeout_s: float = 5.0
    backoff: Backoff = field(default_factory=Backoff)
    max_attempts: int | None = None
    stable_s: float = 5.0
    max_pending: int = 1000
    max_requests: int = 1000
    event_queue_size: int = 10_000
    # A history page of 100 messages of 4000 characters fits with room to spare.
    max_frame_bytes: int = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class _Ended:
    """How one connection (or attempt) ended."""

    close_code: int | None
    reason: str
    # Fatal: another attempt would be refused the same way; ``error_code`` says why.
    fatal: bool = False
    error_code: str | None = None


@dataclass(slots=True)
class _Waiter:
    outcome: Outcome
    future: asyncio.Future[Event]
    # Sends survive a reconnect (they are resent); a request's reply dies with
    # the connection it was asked on.
    survives_reconnect: bool


class ChimeClient:
    """An async Chime chat client that reconnects, resumes and resends by itself.

    Args:
        url: the chat WebSocket, e.g. ``ws://127.0.0.1:3143/``.
        user_id: the user in insecure mode (None with a token, or to be ``anon-...``).
        token: a JWT in jwt mode.
        channels: channels to join on connect.
        options: timeouts and bounds.
        api_url: the API's base URL (``http://127.0.0.1:3142``), for ``upload``.

    Example::

        async with ChimeClient(url, user_id="alice", channels=["general"]) as client:
            ack = await client.send("general", "hello")
            async for event in client.events():
                if isinstance(event, Message):
                    print(event.message.user_id, event.message.content)
    """

    def __init__(
        self,
        url: str,
        *,
        user_id: str | None = None,
        token: str | None = None,
        channels: Iterable[str] = (),
        options: ClientOptions | None = None,
        reconnector: Reconnector | None = None,
        api_url: str | None = None,
    ) -> None:
        self._url = url
        self._api_url = api_url
        self._options = options or ClientOptions()
        opts = self._options
        self._state = ClientState(
            channels, user_id=user_id, token=token, max_pending=opts.max_pending
        )
        self._reconnector = reconnector or Reconnector(
            opts.backoff, max_attempts=opts.max_attempts, stable_s=opts.stable_s
        )
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(opts.event_queue_size)
        self._waiters: list[_Waiter] = []
        self._wake = asyncio.Event()
        self._ws: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._first: asyncio.Future[Connected] | None = None
        self._failure: ClientClosed | None = None
        self._finished = False

    # --- what the client knows --------------------------------------------------------

    @property
    def user_id(self) -> str | None:
        """The user the server settled on (known once connected)."""
        return self._state.user_id

    @property
    def is_connected(self) -> bool:
        """Whether a connection is open right now."""
        return self._state.is_open

    @property
    def channels(self) -> tuple[str, ...]:
        """The channels subscribed (joined again on every reconnect)."""
        return self._state.channels

    @property
    def last_seen(self) -> dict[str, str]:
        """The last messageId delivered per channel: the next connect's ``resume``."""
        return self._state.last_seen

    @property
    def pending(self) -> tuple[PendingSend, ...]:
        """Sends not acked yet, oldest first (resent after a reconnect)."""
        return self._state.pending

    @property
    def closed(self) -> bool:
        """Whether the client was closed or gave up."""
        return self._finished

    # --- lifecycle --------------------------------------------------------------------

    async def __aenter__(self) -> ChimeClient:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> Connected:
        """Start the client and wait for the first ``connected``.

        Attempts that fail are retried with backoff until
        ``options.connect_timeout_s`` has passed.

        Raises:
            ConnectFailed: refused for good (e.g. an invalid token), or timed out;
                the client is closed then.
        """
        if self._task is not None:
            raise ClientClosed("connect() was called already")
        loop = asyncio.get_running_loop()
        self._first = loop.create_future()
        self._task = loop.create_task(self._run(), name=f"chime client {self._url}")
        try:
            return await asyncio.wait_for(
                asyncio.shield(self._first), self._options.connect_timeout_s
            )
        except TimeoutError:
            await self.close()
            raise ConnectFailed(
                f"no connection to {self._url} within {self._options.connect_timeout_s} s"
            ) from None
        except ClientClosed:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the connection and stop reconnecting; pending waits raise ``ClientClosed``."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._finish(self._failure or ClientClosed("the client was closed"))

    # --- events -----------------------------------------------------------------------

    async def events(self) -> AsyncIterator[Event]:
        """Every event, in order, until the client is closed or gives up.

        One consumer at a time. While the queue is full the client stops reading
        the socket (see the module docstring).
        """
        while True:
            if self._finished and self._queue.empty():
                return
            event = await self._queue.get()
            if event is None:
                return
            yield event

    async def next_event(self, timeout: float | None = None) -> Event:
        """The next event, waiting at most ``timeout`` (default: the request timeout).

        Raises:
            RequestTimeout: none arrived in time.
            ClientClosed: the client is closed and every event was taken.
        """
        if self._finished and self._queue.empty():
            raise self._closed_error()
        try:
            event = await asyncio.wait_for(self._queue.get(), self._timeout(timeout))
        except TimeoutError:
            raise RequestTimeout("no event in time") from None
        if event is None:
            raise self._closed_error()
        return event

    # --- sending ----------------------------------------------------------------------

    def send_nowait(
        self,
        channel_id: str,
        content: str,
        *,
        client_msg_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
        thread_id: str | None = None,
        attachments: Iterable[str] | None = None,
    ) -> PendingSend:
        """Queue a send and return at once; its ``Ack`` (or ``Error``) comes as an event.

        Sent now if connected, else as soon as the client is; resent with the same
        ``clientMsgId`` after every reconnect until acked.

        Raises:
            ClientClosed: the client is closed.
            TooManyPending: ``options.max_pending`` sends are unacked.
        """
        self._check_open()
        pending = self._state.send(
            channel_id,
            content,
            client_msg_id=client_msg_id,
            metadata=metadata,
            thread_id=thread_id,
            attachments=attachments,
        )
        self._wake.set()
        return pending

    async def send(
        self,
        channel_id: str,
        content: str,
        *,
        client_msg_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
        thread_id: str | None = None,
        attachments: Iterable[str] | None = None,
        timeout: float | None = None,
    ) -> Ack:
        """Send a message and wait for its ack (across reconnects).

        Raises:
            RequestFailed: the server refused it (``unavailable``: not stored;
                retrying with the same ``client_msg_id`` is safe).
            RequestTimeout: no ack within ``timeout``; the send stays pending and
                is still resent after a reconnect.
            ClientClosed, TooManyPending: as for :meth:`send_nowait`.
        """
        pending = self.send_nowait(
            channel_id,
            content,
            client_msg_id=client_msg_id,
            metadata=metadata,
            thread_id=thread_id,
            attachments=attachments,
        )
        cid = pending.client_msg_id

        def outcome(event: Event) -> Event | BaseException | None:
            if isinstance(event, Ack) and event.client_msg_id == cid:
                return event
            if isinstance(event, Error) and event.client_msg_id == cid:
                return _failed(event)
            return None

        answer = await self._wait(self._add_waiter(outcome, survives_reconnect=True), timeout)
        assert isinstance(answer, Ack)
        return answer

    async def upload(
        self,
        source: UploadSource,
        filename: str | None = None,
        content_type: str | None = None,
        *,
        timeout: float | None = None,
    ) -> Attachment:
        """Upload a file (a path, or bytes with ``filename``) as this client's user.

        List the returned record's ``attachment_id`` in a ``send``. It goes over
        REST to ``api_url``, with the token (jwt mode) or the user id (insecure
        mode), connected or not. See :func:`chime_actors.client.uploads.upload`
        for the arguments and the errors.

        Raises:
            ClientError: the client was made without ``api_url``.
            RequestFailed, ConnectionLost, RequestTimeout, OSError: as ``upload``.
        """
        if self._api_url is None:
            raise ClientError("uploads go to the API port: make the client with api_url=...")
        return await upload(
            self._api_url,
            source,
            filename,
            content_type,
            user_id=self._state.user_id,
            token=self._state.token,
            timeout_s=self._options.upload_timeout_s if timeout is None else timeout,
        )

    # --- requests ---------------------------------------------------------------------

    async def subscribe(
        self, channels: Iterable[str], *, timeout: float | None = None
    ) -> Subscribed | None:
        """Join ``channels`` (now and on every reconnect).

        Returns the server's ``subscribed``, or None when not connected (the next
        connect joins them).

        Raises:
            RequestFailed: the server refused (``forbidden``, ``bad_request``).
        """
        self._check_open()
        wanted = list(dict.fromkeys(channels))
        if not self._state.subscribe(wanted):
            return None
        self._wake.set()
        answer = await self._wait(
            self._add_waiter(_channels_outcome(Subscribed, wanted), survives_reconnect=False),
            timeout,
        )
        assert isinstance(answer, Subscribed)
        return answer

    async def unsubscribe(
        self, channels: Iterable[str], *, timeout: float | None = None
    ) -> Unsubscribed | None:
        """Leave ``channels``; returns the server's ``unsubscribed`` (None if not connected)."""
        self._check_open()
        leaving = list(dict.fromkeys(channels))
        if not self._state.unsubscribe(leaving):
            return None
        self._wake.set()
        answer = await self._wait(
            self._add_waiter(_channels_outcome(Unsubscribed, leaving), survives_reconnect=False),
            timeout,
        )
        assert isinstance(answer, Unsubscribed)
        return answer

    async def history(
        self,
        channel_id: str,
        *,
        before: str | None = None,
        after: str | None = None,
        limit: int = 50,
        thread_id: str | None = None,
        timeout: float | None = None,
    ) -> History:
        """A page of a channel's messages, oldest first (docs/protocol.md "History").

        Raises:
            NotConnected: no connection is open.
            ConnectionLost: it dropped before the reply.
            RequestFailed, RequestTimeout.
        """
        frame: dict[str, Any] = {"type": "history", "channelId": channel_id, "limit": limit}
        for key, value in (("before", before), ("after", after), ("threadId", thread_id)):
            if value is not None:
                frame[key] = value
        answer = await self._request(frame, History, timeout)
        assert isinstance(answer, History)
        return answer

    async def presence(self, channel_id: str, *, timeout: float | None = None) -> Presence:
        """Who is online in ``channel_id``.

        Raises:
            RequestFailed: e.g. ``bad_request`` from a server without presence
                (``exc.code``, and ``"not supported"`` in ``exc.message``).
        """
        answer = await self._request(
            {"type": "presence", "channelId": channel_id}, Presence, timeout
        )
        assert isinstance(answer, Presence)
        return answer

    async def edit(
        self, channel_id: str, message_id: str, content: str, *, timeout: float | None = None
    ) -> MessageEdited:
        """Edit one's own message; returns the ``message_edited`` broadcast."""
        frame = {
            "type": "edit",
            "channelId": channel_id,
            "messageId": message_id,
            "content": content,
        }

        def done(event: Event) -> bool:
            return (
                isinstance(event, MessageEdited)
                and event.message.channel_id == channel_id
                and event.message.message_id == message_id
            )

        answer = await self._request(frame, done, timeout)
        assert isinstance(answer, MessageEdited)
        return answer

    async def delete(
        self, channel_id: str, message_id: str, *, timeout: float | None = None
    ) -> MessageDeleted:
        """Delete one's own message; returns the ``message_deleted`` broadcast."""
        frame = {"type": "delete", "channelId": channel_id, "messageId": message_id}

        def done(event: Event) -> bool:
            return (
                isinstance(event, MessageDeleted)
                and event.channel_id == channel_id
                and event.message_id == message_id
            )

        answer = await self._request(frame, done, timeout)
        assert isinstance(answer, MessageDeleted)
        return answer

    def react(self, channel_id: str, message_id: str, emoji: str, *, op: str = "add") -> None:
        """Add (``op="add"``) or remove a reaction; the ``reaction`` comes as an event.

        docs/protocol.md gives ``react`` no correlation id, so nothing is awaited: an
        error about it arrives as an ``Error`` event.

        Raises:
            NotConnected: no connection is open.
        """
        self._check_open()
        self._state.request(
            {
                "type": "react",
                "channelId": channel_id,
                "messageId": message_id,
                "emoji": emoji,
                "op": op,
            }
        )
        self._wake.set()

    def typing(self, channel_id: str) -> None:
        """Tell the channel's other subscribers that this user is typing."""
        self._check_open()
        self._state.request({"type": "typing", "channelId": channel_id})
        self._wake.set()

    async def ping(self, *, timeout: float | None = None) -> Pong:
        """An application-level ping; returns the ``pong``."""
        self._check_open()
        self._state.request({"type": "ping"})
        waiter = self._add_waiter(
            lambda e: e if isinstance(e, Pong) else None, survives_reconnect=False
        )
        self._wake.set()
        answer = await self._wait(waiter, timeout)
        assert isinstance(answer, Pong)
        return answer

    async def _request(
        self,
        frame: dict[str, Any],
        answer: type[Event] | Callable[[Event], bool],
        timeout: float | None,
    ) -> Event:
        """Send ``frame`` with a fresh ``requestId``; wait for what answers it.

        ``answer`` is the reply's type (matched by ``requestId``) or a predicate
        (for broadcasts that carry none); an ``error`` with the id fails it.
        """
        self._check_open()
        request_id = self._state.new_request_id()
        frame["requestId"] = request_id

        def outcome(event: Event) -> Event | BaseException | None:
            if isinstance(event, Error) and event.request_id == request_id:
                return _failed(event)
            if isinstance(answer, type):
                if isinstance(event, answer) and getattr(event, "request_id", None) == request_id:
                    return event
            elif answer(event):
                return event
            return None

        # The frame first: a NotConnected leaves no waiter behind.
        self._state.request(frame)
        waiter = self._add_waiter(outcome, survives_reconnect=False)
        self._wake.set()
        return await self._wait(waiter, timeout)

    # --- waiting for answers ----------------------------------------------------------

    def _add_waiter(self, outcome: Outcome, *, survives_reconnect: bool) -> _Waiter:
        if len(self._waiters) >= self._options.max_requests:
            raise TooManyPending(f"{len(self._waiters)} requests are waiting for a reply")
        waiter = _Waiter(outcome, asyncio.get_running_loop().create_future(), survives_reconnect)
        self._waiters.append(waiter)
        return waiter

    async def _wait(self, waiter: _Waiter, timeout: float | None) -> Event:
        try:
            return await asyncio.wait_for(waiter.future, self._timeout(timeout))
        except TimeoutError:
            raise RequestTimeout(f"no answer within {self._timeout(timeout)} s") from None
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def _answer_waiters(self, event: Event) -> None:
        for waiter in list(self._waiters):
            result = waiter.outcome(event)
            if result is None:
                continue
            self._waiters.remove(waiter)
            if waiter.future.done():
                continue
            if isinstance(result, BaseException):
                waiter.future.set_exception(result)
            else:
                waiter.future.set_result(result)

    def _fail_waiters(self, exc: Exception, *, all_of_them: bool) -> None:
        for waiter in list(self._waiters):
            if all_of_them or not waiter.survives_reconnect:
                self._waiters.remove(waiter)
                if not waiter.future.done():
                    waiter.future.set_exception(exc)

    def _timeout(self, timeout: float | None) -> float:
        return self._options.request_timeout_s if timeout is None else timeout

    # --- the connection loop ----------------------------------------------------------

    async def _run(self) -> None:
        """Connect, serve the connection, and reconnect until closed or given up."""
        failure: ClientClosed | None = None
        try:
            while True:
                ended = await self._serve_one()
                code, reason = ended.close_code, ended.reason
                for event in self._state.connection_lost():
                    await self._deliver(event)
                self._fail_waiters(ConnectionLost(f"connection lost: {reason}"), all_of_them=False)
                delay = None if ended.fatal else self._reconnector.next_delay()
                if delay is None:
                    failure = ConnectFailed(
                        f"gave up connecting to {self._url}: {reason}", code=ended.error_code
                    )
                    log.info("chime client gives up: %s", reason)
                    await self._deliver(Disconnected(code, reason, None, final=True))
                    return
                log.debug("chime client reconnects in %.2f s: %s", delay, reason)
                await self._deliver(Disconnected(code, reason, delay))
                await asyncio.sleep(delay)
        finally:
            self._finish(failure or ClientClosed("the client was closed"))

    async def _serve_one(self) -> _Ended:
        """One connection from open to close."""
        opts = self._options
        try:
            ws = await connect(
                self._url,
                open_timeout=opts.open_timeout_s,
                close_timeout=opts.close_timeout_s,
                max_size=opts.max_frame_bytes,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            return _Ended(None, f"HTTP {status}", fatal=status in FATAL_HTTP_STATUSES)
        except InvalidURI as exc:
            return _Ended(None, str(exc), fatal=True)
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            return _Ended(None, str(exc) or type(exc).__name__)
        except Exception as exc:  # a library failure we did not foresee: still retry
            log.debug("chime client: connect failed", exc_info=True)
            return _Ended(None, f"{type(exc).__name__}: {exc}")
        self._ws = ws
        writer: asyncio.Task[None] | None = None
        reason = "closed"
        refused: Error | None = None
        try:
            await ws.send(_dumps(self._state.connect_frame()))
            async with asyncio.timeout(opts.handshake_timeout_s):
                while not self._state.is_open and refused is None:
                    events = await self._handle(await ws.recv())
                    # A connect refused as malformed (say, an invalid userId) would
                    # be refused again: give up rather than retry forever.
                    refused = next(
                        (e for e in events if isinstance(e, Error) and e.code == "bad_request"),
                        None,
                    )
            if refused is not None:
                return _Ended(None, refused.message, fatal=True, error_code=refused.code)
            self._reconnector.opened()
            writer = asyncio.get_running_loop().create_task(self._write_loop(ws))
            self._wake.set()
            async for raw in ws:
                await self._handle(raw)
        except ConnectionClosed:
            pass
        except TimeoutError:
            reason = f"no 'connected' within {opts.handshake_timeout_s} s"
        finally:
            self._ws = None
            if writer is not None:
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writer
            await ws.close()
        code = ws.close_code
        if ws.close_reason:
            reason = ws.close_reason
        elif code is not None:
            reason = f"closed with {code}"
        if code == CloseCode.UNAUTHORIZED:  # the token was refused: retrying cannot help
            return _Ended(code, reason, fatal=True, error_code="unauthorized")
        return _Ended(code, reason)

    async def _write_loop(self, ws: ClientConnection) -> None:
        """Write what the state queues, whenever it is woken."""
        with contextlib.suppress(ConnectionClosed):
            while True:
                await self._wake.wait()
                self._wake.clear()
                for frame in self._state.take_outgoing():
                    await ws.send(_dumps(frame))

    async def _handle(self, raw: str | bytes) -> list[Event]:
        try:
            frame = orjson.loads(raw)
        except orjson.JSONDecodeError:
            frame = {"type": None, "raw": raw if isinstance(raw, str) else repr(raw)}
        if not isinstance(frame, dict):
            frame = {"type": None, "raw": frame}
        events = self._state.receive(frame)
        if self._state.is_open:
            self._wake.set()  # the state may have queued frames (resends, gap pages)
        for event in events:
            await self._deliver(event)
        return events

    async def _deliver(self, event: Event) -> None:
        if isinstance(event, Connected) and self._first is not None and not self._first.done():
            self._first.set_result(event)
        self._answer_waiters(event)
        # Blocks while the application is behind: backpressure, never a dropped event.
        await self._queue.put(event)

    def _finish(self, failure: ClientClosed) -> None:
        if self._finished:
            return
        self._finished = True
        self._failure = failure
        self._fail_waiters(failure, all_of_them=True)
        if self._first is not None and not self._first.done():
            self._first.set_exception(failure)
            self._first.exception()  # retrieved: connect() may not be waiting any more
        # Wake a consumer blocked on an empty queue; a full one drains, then ends.
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)

    def _check_open(self) -> None:
        if self._finished:
            raise self._closed_error()

    def _closed_error(self) -> ClientClosed:
        return self._failure or ClientClosed("the client is closed")


def _dumps(frame: Mapping[str, Any]) -> str:
    return orjson.dumps(frame).decode()


def _failed(event: Error) -> RequestFailed:
    return RequestFailed(event.code, event.message, retry_after_ms=event.retry_after_ms)


def _channels_outcome(reply: type[Subscribed] | type[Unsubscribed], channels: list[str]) -> Outcome:
    """(Un)subscribe carries no requestId: match the reply naming our channels, or an
    uncorrelated error that names one of them (``forbidden`` lists the channels)."""

    def outcome(event: Event) -> Event | BaseException | None:
        if isinstance(event, reply) and set(event.channels) & set(channels):
            return event
        if (
            isinstance(event, Error)
            and event.request_id is None
            and event.client_msg_id is None
            and any(channel in event.message for channel in channels)
        ):
            return _failed(event)
        return None

    return outcome
