"""Find and build the configured handlers: built-ins, ``module:factory`` paths, entry points.

``handlers[i].use`` is looked up in this order:

1. a built-in name (``word_filter``, ``echo_bot``, ``webhook``);
2. ``package.module:factory`` (a dotted attribute path after the colon);
3. the name of an entry point in the ``chime.handlers`` group, so an installed
   package announces its handlers in its own metadata::

       [project.entry-points."chime.handlers"]
       profanity = "acme_chime.profanity:make"

Every problem is a ``ConfigError`` naming the key (``handlers[0].use``), so
``chime serve`` and ``chime check-config`` print one line and exit 2.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.metadata
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

from chime_actors.config import Config, HandlerConfig, HandlerStage
from chime_actors.errors import ConfigError
from chime_actors.handlers.api import ChannelHandler, Handler, HandlerFactory

ENTRY_POINT_GROUP = "chime.handlers"

BUILT_INS: Mapping[str, str] = {
    "word_filter": "chime_actors.handlers.builtins.word_filter:make",
    "echo_bot": "chime_actors.handlers.builtins.echo_bot:make",
    "webhook": "chime_actors.handlers.builtins.webhook:make",
}

_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*\Z")
_STEP = re.compile(r"\.(\w+)|\[(\d+)\]")
_AT = re.compile(r"(?P<problem>.*?)(?: - at `\$(?P<path>[^`]*)`)?", re.DOTALL)

_Options = TypeVar("_Options", bound=msgspec.Struct)


@dataclass(frozen=True, slots=True)
class LoadedHandler:
    """A built handler next to its configuration."""

    spec: HandlerConfig
    handler: ChannelHandler

    @property
    def name(self) -> str:
        """The configured name."""
        return self.spec.name

    def matches(self, channel_id: str) -> bool:
        """Whether the handler sees ``channel_id`` (one of its globs matches)."""
        return channel_matches(self.spec, channel_id)


def channel_matches(spec: HandlerConfig, channel_id: str) -> bool:
    """Whether one of ``spec.channels`` (``fnmatch`` globs, case-sensitive) matches."""
    return any(fnmatch.fnmatchcase(channel_id, pattern) for pattern in spec.channels)


def after_store_indexes(config: Config) -> tuple[int, ...]:
    """Positions in ``config.handlers`` of the ``after_store`` handlers, in order.

    The n-th of them runs in the process actor ``handler n`` (1-based).
    """
    return tuple(
        i for i, spec in enumerate(config.handlers) if spec.stage is HandlerStage.AFTER_STORE
    )


def resolve_factory(use: str, key: str) -> HandlerFactory:
    """The factory ``use`` names; ``ConfigError`` at ``key`` when there is none."""
    target = BUILT_INS.get(use)
    if target is None and _PATH.match(use):
        target = use
    if target is None:
        found = [
            e for e in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if e.name == use
        ]
        if not found:
            known = ", ".join(sorted(BUILT_INS))
            raise ConfigError(
                key,
                f"{use!r} is no built-in ({known}), no package.module:factory and no "
                f"entry point of the {ENTRY_POINT_GROUP} group",
            )
        target = found[0].value
    module_name, _, attribute = target.partition(":")
    try:
        value: Any = importlib.import_module(module_name)
    except Exception as exc:  # an import runs arbitrary code: any error is the module's
        raise ConfigError(key, f"cannot import {module_name}: {exc}") from exc
    for part in attribute.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise ConfigError(key, f"{module_name} has no {attribute}") from None
    if not callable(value):
        raise ConfigError(key, f"{target} is not callable")
    factory: HandlerFactory = value
    return factory


def build_handler(config: Config, index: int) -> LoadedHandler:
    """Build ``config.handlers[index]``: resolve, call the factory, check the stage.

    Raises:
        ConfigError: naming ``handlers[index].use``, ``.options...`` or ``.stage``.
    """
    spec = config.handlers[index]
    key = f"handlers[{index}]"
    factory = resolve_factory(spec.use, f"{key}.use")
    try:
        handler = factory(dict(spec.options))
    except ConfigError as exc:
        inner = exc.key if not exc.key or exc.key.startswith("[") else f".{exc.key}"
        raise ConfigError(f"{key}.options{inner}", exc.problem) from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{key}.options", str(exc) or type(exc).__name__) from None
    if not isinstance(handler, Handler) and not (
        callable(getattr(handler, spec.stage.value, None))
        and callable(getattr(handler, "close", None))
    ):
        raise ConfigError(
            f"{key}.use",
            f"{spec.use} made a {type(handler).__name__}, not a ChannelHandler"
            f" (it needs {spec.stage.value} and close)",
        )
    if not implements(handler, spec.stage):
        raise ConfigError(f"{key}.stage", f"{spec.use} does not implement {spec.stage.value}")
    return LoadedHandler(spec, handler)


def check_handlers(config: Config) -> None:
    """Build every configured handler once, so a bad one stops the start (exit 2).

    The handlers built here are dropped unused: factories are cheap by contract
    (``HandlerFactory``).
    """
    for index in range(len(config.handlers)):
        build_handler(config, index)


def build_stage(config: Config, stage: HandlerStage) -> tuple[LoadedHandler, ...]:
    """Every handler of ``stage``, in configuration order."""
    return tuple(
        build_handler(config, i) for i, spec in enumerate(config.handlers) if spec.stage is stage
    )


def implements(handler: ChannelHandler, stage: HandlerStage) -> bool:
    """Whether ``handler`` has its own method for ``stage`` (not ``Handler``'s default)."""
    method = stage.value
    if isinstance(handler, Handler):
        return getattr(type(handler), method) is not getattr(Handler, method)
    return callable(getattr(handler, method, None))


def parse_options(options: Mapping[str, Any], schema: type[_Options]) -> _Options:
    """``options`` converted to ``schema`` (a msgspec Struct); ``ConfigError`` if they do not fit.

    The error's key is the option's path (``words``, ``words[2]``), which
    ``build_handler`` puts after ``handlers[i].options``.
    """
    try:
        return msgspec.convert(dict(options), schema)
    except msgspec.ValidationError as exc:
        match = _AT.fullmatch(str(exc))
        assert match is not None  # the pattern matches any text
        path = "".join(
            f".{name}" if name else f"[{index}]"
            for name, index in _STEP.findall(match["path"] or "")
        )
        problem = match["problem"]
        unknown = re.fullmatch(r"Object contains unknown field `(?P<name>[^`]*)`", problem)
        if unknown is not None:
            path += f".{unknown['name']}"
            problem = "unknown option"
        raise ConfigError(path.lstrip("."), problem[:1].lower() + problem[1:]) from None
