"""The parent of a ``chime bench`` run: it drives the load processes through phases.

1. connect: every load process opens its share of the connections (connection
   ``i`` joins channel ``i % M`` and lives in process ``i % P``) and reports once
   all have their ``connected`` (or failed);
2. send (fanout, chatty, history's fill): every process starts its senders at one
   wall-clock instant; sender ``s`` is connection ``s``; each process waits for
   its acks and reports what was acked;
   idle instead holds the connections for ``--duration`` seconds;
3. check: the parent merges every acked message by channel and hands the list to
   every process, which waits (``--drain-timeout``) for deliveries still in
   flight, then accounts misses and duplicates per connection and pings every
   connection to count the live ones;
4. history only: time pages of ``history`` with random ``before`` cursors;
5. finish: connections closed, processes joined, the server (``--start``) stopped.

Server memory is sampled before the connections open, once they are all open,
and at the end of the hold or send phase.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import secrets
import sys
import time
from collections.abc import Iterator, Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar

from chime_actors.bench.load import raise_fd_limit, worker_main
from chime_actors.bench.options import (
    BenchOptions,
    CheckReport,
    ConnectReport,
    ExpectDeliveries,
    Finish,
    HistoryReport,
    RunHistory,
    Scenario,
    SendReport,
    StartSending,
    WorkerFailed,
    WorkerPlan,
)
from chime_actors.bench.report import Results, write_report
from chime_actors.bench.target import (
    MemorySample,
    Target,
    load_services_file,
    load_yaml_mapping,
    services_layer,
    started_server,
)
from chime_actors.errors import ChimeError

R = TypeVar("R")

START_DELAY_S = 0.5  # the senders of every process start together, this far ahead
HOLD_SAMPLE_S = 1.0
JOIN_TIMEOUT_S = 30.0


class BenchError(ChimeError):
    """A run could not be carried out (a load process failed or hung)."""


def run_bench(opts: BenchOptions) -> int:
    """Carry out one run; print the report; return 0, or 1 when it FAILED."""
    fd_limit = raise_fd_limit()
    per_process = -(-opts.connections // opts.processes)
    if per_process + 64 > fd_limit:
        print(
            f"chime bench: {per_process} connections per process exceed the open-file "
            f"limit {fd_limit}; use more --processes",
            file=sys.stderr,
        )
        return 2
    results = Results(opts)
    with _target(opts) as target:
        results.url = target.url
        results.backends = target.backends
        try:
            _run_phases(opts, target, results)
        finally:
            results.server_log = target.log_problems()
    return write_report(results)


@contextlib.contextmanager
def _target(opts: BenchOptions) -> Iterator[Target]:
    if opts.start:
        with started_server(opts.server_workers, server_layers(opts)) as target:
            yield target
    else:
        assert opts.url is not None
        yield Target(opts.url)


def server_layers(opts: BenchOptions) -> list[dict[str, Any]]:
    """Config merged over the ``--start`` server's: ``--services``, then ``--server-config``."""
    layers = []
    if opts.services:
        layers.append(services_layer(load_services_file(opts.services), opts.keyspace))
    if opts.server_config:
        layers.append(load_yaml_mapping(opts.server_config))
    return layers


def _run_phases(opts: BenchOptions, target: Target, results: Results) -> None:
    results.memory["before"] = _memory(target)
    plans = make_plans(opts, target.url)
    context = multiprocessing.get_context("spawn")
    pipes: list[Connection] = []
    procs: list[BaseProcess] = []
    try:
        for plan in plans:
            parent_end, child_end = context.Pipe()
            proc = context.Process(
                target=worker_main, args=(plan, child_end), name=f"chime-bench-{plan.index}"
            )
            proc.start()
            child_end.close()
            pipes.append(parent_end)
            procs.append(proc)

        connect_timeout = 120 + opts.connections / 50
        results.connect = _collect(pipes, ConnectReport, connect_timeout)
        results.memory["connected"] = _memory(target)

        if opts.scenario is Scenario.IDLE:
            _hold(opts, target, results)
            results.sends = []
        else:
            start_ns = time.time_ns() + int(START_DELAY_S * 1e9)
            total = opts.total_messages
            for pipe in pipes:
                pipe.send(StartSending(start_ns, total))
            send_timeout = 120 + total / opts.rate
            results.send_start_ns = start_ns
            results.sends = _collect(pipes, SendReport, send_timeout)
            results.memory["end"] = _memory(target)
        acked = merge_acked(results.sends)
        results.acked = {channel: len(ids) for channel, ids in acked.items()}
        for pipe in pipes:
            pipe.send(ExpectDeliveries(acked, opts.drain_timeout))
        results.checks = _collect(pipes, CheckReport, opts.drain_timeout + 120)

        if opts.scenario is Scenario.HISTORY:
            channel = opts.channel_id(0)
            ordered = tuple(sorted(mid for mid, _ in acked.get(channel, [])))
            results.history = _run_history(opts, pipes, channel, ordered)
        for pipe in pipes:
            with contextlib.suppress(OSError):
                pipe.send(Finish())
    finally:
        _join(procs)


def _hold(opts: BenchOptions, target: Target, results: Results) -> None:
    """Idle: keep the connections open ``--duration`` seconds; sample memory."""
    deadline = time.monotonic() + opts.duration
    peak: MemorySample | None = None
    while time.monotonic() < deadline:
        time.sleep(min(HOLD_SAMPLE_S, max(0.0, deadline - time.monotonic())))
        sample = target.memory()
        if peak is None or sample.rss_kib > peak.rss_kib:
            peak = sample
    results.memory["end"] = _memory(target)
    if peak is not None:
        results.memory["peak"] = peak.to_dict()


def _run_history(
    opts: BenchOptions, pipes: Sequence[Connection], channel: str, ordered: tuple[str, ...]
) -> list[HistoryReport]:
    if not ordered:
        return []
    # Every process holds connections of the one history channel when M = 1;
    # pages and concurrency are split between them.
    shares = split(opts.history_pages, len(pipes))
    concurrency = split(opts.history_concurrency, len(pipes))
    active = [i for i, share in enumerate(shares) if share > 0]
    for i in active:
        pipes[i].send(
            RunHistory(
                channel_id=channel,
                ordered_ids=ordered,
                pages=shares[i],
                concurrency=max(1, concurrency[i]),
                limit=opts.history_limit,
                seed=i,
            )
        )
    return _collect([pipes[i] for i in active], HistoryReport, 120 + opts.history_pages)


def make_plans(opts: BenchOptions, url: str) -> list[WorkerPlan]:
    """Connection ``i`` joins channel ``i % M`` and lives in process ``i % P``."""
    plans = []
    for p in range(opts.processes):
        connections = tuple(
            (i, opts.channel_id(i % opts.channels))
            for i in range(p, opts.connections, opts.processes)
        )
        senders = tuple((s, s) for s in range(p, opts.senders, opts.processes))
        # The typists are the connections after the senders.
        typists = tuple(
            i for i in range(opts.senders, opts.senders + opts.typists) if i % opts.processes == p
        )
        plans.append(
            WorkerPlan(
                index=p,
                url=url,
                connections=connections,
                senders=senders,
                total_senders=max(1, opts.senders),
                rate=opts.rate if opts.rate > 0 else 1.0,
                connect_concurrency=max(1, opts.connect_concurrency // opts.processes),
                content_bytes=opts.content_bytes,
                typists=typists,
                typing_interval=opts.typing_interval,
            )
        )
    return plans


def split(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` near-equal shares (larger ones first)."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def merge_acked(reports: Sequence[SendReport]) -> dict[str, list[tuple[str, int]]]:
    """Every acked (messageId, send ns) of every process, by channel."""
    merged: dict[str, list[tuple[str, int]]] = {}
    for report in reports:
        for channel, messages in report.acked.items():
            merged.setdefault(channel, []).extend(messages)
    return merged


def _memory(target: Target) -> dict[str, Any]:
    return target.memory().to_dict()


def _collect(pipes: Sequence[Connection], kind: type[R], timeout: float) -> list[R]:
    """One report of type ``kind`` from every pipe; raise if a process fails or hangs."""
    got: dict[int, R] = {}
    deadline = time.monotonic() + timeout
    waiting = {id(pipe): i for i, pipe in enumerate(pipes)}
    while len(got) < len(pipes):
        left = deadline - time.monotonic()
        if left <= 0:
            raise BenchError(f"load processes did not report {kind.__name__} in {timeout:.0f} s")
        ready = multiprocessing.connection.wait(
            [p for p in pipes if waiting[id(p)] not in got], timeout=left
        )
        for pipe in ready:
            assert isinstance(pipe, Connection)
            index = waiting[id(pipe)]
            try:
                message = pipe.recv()
            except EOFError:
                raise BenchError(f"load process {index} exited unexpectedly") from None
            if isinstance(message, WorkerFailed):
                raise BenchError(f"load process {index} failed:\n{message.reason}")
            if not isinstance(message, kind):
                raise BenchError(f"load process {index} sent {type(message).__name__}")
            got[index] = message
    return [got[i] for i in range(len(pipes))]


def _join(procs: Sequence[BaseProcess]) -> None:
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    for proc in procs:
        proc.join(max(0.1, deadline - time.monotonic()))
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join(5)


def new_run_id() -> str:
    """A prefix for this run's channel ids, so runs never share a channel."""
    return f"bench-{secrets.token_hex(4)}"


def run_bench_command(args: Any) -> int:
    """``chime bench``: options from argparse; 2 for options that make no run."""
    from chime_actors.bench.options import BenchUsageError, options_from_args

    try:
        opts = options_from_args(args, new_run_id())
    except BenchUsageError as exc:
        print(f"chime bench: {exc}", file=sys.stderr)
        return 2
    return run_bench(opts)
