"""Chime's exception tree: every error the package raises derives from ``ChimeError``.

::

    ChimeError
    ├── ConfigError                 bad configuration (the CLI exits 2 with one line)
    ├── ProtocolError               a client frame broke the protocol (docs/protocol.md);
    │                               carries the wire error ``code`` and, when the
    │                               connection must close, the WebSocket ``close_code``
    ├── StoreError                  anything the storage layer raises
    │   ├── StoreUnavailable        storage is down or timed out: retry later
    │   ├── MessageNotFound         the message id is unknown
    │   └── FencedOut               a handler's cursor write carried a fence that a
    │                               newer holder of its lease replaced (handlers/lease.py)
    ├── BusError                    the bus (local or Redis) failed
    │   └── BusUnavailable
    │       └── PresenceUnavailable who is online could not be learnt (a peer or
    │                               Redis did not answer)
    ├── ActorError                  a process actor failed or did not answer in time
    │   └── TransportTampered       (runtime.sealed_transport) a Thespian frame without
    │                               a valid tag under this server's key
    ├── HandlerError                a channel handler failed, timed out or answered
    │                               something invalid (docs/handlers.md)
    ├── HttpError                   (api.http_server) a route refuses a request with
    │                               the HTTP status of its choosing
    ├── LaunchError                 (launcher) a started ``chime serve`` exited or did
    │                               not report its ports in time
    ├── ClientError                 chime_actors.client: the client library failed
    │   ├── ClientClosed            the client was closed, or gave up reconnecting
    │   │   └── ConnectFailed       it could not connect (refused, unauthorized, timed out)
    │   ├── NotConnected            a request that needs an open connection, made without one
    │   ├── ConnectionLost          the connection dropped before the request was answered
    │   ├── RequestTimeout          no answer within the request's timeout
    │   ├── TooManyPending          the bounded queue of unacked sends or requests is full
    │   └── RequestFailed           the server answered with an ``error`` frame (``code``)
    ├── BenchError                  (bench.runner) a run could not be carried out
    ├── BenchTargetError            (bench.target) the server under test could not be
    │                               started or found
    ├── BenchUsageError             (bench.options) options that do not make a run
    ├── HandshakeFailed             (bench.wire) the server refused the WebSocket upgrade
    └── SocketClosed                (bench.wire) a send on a closing or closed connection

A name in parentheses is the module (under ``chime_actors``) that defines the class;
the others are defined here. tests/unit/test_errors.py checks that this drawing
and the classes in the package are the same tree.

Library exceptions (sqlite3, redis, cassandra, websockets) are translated where they
enter our code and chained: ``raise StoreUnavailable(...) from exc``.
"""

from __future__ import annotations


class ChimeError(Exception):
    """Root of every exception raised by Chime."""


class ConfigError(ChimeError):
    """The configuration is invalid; ``key`` names the offending dotted key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"config error: {key}: {problem}")
        self.key = key
        self.problem = problem


class ProtocolError(ChimeError):
    """A client frame violates the wire contract.

    Attributes:
        code: the docs/protocol.md error code sent back (``bad_request``, ``too_large`` ...).
        close_code: when not None, the connection is closed with this WebSocket code
            after the error frame (docs/protocol.md says which errors close): a
            ``CloseCode`` (an int here only because the protocol package imports
            this module, not the other way round).
        request_id / client_msg_id: echoed back so the client can correlate.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        close_code: int | None = None,
        request_id: str | None = None,
        client_msg_id: str | None = None,
        retry_after_ms: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.close_code = close_code
        self.request_id = request_id
        self.client_msg_id = client_msg_id
        self.retry_after_ms = retry_after_ms


class StoreError(ChimeError):
    """The message store failed."""


class StoreUnavailable(StoreError):
    """Storage is unreachable or timed out; the operation was not carried out."""


class MessageNotFound(StoreError):
    """No message with that id exists in the channel."""


class FencedOut(StoreError):
    """A fenced handler cursor write or claim lost: a newer fence is stored.

    Attributes:
        fence: the fence storage holds now (higher than the caller's).
    """

    def __init__(self, handler: str, fence: int) -> None:
        super().__init__(f"handler {handler!r}: storage holds the newer fence {fence}")
        self.handler = handler
        self.fence = fence


class BusError(ChimeError):
    """The message bus failed."""


class BusUnavailable(BusError):
    """The bus is down; the publish or subscribe did not happen."""


class PresenceUnavailable(BusUnavailable):
    """A presence lookup was not answered (the process asked, or Redis, is down)."""


class ActorError(ChimeError):
    """A process actor failed or did not answer in time."""


class HandlerError(ChimeError):
    """A channel handler failed: it raised, overran its budget or answered nonsense.

    Handlers may raise it themselves (the ``webhook`` built-in does for a non-2xx
    answer); any exception of a handler counts as a failure all the same.
    """


class ClientError(ChimeError):
    """The client library (``chime_actors.client``) could not do what was asked."""


class ClientClosed(ClientError):
    """The client is closed (by ``close()``, a refused connect, or out of retries)."""


class ConnectFailed(ClientClosed):
    """The client could not connect; ``code`` is the wire error code when the server said why."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class NotConnected(ClientError):
    """The request needs an open connection and there is none right now."""


class ConnectionLost(ClientError):
    """The connection dropped before the request was answered; it may be retried."""


class RequestTimeout(ClientError):
    """No answer arrived within the request's timeout."""


class TooManyPending(ClientError):
    """The bounded queue of unacked sends (or of open requests) is full."""


class RequestFailed(ClientError):
    """The server answered a request with an ``error`` frame.

    Attributes:
        code: the wire error code (``bad_request``, ``unavailable`` ...).
        message: the server's human text.
        retry_after_ms: with ``rate_limited``, when to try again.
    """

    def __init__(self, code: str, message: str, *, retry_after_ms: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retry_after_ms = retry_after_ms
