"""Seal Thespian's TCP transport: loopback only, and no stranger's byte unpickled.

Thespian 4.0.1's ``multiprocTCPBase`` binds its admin and every actor to all
interfaces (``('', port)``) and passes whatever arrives on those ports to
``pickle.loads``: anyone who reaches the host can run code in every process of
the server. Thespian offers no hook for either, so :func:`seal` patches the three
places that decide it, once per process, before the actor system starts:

- **Where it listens.** Every transport address binds to the loopback address
  it advertises (``THESPIAN_BASE_IPADDR``), never to ``''``.
- **What it unpickles.** The transport's serializer becomes :class:`SealedPickle`:
  each frame is ``HMAC-SHA256(key, body) || body`` and ``loads`` refuses a frame
  whose tag does not verify *before* a byte of it reaches ``pickle.loads``. The
  key is made by the server's main process at start (``secrets``) and reaches
  the actors only by ``fork`` (Thespian's default start method), so it is never
  on a command line, in the environment or in a file. Thespian's ACK frames,
  precomputed with the plain pickle, are rebuilt under the key too.
- **How much it buffers.** A frame may announce any length; the receive buffer
  refuses one over :data:`MAX_FRAME_BYTES` instead of buffering it.

A refused frame makes Thespian log "corrupted incoming data" or "Error
deserializing" to its own log and close that socket; the actor goes on. The
threat model this defends, and what it does not, is in docs/architecture.md
("Security of the actor transport").
"""

from __future__ import annotations

import hashlib
import hmac
import os
import pickle
import secrets
from typing import Any

from chime_actors.errors import ActorError

KEY_BYTES = 32
TAG_BYTES = hashlib.sha256().digest_size
LOOPBACK_HOST = "127.0.0.1"
# The largest batch the data plane sends is a few MiB (bundles of records); a
# frame announcing more than this is an attack or a bug, never traffic.
MAX_FRAME_BYTES = 64 * 1024 * 1024


class TransportTampered(ActorError):
    """A Thespian frame did not carry a valid tag under this server's key."""


class SealedPickle:
    """Pickle behind an HMAC: the serializer Thespian's TCP transport is given.

    It has the shape of the ``pickle`` module as Thespian uses it (``dumps`` and
    ``loads``), which is why it is an object rather than two functions.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) < KEY_BYTES:
            raise ValueError(f"the transport key must have at least {KEY_BYTES} bytes")
        self._key = key

    def _tag(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).digest()

    def dumps(self, obj: Any) -> bytes:
        body = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        return self._tag(body) + body

    def loads(self, frame: bytes) -> Any:
        """Unpickle ``frame`` only if its tag verifies under the key.

        Raises:
            TransportTampered: the frame is short or its tag is wrong; nothing of
                it was unpickled.
        """
        tag, body = frame[:TAG_BYTES], frame[TAG_BYTES:]
        if len(tag) != TAG_BYTES or not hmac.compare_digest(tag, self._tag(body)):
            raise TransportTampered("a frame without this server's tag was refused")
        return pickle.loads(body)


_sealed_with: bytes | None = None


def transport_key() -> bytes:
    """The key this process was sealed with (inherited from the main process).

    Lanes (``runtime.lanes``) authenticate their peers with it too.

    Raises:
        ActorError: :func:`seal` has not run in this process or its parent.
    """
    if _sealed_with is None:
        raise ActorError("the actor transport is not sealed: no key to authenticate with")
    return _sealed_with


def new_key() -> bytes:
    """A fresh transport key (one per server run)."""
    return secrets.token_bytes(KEY_BYTES)


def seal(key: bytes) -> None:
    """Patch Thespian's TCP transport in this process (and the ones it forks).

    Call it in the server's main process before ``ActorSystem(...)``: the admin
    and every actor are forked from there and inherit the patched modules and the
    key. Calling it again with the same key does nothing; with another key it
    raises, because actors already running would no longer understand each other.
    """
    global _sealed_with
    if _sealed_with is not None:
        if not hmac.compare_digest(_sealed_with, key):
            raise ActorError("the actor transport is already sealed with another key")
        return
    # Imported here: only the server's processes need Thespian's internals.
    from thespian.system.transport import IPBase, TCPTransport, streamBuffer

    os.environ["THESPIAN_BASE_IPADDR"] = LOOPBACK_HOST
    sealed = SealedPickle(key)
    TCPTransport.serializer = sealed
    TCPTransport.ackMsg = streamBuffer.toSendBuffer(streamBuffer.ackPacket, sealed.dumps)
    TCPTransport.ackDataErrMsg = streamBuffer.toSendBuffer(
        streamBuffer.ackDataErrPacket, sealed.dumps
    )
    TCPTransport.ReceiveBuffer = _bounded_receive_buffer(streamBuffer.ReceiveBuffer)
    IPBase.IPActorAddress.bindArgs = property(_loopback_bind_args)
    _sealed_with = key


def _loopback_bind_args(address: Any) -> tuple[tuple[str, int]]:
    # Thespian binds external addresses to ('', port); the port is kept, the
    # interface is not.
    return ((LOOPBACK_HOST, int(address.bindname[1])),)


def _bounded_receive_buffer(base: type[Any]) -> type[Any]:
    class BoundedReceiveBuffer(base):  # type: ignore[misc]
        """Thespian's receive buffer, refusing frames over ``MAX_FRAME_BYTES``."""

        def addMore(self, buf: bytes) -> None:
            super().addMore(buf)
            if self._size is not None and self._size > MAX_FRAME_BYTES:
                raise TransportTampered(f"a frame of {self._size} bytes was refused")

    return BoundedReceiveBuffer
