"""The built-in handlers: word_filter and echo_bot as pure code, webhook over loopback HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import orjson
import pytest
from aiohttp import web

from chime_actors.errors import HandlerError
from chime_actors.handlers import ACCEPT, Draft, Reject, Reply, Rewrite
from chime_actors.handlers.builtins import echo_bot, webhook, word_filter
from chime_actors.records import ChangeKind, ChimeMessage, MessageChange


def draft(content: str) -> Draft:
    return Draft(channel_id="general", user_id="alice", content=content)


def stored(content: str, *, user: str = "alice", thread: str | None = None) -> ChimeMessage:
    return ChimeMessage(
        channel_id="general",
        message_id="0000000000000007",
        user_id=user,
        content=content,
        created_at="2026-01-01T00:00:00.000Z",
        metadata=(("k", "v"),),
        thread_id=thread,
        client_msg_id="c-7",
    )


# --- word_filter ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "blocked"),
    [
        ("darn", True),
        ("Oh DARN!", True),
        ("(darn)", True),
        ("darning socks", False),
        ("undarn", False),
        ("dar n", False),
        ("what the heck", True),
        ("hello", False),
    ],
)
def test_word_filter_rejects_whole_words_in_any_case(content: str, blocked: bool) -> None:
    handler = word_filter.make({"words": ["darn", "Heck"]})
    verdict = handler.before_store(draft(content))
    if blocked:
        assert isinstance(verdict, Reject)
        assert verdict.code == "forbidden"
        assert "blocked word" in verdict.message
    else:
        assert verdict == ACCEPT


def test_word_filter_masks_each_listed_word_with_its_length() -> None:
    handler = word_filter.make({"words": ["darn", "heck"], "action": "mask"})
    assert handler.before_store(draft("Darn it, HECK! darning")) == Rewrite(
        content="**** it, ****! darning"
    )
    assert handler.before_store(draft("all fine")) == ACCEPT


def test_word_filter_matches_words_with_punctuation_and_prefers_the_longest() -> None:
    handler = word_filter.make({"words": ["c++", "c", "foo bar"], "action": "mask"})
    assert handler.before_store(draft("I like c++ and c and foo bar")) == Rewrite(
        content="I like *** and * and *******"
    )
    # A regex character in a word is literal.
    dotted = word_filter.make({"words": ["a.b"], "action": "mask"})
    assert dotted.before_store(draft("axb a.b")) == Rewrite(content="axb ***")


def test_word_filter_answers_without_awaiting() -> None:
    # In the send path: a verdict, not an awaitable, so the gateway needs no task.
    handler = word_filter.make({"words": ["x"]})
    assert not isinstance(handler.before_store(draft("x")), Awaitable)


# --- echo_bot ----------------------------------------------------------------------


def test_echo_bot_replies_with_the_rest_as_its_user() -> None:
    bot = echo_bot.make({"user": "echo", "prefix": "!echo "})
    replies = asyncio.run(bot.after_store(stored("!echo hello there", thread="0000000000000001")))
    assert replies == (Reply(content="hello there", user_id="echo", thread_id="0000000000000001"),)


@pytest.mark.parametrize(
    ("content", "user"),
    [("hello", "alice"), ("!echo hi", "echo"), ("!echo ", "alice"), ("say !echo hi", "alice")],
)
def test_echo_bot_ignores_other_messages_and_its_own(content: str, user: str) -> None:
    bot = echo_bot.make({"user": "echo", "prefix": "!echo "})
    assert asyncio.run(bot.after_store(stored(content, user=user))) == ()


# --- webhook -------------------------------------------------------------------------

Receive = Callable[[web.Request], Awaitable[web.StreamResponse]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def http_server(receive: Receive) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        await runner.cleanup()


def test_webhook_posts_the_message_signed() -> None:
    received: list[tuple[bytes, str, str]] = []

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        received.append(
            (body, request.headers["X-Chime-Signature"], request.headers["X-Chime-Message"])
        )
        return web.Response(status=204)

    async def scenario() -> None:
        async with http_server(receive) as url:
            hook = webhook.make({"url": url, "secret": "s3cret"})
            try:
                assert await hook.after_store(stored("hi")) == ()
            finally:
                await hook.close()

    asyncio.run(scenario())
    ((body, sent_signature, message_header),) = received
    expected = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(sent_signature, expected)
    assert message_header == "general/0000000000000007"
    assert orjson.loads(body) == stored("hi").to_wire()


def test_webhook_raises_unless_the_answer_is_2xx() -> None:
    statuses = [500, 200]

    async def receive(request: web.Request) -> web.Response:
        return web.Response(status=statuses.pop(0))

    async def scenario() -> None:
        async with http_server(receive) as url:
            hook = webhook.make({"url": url, "secret": "s"})
            try:
                with pytest.raises(HandlerError, match="HTTP 500"):
                    await hook.after_store(stored("hi"))
                await hook.after_store(stored("hi"))
            finally:
                await hook.close()

    asyncio.run(scenario())
    assert statuses == []


def test_webhook_raises_when_nobody_listens() -> None:
    async def scenario() -> None:
        hook = webhook.make({"url": f"http://127.0.0.1:{free_port()}/hook", "secret": "s"})
        try:
            with pytest.raises(HandlerError, match="unreachable"):
                await hook.after_store(stored("hi"))
        finally:
            await hook.close()

    asyncio.run(scenario())


def test_webhook_signature_is_the_hmac_of_the_body() -> None:
    assert webhook.signature("key", b"{}") == (
        "sha256=" + hmac.new(b"key", b"{}", hashlib.sha256).hexdigest()
    )


def test_webhook_posts_a_change_as_the_frame_subscribers_get() -> None:
    received: list[tuple[bytes, str]] = []

    async def receive(request: web.Request) -> web.Response:
        received.append((await request.read(), request.headers["X-Chime-Message"]))
        return web.Response(status=200)

    edit = MessageChange(
        channel_id="general",
        event_id="0000000000000009",
        kind=ChangeKind.EDIT,
        message_id="0000000000000007",
        user_id="alice",
        at="2026-01-01T00:00:01.000Z",
        message=stored("fixed"),
    )

    async def scenario() -> None:
        async with http_server(receive) as url:
            hook = webhook.make({"url": url, "secret": "s"})
            try:
                assert await hook.after_change(edit) == ()
            finally:
                await hook.close()

    asyncio.run(scenario())
    ((body, position),) = received
    assert orjson.loads(body) == {
        "type": "message_edited",
        "message": stored("fixed").to_wire(),
        "eventId": "0000000000000009",
    }
    assert position == "general/0000000000000009"
