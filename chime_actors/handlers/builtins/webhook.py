"""``webhook`` (after_store): POSTs every stored message of its channels to a URL.

Options:

* ``url``: ``http://`` or ``https://``;
* ``secret``: the HMAC key. Each request carries
  ``X-Chime-Signature: sha256=<hex HMAC-SHA256 of the body>``, so the receiver
  can tell the request came from this server (compare with
  ``hmac.compare_digest``).

The body of a message is the message as JSON, the ChimeMessage's own fields
(docs/protocol.md): ``{"channelId": ..., "messageId": ..., "userId": ..., ...}``.
The body of a change (an edit, a delete, a reaction) is the frame subscribers
get for it: ``{"type": "message_edited" | "message_deleted" | "reaction", ...,
"eventId": ...}``; a message's body has no ``type``. Also sent:
``X-Chime-Message: <channelId>/<messageId or eventId>``, which a receiver can use
to drop the repeats that at-least-once delivery allows.

Only a 2xx answer confirms a message. Anything else (another status, a refused
connection, no answer within ``timeout_ms``) raises ``HandlerError``: with
``on_failure: reject`` (the default) the same message is posted again with
exponential backoff (0.1 s doubling to 30 s) and the handler's cursor does not
move past it until it is confirmed; later messages wait behind it, so the
receiver sees each channel in order.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import aiohttp
import msgspec
import orjson

from chime_actors.errors import HandlerError
from chime_actors.handlers.api import Handler, Reply
from chime_actors.handlers.registry import parse_options
from chime_actors.protocol import server_frames
from chime_actors.records import ChimeMessage, MessageChange

SIGNATURE_HEADER = "X-Chime-Signature"
MESSAGE_HEADER = "X-Chime-Message"


class WebhookOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The options of ``webhook``."""

    url: Annotated[str, msgspec.Meta(pattern=r"^https?://[^\s]+$")]
    secret: Annotated[str, msgspec.Meta(min_length=1)]


def signature(secret: str, body: bytes) -> str:
    """The ``X-Chime-Signature`` value of ``body``: ``sha256=<hex>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def request_body(event: ChimeMessage | MessageChange) -> bytes:
    """The JSON body posted for ``event`` (see the module docstring)."""
    if isinstance(event, MessageChange):
        return server_frames.change(event).encode()
    return orjson.dumps(event.to_wire())


class Webhook(Handler):
    """Posts each message; raises unless the answer is 2xx."""

    def __init__(self, options: WebhookOptions) -> None:
        self._url = options.url
        self._secret = options.secret
        # Made on first use, on the loop that runs the handler (aiohttp binds a
        # session to the loop it was made on).
        self._session: aiohttp.ClientSession | None = None

    async def after_store(self, message: ChimeMessage) -> Sequence[Reply]:
        """POST the message; ``HandlerError`` unless the receiver answers 2xx."""
        await self._post(request_body(message), f"{message.channel_id}/{message.message_id}")
        return ()

    async def after_change(self, change: MessageChange) -> Sequence[Reply]:
        """POST the change's frame; ``HandlerError`` unless the receiver answers 2xx."""
        await self._post(request_body(change), f"{change.channel_id}/{change.event_id}")
        return ()

    async def _post(self, body: bytes, position: str) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: signature(self._secret, body),
            MESSAGE_HEADER: position,
        }
        try:
            async with self._session.post(self._url, data=body, headers=headers) as response:
                if not 200 <= response.status < 300:
                    raise HandlerError(f"webhook answered HTTP {response.status}")
        except aiohttp.ClientError as exc:
            raise HandlerError(f"webhook unreachable: {exc}") from exc

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None


def make(options: Mapping[str, Any]) -> Webhook:
    """The ``webhook`` factory."""
    return Webhook(parse_options(options, WebhookOptions))
