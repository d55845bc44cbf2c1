"""What a handler's output must respect: the rules of a client's send (docs/protocol.md).

A rewrite (``before_store``) and a reply (``after_store``) reach storage and
every subscriber like a client's message, so they meet the same bounds; a
handler that breaks one has failed (its ``on_failure`` decides).
"""

from __future__ import annotations

from chime_actors.protocol.frames import DEFAULT_LIMITS


def content_problem(content: object, max_chars: int) -> str:
    """What is wrong with ``content`` as a message's text ("" if nothing)."""
    if not isinstance(content, str):
        return f"content must be text, not {type(content).__name__}"
    if not content.strip():
        return "content is blank"
    if len(content) > max_chars:
        return f"content is longer than {max_chars} characters"
    return ""


def metadata_problem(metadata: object) -> str:
    """What is wrong with ``metadata`` as ``(key, value)`` string pairs ("" if nothing)."""
    if not isinstance(metadata, tuple) or not all(
        isinstance(pair, tuple)
        and len(pair) == 2
        and isinstance(pair[0], str)
        and isinstance(pair[1], str)
        for pair in metadata
    ):
        return "metadata must be a tuple of (str, str) pairs"
    if len(metadata) > DEFAULT_LIMITS.max_metadata_keys:
        return f"metadata has more than {DEFAULT_LIMITS.max_metadata_keys} keys"
    if len({key for key, _ in metadata}) != len(metadata):
        return "metadata repeats a key"
    if any(len(value) > DEFAULT_LIMITS.max_metadata_value_chars for _, value in metadata):
        return f"a metadata value is longer than {DEFAULT_LIMITS.max_metadata_value_chars}"
    return ""
