"""``chime``: serve, client, token, bench, check-config.

Every subcommand is ``main(argv) -> exit status``; a bad configuration exits 2
with one line naming the key (docs/operations.md).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import yaml

from chime_actors.config import ChatConfig, Config, load_config
from chime_actors.errors import ChimeError, ConfigError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_CONFIG = 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="chime", description="Chime chat server")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the server in the foreground")
    _config_args(serve)
    serve.add_argument("--workers", type=int, help="gateway processes (default: cores)")
    serve.add_argument("--chat-port", type=int, help="chat WebSocket port (0: pick one)")
    serve.add_argument("--api-port", type=int, help="HTTP API port (0: pick one)")
    serve.add_argument("--ports-file", help='write {"chat": N, "api": M} here once ready')

    client = commands.add_parser("client", help="an interactive terminal client")
    chat = ChatConfig()  # the default chat endpoint, from the configuration schema
    client.add_argument(
        "--url", default=f"ws://{chat.host}:{chat.port}/", help="the chat WebSocket"
    )
    client.add_argument("--user", help="user id (insecure mode)")
    client.add_argument(
        "--channel",
        default="general",
        help="channels to join, comma-separated (you write to the first)",
    )
    client.add_argument("--token", help="a JWT (jwt mode)")

    token = commands.add_parser("token", help="mint a JWT with the configured secret")
    _config_args(token)
    token.add_argument("--user", required=True)
    token.add_argument("--channels", help="comma-separated channels to grant")
    token.add_argument("--ttl", default="1h", help="lifetime: 30s, 15m, 1h, 7d")

    bench = commands.add_parser("bench", help="the load generator")
    from chime_actors.bench.options import add_bench_arguments

    add_bench_arguments(bench)

    check = commands.add_parser("check-config", help="validate and print the configuration")
    _config_args(check)

    db = commands.add_parser("db", help="storage administration")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    db_init = db_commands.add_parser("init", help="create the schema (idempotent)")
    _config_args(db_init)
    return parser


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file overriding config/default.yaml")
    parser.add_argument("--credentials", help="the seed's credentials.toml")


def _load(args: argparse.Namespace, overrides: dict[str, Any] | None = None) -> Config:
    return load_config(args.config, credentials=args.credentials, overrides=overrides)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``chime`` command line; return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "client":
            from chime_actors.cli.client import run_client

            return run_client(args.url, user=args.user, channel=args.channel, token=args.token)
        if args.command == "token":
            from chime_actors.cli.token import mint_token

            print(mint_token(_load(args), args.user, args.channels, args.ttl))
            return EXIT_OK
        if args.command == "bench":
            from chime_actors.bench.runner import run_bench_command

            return run_bench_command(args)
        if args.command == "db":
            import asyncio

            from chime_actors.storage.factory import init_storage

            config = _load(args)
            asyncio.run(init_storage(config))
            print(f"chime: schema ready ({config.storage.backend})")
            return EXIT_OK
        if args.command == "check-config":
            from chime_actors.handlers.registry import check_handlers

            config = _load(args)
            check_handlers(config)
            sys.stdout.write(yaml.safe_dump(config.to_display_dict(), sort_keys=False))
            return EXIT_OK
    except ConfigError as exc:
        print(f"chime: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    except ChimeError as exc:
        print(f"chime: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_FAILED  # pragma: no cover - argparse requires a command


def _serve(args: argparse.Namespace) -> int:
    from chime_actors.server import run_server

    config = _load(
        args,
        {"workers": args.workers, "chat.port": args.chat_port, "api.port": args.api_port},
    )
    return run_server(config, ports_file=args.ports_file)
