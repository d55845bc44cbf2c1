"""``before_store`` handlers in the send path: in the gateway's loop, before sequencing.

Where they run, and why. A send is judged in the gateway that received it, in
its event loop, between the protocol core's ``Send`` and the ``PersistLink``:

* **no extra hop.** A handler process in the send path would add two lane
  crossings (~13 µs of CPU each, docs/architecture.md) and a second process
  whose death fails sends; the gateway already holds the record;
* **a synchronous verdict costs a function call.** A handler that answers at
  once (``word_filter``: one regular expression) needs no task and no loop
  turn: the record goes to its persister in the same turn, as without handlers;
* **the budget holds for what awaits.** An awaiting handler gets ``timeout_ms``;
  past it the send is decided by ``on_failure`` at once and the handler's task
  is cancelled and forgotten, even if it ignores the cancellation. The price:
  a handler that *blocks* (``time.sleep``, a synchronous HTTP client) blocks the
  gateway's loop and no budget can interrupt it. Such work belongs in an
  ``after_store`` handler (its own process and thread) or behind ``await``.

Order. Handlers of a channel run in configuration order, each on the draft the
previous one rewrote. Records of one channel leave for the persister in the
order they arrived, whatever their handlers' speeds: a record whose chain
finished waits for the older ones of its channel (``_Lane``). Every handler of
a chain has its own budget, so a sender waits at most the sum of the budgets of
its channel's chain; a record waiting behind an older one never waits past its
own deadline, since the older one's deadline came first.

Edits. An edit's new content is judged like a new message's (a ``Draft`` with
``edit_of`` set, no metadata), so an edit cannot bring in what a send could not;
a rewrite of an edit changes its content only. Deletes and reactions pass.

Outcomes. ``Accept`` and ``Rewrite`` pass the record on (a rewrite is checked:
content within ``chat.max_content_chars``, metadata string pairs); ``Reject``
answers the sender ``error`` with its code and message, and nothing is stored.
A raise, an overrun, or an invalid answer is a failure: ``on_failure: reject``
answers ``unavailable`` (not stored; a retry is safe), ``accept`` goes on as if
the handler had accepted.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from msgspec.structs import replace as struct_replace

from chime_actors.config import Config, HandlerFailure, HandlerStage
from chime_actors.errors import HandlerError
from chime_actors.handlers.api import Accept, Draft, Reject, Rewrite, Verdict
from chime_actors.handlers.checks import content_problem, metadata_problem
from chime_actors.handlers.metrics import HandlerCounters, HandlerMetrics
from chime_actors.handlers.registry import LoadedHandler, build_stage
from chime_actors.logs import get_logger
from chime_actors.metrics import MetricsRegistry
from chime_actors.records import ChangeKind, ChangeRecord, PersistRecord, SendOutcome, SendRecord

log = get_logger(__name__)

Submit = Callable[[PersistRecord], "asyncio.Future[SendOutcome]"]

# Channels whose chain is remembered; past this the memo starts again (a chain
# is a few glob matches to recompute).
MAX_REMEMBERED_CHANNELS = 10_000
CLOSE_TIMEOUT_S = 5.0
_REJECT_CODES = frozenset({"forbidden", "bad_request"})


@dataclass(frozen=True, slots=True)
class _Bound:
    """A handler of the chain with what its calls need."""

    loaded: LoadedHandler
    counters: HandlerCounters
    timeout_s: float
    accept_on_failure: bool


@dataclass(slots=True)
class _Run:
    """One record going through its chain."""

    record: SendRecord | ChangeRecord
    chain: tuple[_Bound, ...]
    draft: Draft
    index: int = 0
    outcome: SendOutcome | None = None  # set once rejected or failed

    @property
    def finished(self) -> bool:
        return self.outcome is not None or self.index >= len(self.chain)

    def result(self) -> PersistRecord | SendOutcome:
        """The record to store (as rewritten), or the outcome for the sender."""
        if self.outcome is not None:
            return self.outcome
        draft, record = self.draft, self.record
        if isinstance(record, ChangeRecord):  # an edit: only its content can change
            return (
                record
                if draft.content == record.content
                else struct_replace(record, content=draft.content)
            )
        if draft.content == record.content and draft.metadata == record.metadata:
            return record
        return struct_replace(record, content=draft.content, metadata=draft.metadata)


@dataclass(slots=True)
class _Waiting:
    """A record of a channel's lane: decided (``result``) or still being judged."""

    token: int
    future: asyncio.Future[SendOutcome]
    result: PersistRecord | SendOutcome | None = None


@dataclass(slots=True)
class _Lane:
    """The records of one channel whose chain awaits, oldest first."""

    waiting: collections.deque[_Waiting] = field(default_factory=collections.deque)


class BeforeStore:
    """Runs the ``before_store`` chain of each send, then hands it to ``submit``."""

    def __init__(
        self,
        handlers: Sequence[LoadedHandler],
        submit: Submit,
        *,
        max_content_chars: int,
        metrics: HandlerMetrics,
    ) -> None:
        self._handlers = tuple(
            _Bound(
                loaded,
                metrics.of(loaded.name),
                loaded.spec.timeout_ms / 1000,
                loaded.spec.on_failure is HandlerFailure.ACCEPT,
            )
            for loaded in handlers
        )
        self._submit = submit
        self._max_content_chars = max_content_chars
        self._chains: dict[str, tuple[_Bound, ...]] = {}
        self._lanes: dict[str, _Lane] = {}
        self._tasks: set[asyncio.Future[Any]] = set()

    @classmethod
    def from_config(
        cls, config: Config, submit: Submit, registry: MetricsRegistry
    ) -> BeforeStore | None:
        """The gateway's chain runner; None when no ``before_store`` handler is configured."""
        handlers = build_stage(config, HandlerStage.BEFORE_STORE)
        if not handlers:
            return None
        return cls(
            handlers,
            submit,
            max_content_chars=config.chat.max_content_chars,
            metrics=HandlerMetrics.register(registry),
        )

    def submit(self, record: PersistRecord) -> asyncio.Future[SendOutcome]:
        """Judge ``record`` and pass it on; the future resolves with its outcome.

        Sends and edits are judged (an edit as a ``Draft`` with ``edit_of``: new
        content must pass like a new message's); deletes and reactions pass.
        """
        if isinstance(record, ChangeRecord) and record.kind is not ChangeKind.EDIT:
            return self._submit(record)
        chain = self._chain(record.channel_id)
        if not chain:
            return self._submit(record)
        run = _Run(record, chain, _draft_of(record))
        pending = self._advance(run)
        lane = self._lanes.get(record.channel_id)
        if pending is None and lane is None:
            return self._settle(run.result())  # decided at once, nobody ahead: no task
        future: asyncio.Future[SendOutcome] = asyncio.get_running_loop().create_future()
        if lane is None:
            lane = self._lanes[record.channel_id] = _Lane()
        waiting = _Waiting(record.token, future)
        lane.waiting.append(waiting)
        if pending is None:
            waiting.result = run.result()
            self._release(record.channel_id)
        else:
            call = self._start_call(pending)
            self._track(asyncio.get_running_loop().create_task(self._finish(run, call, waiting)))
        return future

    async def close(self) -> None:
        """Answer what is still being judged ``unavailable`` and close the handlers."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            # Bounded: a handler that swallows its cancellation is left behind.
            await asyncio.wait(list(self._tasks), timeout=CLOSE_TIMEOUT_S)
        for lane in self._lanes.values():
            for waiting in lane.waiting:
                if not waiting.future.done():
                    waiting.future.set_result(_unavailable(waiting.token, "gateway stopped"))
        self._lanes.clear()
        for bound in self._handlers:
            try:
                await asyncio.wait_for(bound.loaded.handler.close(), CLOSE_TIMEOUT_S)
            except Exception:
                log.exception("handler close failed", handler=bound.loaded.name)

    # --- the chain --------------------------------------------------------------------

    def _chain(self, channel_id: str) -> tuple[_Bound, ...]:
        chain = self._chains.get(channel_id)
        if chain is None:
            if len(self._chains) >= MAX_REMEMBERED_CHANNELS:
                self._chains.clear()
            chain = tuple(b for b in self._handlers if b.loaded.matches(channel_id))
            self._chains[channel_id] = chain
        return chain

    def _advance(self, run: _Run) -> Awaitable[Verdict] | None:
        """Run handlers while they answer at once; return the first awaitable answer."""
        while not run.finished:
            bound = run.chain[run.index]
            try:
                answer = bound.loaded.handler.before_store(run.draft)
            except Exception as exc:
                self._fail(run, bound, exc)
                continue
            if inspect.isawaitable(answer):
                return answer
            self._judge(run, bound, answer)
        return None

    async def _finish(
        self, run: _Run, call: asyncio.Future[Verdict] | None, waiting: _Waiting
    ) -> None:
        """The rest of a chain, from the first handler that awaited."""
        while call is not None:
            bound = run.chain[run.index]
            try:
                # wait(), not wait_for(): wait_for would wait for a handler that
                # swallows its cancellation, and the sender with it.
                done, _ = await asyncio.wait({call}, timeout=bound.timeout_s)
            except asyncio.CancelledError:
                call.cancel()  # the gateway is stopping
                raise
            if not done:
                call.cancel()  # and forgotten: it stays tracked until it ends
                self._fail(run, bound, HandlerError(f"no answer within {bound.timeout_s:g} s"))
            else:
                try:
                    verdict = call.result()
                except Exception as exc:
                    self._fail(run, bound, exc)
                else:
                    self._judge(run, bound, verdict)
            answer = self._advance(run)
            call = None if answer is None else self._start_call(answer)
        waiting.result = run.result()
        self._release(run.record.channel_id)

    def _start_call(self, answer: Awaitable[Verdict]) -> asyncio.Future[Verdict]:
        call = asyncio.ensure_future(answer)
        self._track(call)
        call.add_done_callback(_consume)
        return call

    def _track(self, task: asyncio.Future[Any]) -> None:
        """Keep a reference until it ends (asyncio holds only weak ones); close cancels it."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _judge(self, run: _Run, bound: _Bound, verdict: object) -> None:
        """Apply one handler's answer to the run (the next handler is up)."""
        if isinstance(verdict, Accept):
            bound.counters.handled.inc()
        elif isinstance(verdict, Reject) and verdict.code in _REJECT_CODES:
            bound.counters.handled.inc()
            bound.counters.rejected.inc()
            run.outcome = SendOutcome(
                run.record.token, error_code=verdict.code, error_message=verdict.message
            )
        elif isinstance(verdict, Rewrite):
            problem = self._check_rewrite(verdict)
            if problem:
                self._fail(run, bound, HandlerError(problem))
                return
            bound.counters.handled.inc()
            run.draft = replace(
                run.draft,
                content=run.draft.content if verdict.content is None else verdict.content,
                metadata=run.draft.metadata if verdict.metadata is None else verdict.metadata,
            )
        else:
            self._fail(run, bound, HandlerError(f"answered {verdict!r}, not a verdict"))
            return
        run.index += 1

    def _check_rewrite(self, rewrite: Rewrite) -> str:
        """What is wrong with a rewrite ("" if nothing): the same rules as a client's send."""
        if rewrite.content is not None:
            problem = content_problem(rewrite.content, self._max_content_chars)
            if problem:
                return f"rewrote: {problem}"
        if rewrite.metadata is not None:
            problem = metadata_problem(rewrite.metadata)
            if problem:
                return f"rewrote: {problem}"
        return ""

    def _fail(self, run: _Run, bound: _Bound, exc: BaseException) -> None:
        """A failed call: ``on_failure`` decides (see the module docstring)."""
        bound.counters.failures.inc()
        log.warning(
            "before_store handler failed",
            handler=bound.loaded.name,
            channelId=run.record.channel_id,
            error=str(exc) or type(exc).__name__,
            onFailure="accept" if bound.accept_on_failure else "reject",
        )
        if not bound.accept_on_failure:
            run.outcome = _unavailable(
                run.record.token, f"the message could not be checked ({bound.loaded.name})"
            )
        run.index += 1

    # --- order per channel ------------------------------------------------------------

    def _release(self, channel_id: str) -> None:
        """Pass on every decided record at the head of the channel's lane, in order."""
        lane = self._lanes.get(channel_id)
        if lane is None:
            return
        while lane.waiting and lane.waiting[0].result is not None:
            waiting = lane.waiting.popleft()
            assert waiting.result is not None
            _forward(self._settle(waiting.result), waiting.future)
        if not lane.waiting:
            del self._lanes[channel_id]

    def _settle(self, result: PersistRecord | SendOutcome) -> asyncio.Future[SendOutcome]:
        if not isinstance(result, SendOutcome):
            return self._submit(result)
        future: asyncio.Future[SendOutcome] = asyncio.get_running_loop().create_future()
        future.set_result(result)
        return future


def _draft_of(record: SendRecord | ChangeRecord) -> Draft:
    if isinstance(record, ChangeRecord):
        return Draft(
            channel_id=record.channel_id,
            user_id=record.user_id,
            content=record.content or "",
            edit_of=record.message_id,
        )
    return Draft(
        channel_id=record.channel_id,
        user_id=record.user_id,
        content=record.content,
        metadata=record.metadata,
        thread_id=record.thread_id,
    )


def _forward(source: asyncio.Future[SendOutcome], target: asyncio.Future[SendOutcome]) -> None:
    """Resolve ``target`` with ``source``'s outcome once it has one."""

    def copy(done: asyncio.Future[SendOutcome]) -> None:
        if not target.done():
            target.set_result(done.result())

    if source.done():
        copy(source)
    else:
        source.add_done_callback(copy)


def _consume(task: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned call's exception, so asyncio does not log it as lost."""
    if not task.cancelled():
        with contextlib.suppress(Exception):
            task.exception()


def _unavailable(token: int, why: str) -> SendOutcome:
    return SendOutcome(token, error_code="unavailable", error_message=why)
