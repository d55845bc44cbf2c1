"""chime_actors.handlers.registry: built-ins, module paths, entry points, option errors."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from chime_actors.cli.main import main
from chime_actors.config import Config, HandlerStage, load_config
from chime_actors.errors import ConfigError
from chime_actors.handlers import Handler, parse_options
from chime_actors.handlers.builtins.word_filter import WordFilter
from chime_actors.handlers.registry import (
    after_store_indexes,
    build_handler,
    build_stage,
    channel_matches,
    check_handlers,
    implements,
    resolve_factory,
)


def config_of(tmp_path: Path, *handlers: dict[str, Any]) -> Config:
    path = tmp_path / "chime.yaml"
    path.write_text(yaml.safe_dump({"handlers": list(handlers)}))
    return load_config(path, env={})


def entry(name: str, use: str, stage: str = "before_store", **more: Any) -> dict[str, Any]:
    return {"name": name, "use": use, "stage": stage, **more}


def handler_error(config: Config) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        check_handlers(config)
    return caught.value


def test_a_built_in_is_found_by_name(tmp_path: Path) -> None:
    config = config_of(tmp_path, entry("f", "word_filter", options={"words": ["x"]}))
    loaded = build_handler(config, 0)
    assert isinstance(loaded.handler, WordFilter)
    assert loaded.name == "f"


def test_a_module_path_is_imported(tmp_path: Path) -> None:
    use = "chime_actors.handlers.builtins.word_filter:make"
    config = config_of(tmp_path, entry("f", use, options={"words": ["x"]}))
    assert isinstance(build_handler(config, 0).handler, WordFilter)


def write_package(root: Path, *, entry_point: str) -> None:
    """An installed distribution on ``root``: a module and its entry point metadata."""
    (root / "acme_handlers.py").write_text(
        "from chime_actors.handlers import Handler, Reject\n"
        "class NoShouting(Handler):\n"
        "    def before_store(self, draft):\n"
        "        if draft.content.isupper():\n"
        "            return Reject('bad_request', 'no shouting')\n"
        "        return super().before_store(draft)\n"
        "def make(options):\n"
        "    return NoShouting()\n"
    )
    info = root / "acme_handlers-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-handlers\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[chime.handlers]\n{entry_point}\n")


def test_an_entry_point_of_an_installed_package_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_package(tmp_path, entry_point="no_shouting = acme_handlers:make")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "acme_handlers", raising=False)
    config = config_of(tmp_path, entry("quiet", "no_shouting"))
    loaded = build_handler(config, 0)
    assert type(loaded.handler).__name__ == "NoShouting"
    assert implements(loaded.handler, HandlerStage.BEFORE_STORE)


@pytest.mark.parametrize(
    ("handler", "key", "words"),
    [
        (entry("a", "nothing_like_it"), "handlers[0].use", "no built-in"),
        (entry("a", "no_such_module_xyz:make"), "handlers[0].use", "cannot import"),
        (entry("a", "os.path:no_such_factory"), "handlers[0].use", "has no no_such_factory"),
        (entry("a", "os:sep"), "handlers[0].use", "not callable"),
        (entry("a", "word_filter"), "handlers[0].options", "missing required field `words`"),
        (entry("a", "word_filter", options={"words": []}), "handlers[0].options.words", "length"),
        (
            entry("a", "word_filter", options={"words": ["x"], "action": "hide"}),
            "handlers[0].options.action",
            "invalid enum value",
        ),
        (entry("a", "word_filter", options={"words": [""]}), "handlers[0].options.words[0]", ""),
        (
            entry("a", "word_filter", options={"words": ["x"], "typo": 1}),
            "handlers[0].options.typo",
            "unknown",
        ),
        (
            entry("a", "word_filter", "after_store", options={"words": ["x"]}),
            "handlers[0].stage",
            "after_store",
        ),
        (
            entry("a", "echo_bot", options={"user": "bot", "prefix": "!"}),
            "handlers[0].stage",
            "before_store",
        ),
        (
            entry("a", "echo_bot", "after_store", options={"user": "b t", "prefix": "!"}),
            "handlers[0].options.user",
            "",
        ),
        (
            entry("a", "webhook", "after_store", options={"url": "ftp://x", "secret": "s"}),
            "handlers[0].options.url",
            "",
        ),
        (
            entry("a", "webhook", "after_store", options={"url": "http://x/"}),
            "handlers[0].options",
            "secret",
        ),
        (entry("a", "builtins:dict"), "handlers[0].use", "not a ChannelHandler"),
    ],
)
def test_every_problem_names_its_key(
    tmp_path: Path, handler: dict[str, Any], key: str, words: str
) -> None:
    config = config_of(tmp_path, entry("ok", "word_filter", options={"words": ["x"]}), handler)
    error = handler_error(config)
    expected = key.replace("handlers[0]", "handlers[1]")
    assert error.key == expected
    assert str(error).startswith(f"config error: {expected}: ")
    assert words in error.problem


def test_a_factory_that_raises_value_error_is_an_options_error(tmp_path: Path) -> None:
    config = config_of(tmp_path, entry("a", "chime_actors.handlers.registry:resolve_factory"))
    error = handler_error(config)
    assert error.key == "handlers[0].options"


def test_stages_and_indexes(tmp_path: Path) -> None:
    config = config_of(
        tmp_path,
        entry("hook", "webhook", "after_store", options={"url": "http://x/", "secret": "s"}),
        entry("f", "word_filter", options={"words": ["x"]}),
        entry("bot", "echo_bot", "after_store", options={"user": "bot", "prefix": "!"}),
    )
    assert after_store_indexes(config) == (0, 2)
    assert [h.name for h in build_stage(config, HandlerStage.BEFORE_STORE)] == ["f"]
    assert [h.name for h in build_stage(config, HandlerStage.AFTER_STORE)] == ["hook", "bot"]


def test_channel_globs(tmp_path: Path) -> None:
    config = config_of(
        tmp_path,
        entry("f", "word_filter", channels=["room-*", "lobby", "t?"], options={"words": ["x"]}),
    )
    spec = config.handlers[0]
    assert channel_matches(spec, "room-1")
    assert channel_matches(spec, "lobby")
    assert channel_matches(spec, "t1")
    assert not channel_matches(spec, "lobby2")
    assert not channel_matches(spec, "Room-1")  # case-sensitive, like channel ids


def test_a_handler_without_the_base_class_needs_the_method() -> None:
    class Plain:
        def before_store(self, draft: Any) -> Any:
            return None

        async def after_store(self, message: Any) -> Any:
            return ()

        async def close(self) -> None:
            return None

    assert implements(Plain(), HandlerStage.BEFORE_STORE)
    assert not implements(Handler(), HandlerStage.AFTER_STORE)


def test_resolve_factory_finds_the_built_ins() -> None:
    assert callable(resolve_factory("webhook", "k"))


def test_parse_options_paths() -> None:
    class Options(msgspec.Struct, forbid_unknown_fields=True):
        names: list[str]

    with pytest.raises(ConfigError) as caught:
        parse_options({"names": ["a", 3]}, Options)
    assert caught.value.key == "names[1]"


def test_check_config_and_serve_exit_2_naming_the_handler(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "chime.yaml"
    path.write_text(yaml.safe_dump({"handlers": [entry("a", "nothing_like_it")]}))
    assert main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("chime: config error: handlers[0].use: ")
    assert main(["serve", "--config", str(path)]) == 2
    assert capsys.readouterr().err.startswith("chime: config error: handlers[0].use: ")
