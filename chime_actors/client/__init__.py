"""``chime_actors.client``: an async Python client for Chime, with the server's reliability.

It connects (``userId`` in insecure mode, a JWT ``token`` in jwt mode),
reconnects with exponential backoff and jitter, resumes every channel from the
last message it delivered (no gap, no duplicate: anything at or below that id is
dropped), resends unacked sends with their ``clientMsgId`` after a reconnect (the
server stores each once), and delivers everything as typed, frozen events from
one async iterator. Every wait has a timeout and every queue a bound.

Example::

    import asyncio
    from chime_actors.client import ChimeClient, Message

    async def main() -> None:
        async with ChimeClient("ws://127.0.0.1:3143/", user_id="alice",
                               channels=["general"]) as client:
            ack = await client.send("general", "hello")
            print("stored as", ack.message_id)
            async for event in client.events():
                if isinstance(event, Message):
                    print(event.message.user_id, event.message.content)

    asyncio.run(main())

Files go first to ``POST /v1/attachments`` (:func:`upload`, or
``ChimeClient(..., api_url=...).upload(path)``); a send lists their ids.

The bookkeeping is sans I/O (:mod:`chime_actors.client.state`,
:mod:`chime_actors.client.backoff`); :mod:`chime_actors.client.websocket_client`
does the I/O. See docs/client.md.
"""

from chime_actors.client.backoff import Backoff, Reconnector
from chime_actors.client.events import (
    Ack,
    Attachment,
    ChatMessage,
    Connected,
    Disconnected,
    Error,
    Event,
    GapFilled,
    History,
    Message,
    MessageDeleted,
    MessageEdited,
    Pong,
    Presence,
    PresenceChanged,
    Reaction,
    Refreshed,
    Resumed,
    ResumeFailed,
    Subscribed,
    Typing,
    UnknownFrame,
    Unsubscribed,
    parse_event,
)
from chime_actors.client.state import ClientState, PendingSend
from chime_actors.client.uploads import UploadSource, upload
from chime_actors.client.websocket_client import ChimeClient, ClientOptions
from chime_actors.errors import (
    ClientClosed,
    ClientError,
    ConnectFailed,
    ConnectionLost,
    NotConnected,
    RequestFailed,
    RequestTimeout,
    TooManyPending,
)

__all__ = [
    "Ack",
    "Attachment",
    "Backoff",
    "ChatMessage",
    "ChimeClient",
    "ClientClosed",
    "ClientError",
    "ClientOptions",
    "ClientState",
    "ConnectFailed",
    "Connected",
    "ConnectionLost",
    "Disconnected",
    "Error",
    "Event",
    "GapFilled",
    "History",
    "Message",
    "MessageDeleted",
    "MessageEdited",
    "NotConnected",
    "PendingSend",
    "Pong",
    "Presence",
    "PresenceChanged",
    "Reaction",
    "Reconnector",
    "Refreshed",
    "RequestFailed",
    "RequestTimeout",
    "ResumeFailed",
    "Resumed",
    "Subscribed",
    "TooManyPending",
    "Typing",
    "UnknownFrame",
    "Unsubscribed",
    "UploadSource",
    "parse_event",
    "upload",
]
