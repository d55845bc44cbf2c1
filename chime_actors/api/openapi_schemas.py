"""The JSON Schemas of ``/openapi.json``: ChimeMessage, the bodies, the problem.

Schemas are composed here in Python (a dict merged into another), never with
``allOf``, so each one lists all of its properties in one place: a client
generator sees plain objects, and the tests can close every object
(``additionalProperties: false``) to catch a field the server sends but the
document does not name. The limits come from the modules that enforce them.
"""

from __future__ import annotations

from typing import Any

from chime_actors.ids import ATTACHMENT_ID_BYTES, ID_WIDTH
from chime_actors.protocol.codes import ErrorCode
from chime_actors.protocol.frames import MAX_CORRELATION_ID_CHARS, MAX_EMOJI_CHARS, Limits
from chime_actors.records import SERVER_CLIENT_MSG_ID_PREFIX

__all__ = [
    "ATTACHMENT_ID_PATTERN",
    "CHANNEL_ID_PATTERN",
    "MAX_ATTACHMENTS",
    "MESSAGE_ID_PATTERN",
    "Schema",
    "ref",
    "schemas",
]

Schema = dict[str, Any]

CHANNEL_ID_PATTERN = "^[A-Za-z0-9_.:-]{1,64}$"
USER_ID_PATTERN = "^[A-Za-z0-9_.@:-]{1,64}$"
MESSAGE_ID_PATTERN = f"^[0-9]{{{ID_WIDTH}}}$"
METADATA_KEY_PATTERN = "^[A-Za-z0-9_.:-]{1,64}$"
ATTACHMENT_ID_PATTERN = f"^[0-9a-f]{{{2 * ATTACHMENT_ID_BYTES}}}$"
# docs/protocol.md "Attachments": at most this many per message.
MAX_ATTACHMENTS = Limits().max_attachments

_LIMITS = Limits()


def ref(name: str) -> Schema:
    """A ``$ref`` to ``components.schemas[name]``."""
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def _chime_message() -> Schema:
    return {
        "type": "object",
        "description": (
            "A stored message (docs/protocol.md, ChimeMessage): the record stored, broadcast "
            "to WebSocket subscribers and returned by history."
        ),
        "required": [
            "channelId",
            "messageId",
            "userId",
            "content",
            "createdAt",
            "editedAt",
            "metadata",
        ],
        "properties": {
            "channelId": ref("ChannelId"),
            "channelName": {"type": ["string", "null"]},
            "messageId": ref("MessageId"),
            "userId": ref("UserId"),
            "content": {"type": "string"},
            "createdAt": ref("Timestamp"),
            "editedAt": _nullable(ref("Timestamp")),
            "metadata": ref("Metadata"),
            "threadId": _nullable(ref("MessageId")),
            "clientMsgId": {"type": ["string", "null"]},
            "attachments": {
                "type": "array",
                "description": "Absent when the message has none.",
                "maxItems": MAX_ATTACHMENTS,
                "items": ref("MessageAttachment"),
            },
        },
    }


def _history_message() -> Schema:
    base = _chime_message()
    return {
        **base,
        "description": "A ChimeMessage as history returns it: with its reactions and replies.",
        "required": [*base["required"], "reactions", "replyCount"],
        "properties": {
            **base["properties"],
            "reactions": {
                "type": "object",
                "description": 'Emoji -> the users who reacted with it: {"👍": ["alice"]}.',
                "additionalProperties": {"type": "array", "items": ref("UserId")},
            },
            "replyCount": {
                "type": "integer",
                "minimum": 0,
                "description": "The live replies of the thread this message roots.",
            },
        },
    }


def _problem() -> Schema:
    return {
        "type": "object",
        "description": (
            "An RFC 9457 problem. `type` is always `about:blank`, so `title` is the "
            "status' reason phrase; `code` is docs/protocol.md's error code, as in a "
            "WebSocket `error` frame."
        ),
        "required": ["type", "title", "status", "detail", "code"],
        "properties": {
            "type": {"type": "string", "format": "uri-reference", "const": "about:blank"},
            "title": {"type": "string", "examples": ["Forbidden"]},
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": {"type": "string", "description": "Human text; never names hosts or files."},
            "code": {"type": "string", "enum": [code.value for code in ErrorCode]},
            "correlationId": {
                "type": "string",
                "description": "500 `internal` only: names the server log entry.",
            },
            "retryAfterMs": {
                "type": "integer",
                "minimum": 1,
                "description": "429 `rate_limited` only: when to try again.",
            },
        },
    }


def _rate_limited_problem() -> Schema:
    base = _problem()
    return {
        **base,
        "description": "429: over `limits.messages_per_10s` for this user.",
        "required": [*base["required"], "retryAfterMs"],
        "properties": {**base["properties"], "code": {"type": "string", "const": "rate_limited"}},
    }


def schemas() -> dict[str, Schema]:
    """``components.schemas`` of the document."""
    return {
        "ChannelId": {"type": "string", "pattern": CHANNEL_ID_PATTERN},
        "MessageId": {
            "type": "string",
            "pattern": MESSAGE_ID_PATTERN,
            "description": (
                "The message's position in its channel, zero-padded: string order is "
                "the channel's order."
            ),
            "examples": ["0000000000000001"],
        },
        "UserId": {"type": "string", "pattern": USER_ID_PATTERN},
        "Timestamp": {
            "type": "string",
            "format": "date-time",
            "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$",
            "description": "UTC, ISO 8601 with milliseconds and a `Z`.",
            "examples": ["2026-11-27T10:00:00.000Z"],
        },
        "Metadata": {
            "type": "object",
            "description": "A string-to-string map.",
            "maxProperties": _LIMITS.max_metadata_keys,
            "propertyNames": {"pattern": METADATA_KEY_PATTERN},
            "additionalProperties": {
                "type": "string",
                "maxLength": _LIMITS.max_metadata_value_chars,
            },
        },
        "AttachmentId": {
            "type": "string",
            "pattern": ATTACHMENT_ID_PATTERN,
            "description": "An uploaded file: 128 random bits in hex.",
            "examples": ["9f1c2b7e0d4a4c35b1e8a6f2d3c4b5a6"],
        },
        "MessageAttachment": {
            "type": "object",
            "description": "A file a message lists; download it with its id.",
            "required": ["attachmentId", "filename", "contentType", "size"],
            "properties": {
                "attachmentId": ref("AttachmentId"),
                "filename": {"type": "string"},
                "contentType": {"type": "string"},
                "size": {"type": "integer", "minimum": 1},
            },
        },
        "Attachment": {
            "type": "object",
            "description": "An upload, as stored.",
            "required": ["attachmentId", "filename", "contentType", "size", "sha256"],
            "properties": {
                "attachmentId": ref("AttachmentId"),
                "filename": {"type": "string", "minLength": 1, "maxLength": 255},
                "contentType": {"type": "string", "examples": ["application/pdf"]},
                "size": {"type": "integer", "minimum": 1},
                "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            },
        },
        "ChimeMessage": _chime_message(),
        "HistoryMessage": _history_message(),
        "HistoryPage": {
            "type": "object",
            "required": ["messages", "hasMore"],
            "properties": {
                "messages": {
                    "type": "array",
                    "description": "Oldest first.",
                    "items": ref("HistoryMessage"),
                },
                "hasMore": {"type": "boolean"},
            },
        },
        "SendRequest": {
            "type": "object",
            "description": "A WebSocket `send`'s fields, checked as a `send` frame is.",
            "required": ["content"],
            "properties": {
                "content": {
                    "type": "string",
                    "minLength": 1,
                    "description": (
                        "Not blank; at most `chat.max_content_chars` (default 4000) code points."
                    ),
                },
                "clientMsgId": {
                    "type": ["string", "null"],
                    "minLength": 1,
                    "maxLength": MAX_CORRELATION_ID_CHARS,
                    "pattern": f"^(?!{SERVER_CLIENT_MSG_ID_PREFIX})",
                    "description": (
                        "Makes the send idempotent: a repeat within 10 minutes stores nothing."
                    ),
                },
                "metadata": ref("Metadata"),
                "threadId": _nullable(ref("MessageId")),
                "attachments": {
                    "type": ["array", "null"],
                    "description": "Files you uploaded (each yours, else 400); listed once each.",
                    "maxItems": MAX_ATTACHMENTS,
                    "items": ref("AttachmentId"),
                },
                "channelId": {
                    **ref("ChannelId"),
                    "description": "Optional; when given, the path's channel.",
                },
            },
        },
        "DuplicateSend": {
            "type": "object",
            "description": "A repeat of a `clientMsgId`: the first send's ids.",
            "required": ["duplicate", "channelId", "messageId", "createdAt", "clientMsgId"],
            "properties": {
                "duplicate": {"const": True},
                "channelId": ref("ChannelId"),
                "messageId": ref("MessageId"),
                "createdAt": ref("Timestamp"),
                "clientMsgId": {"type": "string"},
            },
        },
        "EditRequest": {
            "type": "object",
            "required": ["content"],
            "properties": {"content": {"type": "string", "minLength": 1}},
        },
        "ReadRequest": {
            "type": "object",
            "required": ["messageId"],
            "properties": {"messageId": ref("MessageId")},
        },
        "Presence": {
            "type": "object",
            "required": ["online"],
            "properties": {"online": {"type": "array", "items": ref("UserId")}},
        },
        "UnreadCounts": {
            "type": "object",
            "required": ["unread"],
            "properties": {
                "unread": {
                    "type": "object",
                    "description": "Channel -> unread messages (at most 1000 are counted).",
                    "additionalProperties": {"type": "integer", "minimum": 0},
                }
            },
        },
        "Health": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"const": "ok"}},
        },
        "Readiness": {
            "type": "object",
            "required": ["ready", "checks"],
            "properties": {
                "ready": {"type": "boolean"},
                "checks": {
                    "type": "object",
                    "description": 'One per dependency: {"storage": true, "gateway 1": true}.',
                    "additionalProperties": {"type": "boolean"},
                },
            },
        },
        "ClientConfig": {
            "type": "object",
            "required": [
                "authMode",
                "chatPort",
                "chatPath",
                "maxContentChars",
                "maxAttachmentBytes",
            ],
            "properties": {
                "authMode": {"type": "string", "enum": ["insecure", "jwt"]},
                "chatPort": {"type": "integer", "minimum": 1, "maximum": 65535},
                "chatPath": {"type": "string"},
                "maxContentChars": {"type": "integer", "minimum": 1},
                "maxAttachmentBytes": {"type": "integer", "minimum": 1},
            },
        },
        "Emoji": {"type": "string", "minLength": 1, "maxLength": MAX_EMOJI_CHARS},
        "Problem": _problem(),
        "RateLimitedProblem": _rate_limited_problem(),
    }
