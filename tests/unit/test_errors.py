"""The exception tree drawn in errors.py is the tree of classes in the package.

Each edge is (parent, child, the child's module): a class that moves to another
module must be redrawn too.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import sys

import chime_actors
from chime_actors import errors
from chime_actors.errors import ChimeError

# "    │   ├── StoreUnavailable   storage is down ..." -> the indent, the name, and
# the module when the description starts with one: "(api.http_server) a route ..."
_NODE = re.compile(r"^    ((?:[│ ]   )*)[├└]── (\w+)(?: +\(([a-z_.]+)\) )?")
Edge = tuple[str, str, str]


def _import_every_module() -> None:
    for module in pkgutil.walk_packages(chime_actors.__path__, "chime_actors."):
        if not module.name.endswith(".__main__"):  # that one runs the CLI
            importlib.import_module(module.name)


def _drawn_edges() -> set[Edge]:
    """(parent, child, module) of each line of the drawing in errors.py's docstring."""
    doc = errors.__doc__ or ""
    block = doc.split("::\n\n", 1)[1].split("\n\n", 1)[0]
    root, *lines = block.splitlines()
    edges: set[Edge] = set()
    path = [root.strip()]
    for line in lines:
        match = _NODE.match(line)
        if match is None:
            continue  # a description's continuation line
        depth = len(match.group(1)) // 4 + 1
        del path[depth:]
        module = f"chime_actors.{match.group(3)}" if match.group(3) else errors.__name__
        edges.add((path[-1], match.group(2), module))
        path.append(match.group(2))
    return edges


def _real_edges() -> set[Edge]:
    edges: set[Edge] = set()
    todo: list[type[BaseException]] = [ChimeError]
    while todo:
        parent = todo.pop()
        for child in parent.__subclasses__():
            if child.__module__.startswith("chime_actors."):
                edges.add((parent.__name__, child.__name__, child.__module__))
                todo.append(child)
    return edges


def test_the_drawn_tree_is_the_tree_of_chime_error_subclasses() -> None:
    _import_every_module()
    drawn = _drawn_edges()
    real = _real_edges()
    assert drawn == real, {"drawn, not real": drawn - real, "real, not drawn": real - drawn}


def test_every_exception_class_of_the_package_derives_from_chime_error() -> None:
    _import_every_module()
    strays = [
        f"{name}.{cls.__name__}"
        for name, module in sys.modules.items()
        if name == "chime_actors" or name.startswith("chime_actors.")
        for cls in vars(module).values()
        if inspect.isclass(cls)
        and issubclass(cls, BaseException)
        and cls.__module__ == name
        and not issubclass(cls, ChimeError)
    ]
    assert strays == []
