"""What a lane frame holds, and how it is written and read: msgpack, typed (msgspec).

A frame is a msgpack array of lane records (``actors.lane_records``). Each is a
``records.FrozenRecord``: a tagged, array-like msgspec ``Struct``, written as
``[class name, field, field, ...]``. Reading decodes the frame against the union
of those classes, in C, to exactly those types, with every field's type checked:
anything else (an unknown tag, a field of the wrong type, a pickle, garbage) is
refused with ``ActorError`` and nothing of the frame is handed on. Nothing on a
lane is ever executed, unlike an unpickled frame. A round trip of a record costs
about a fifth of pickle's (``python -m chime_actors.bench.lane_cost``, docs/performance.md).

The one exception is the handshake's first frame, the sender's Thespian address
(an object of Thespian's, not ours): it is unpickled by ``load_address``, whose
unpickler can build Thespian's address classes and nothing else.
"""

from __future__ import annotations

import io
import pickle
from typing import Any, Final, Union, cast

import msgspec

from chime_actors.errors import ActorError


class LaneCodec:
    """Writes and reads frames of the records ``records`` names, and nothing else.

    The list is the process actors' (``actors.lane_records``): the runtime knows
    no core's records. Each must be a tagged msgspec ``Struct``
    (``records.FrozenRecord``).
    """

    def __init__(self, records: tuple[type, ...]) -> None:
        tags = [getattr(getattr(r, "__struct_config__", None), "tag", None) for r in records]
        if None in tags or len(set(tags)) != len(tags):
            raise ValueError("lane records must be tagged msgspec Structs with distinct tags")
        self.records = records
        self._types = frozenset(records)
        self._encoder = msgspec.msgpack.Encoder()
        # A union built at run time, from the list: msgspec reads it, mypy cannot.
        union = cast(Any, Union)[records]
        self._decoder: msgspec.msgpack.Decoder[tuple[Any, ...]] = msgspec.msgpack.Decoder(
            tuple[union, ...]  # type: ignore[valid-type]
        )

    def encode(self, messages: tuple[Any, ...]) -> bytes:
        """One frame's payload: ``messages``, each a lane record (see ``check``)."""
        return self._encoder.encode(messages)

    def decode(self, payload: bytes) -> tuple[Any, ...]:
        """The lane records of one frame's payload; ``ActorError`` if it holds anything else."""
        try:
            return self._decoder.decode(payload)
        except msgspec.MsgspecError as exc:
            raise ActorError(f"lane frame refused: {exc}") from exc

    def check(self, message: Any) -> None:
        """``ActorError`` unless ``message`` is a lane record (called on every send)."""
        if type(message) not in self._types:
            raise ActorError(f"{type(message).__name__} is not a lane record (actors.lane_records)")


# What the handshake's address may be made of: Thespian's address classes, and
# the socket enums their fields hold. Nothing else can be built.
_ADDRESS_GLOBALS: Final = frozenset(
    {
        ("thespian.actors", "ActorAddress"),
        ("thespian.system.transport.IPBase", "IPActorAddress"),
        ("thespian.system.transport.IPBase", "TCPv4ActorAddress"),
        ("thespian.system.transport.IPBase", "TCPv6ActorAddress"),
        ("thespian.system.transport.IPBase", "RoutedTCPv4ActorAddress"),
        ("thespian.system.transport.IPBase", "TXOnlyAdminTCPv4ActorAddress"),
        ("thespian.system.transport.IPBase", "UDPv4ActorAddress"),
        ("socket", "AddressFamily"),
        ("socket", "SocketKind"),
    }
)


def dump_address(address: Any) -> bytes:
    """The handshake's frame: this process's Thespian address."""
    return pickle.dumps(address, protocol=5)


def load_address(payload: bytes) -> Any:
    """The sender's address from its handshake frame; ``ActorError`` for anything else."""
    try:
        return _AddressUnpickler(io.BytesIO(payload)).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise ActorError(f"lane handshake refused: {exc}") from exc


class _AddressUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ADDRESS_GLOBALS:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of an actor address")
        return super().find_class(module, name)
