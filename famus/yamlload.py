"""YAML loading with YAML 1.2's numbers and with limits: no file can hang or exhaust famus.

PyYAML (YAML 1.1) reads ``1e-3`` as the string ``"1e-3"``. Config files and ``--set lr=1e-3``
write floats that way, so every famus YAML read goes through :func:`safe_load`, which resolves
exponent floats without a dot (``1e-3``, ``5E4``) as floats too.

Limits (a famus config is a few KB): at most :data:`MAX_BYTES` of text, :data:`MAX_ALIASES`
aliases (``*name``), :data:`MAX_DEPTH` levels of nesting and :data:`MAX_VALUES` values once the
aliases are expanded; a document over any of them (a "billion laughs" file of a few KB expands to
10^9 values) is refused with :class:`YAMLLimitError` before anything is built.
"""

from __future__ import annotations

import os
import re
from typing import Any

import yaml

MAX_BYTES = 2**20
MAX_ALIASES = 100
MAX_DEPTH = 64
MAX_VALUES = 100_000


class YAMLLimitError(yaml.YAMLError):
    """A YAML document over one of the limits (one-line message in ``problem``)."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


class _Loader(yaml.SafeLoader):
    """A SafeLoader that counts aliases and nesting while composing, and expanded values before constructing."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise YAMLLimitError(f"more than {MAX_ALIASES} aliases (*name); famus reads at most {MAX_ALIASES}")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise YAMLLimitError(f"nested more than {MAX_DEPTH} levels deep; famus reads at most {MAX_DEPTH}")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_document(self, node: Any) -> Any:
        _expanded_size(node, {}, set())
        return super().construct_document(node)


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_: set[int]) -> int:
    """How many values ``node`` holds with every alias expanded (shared nodes counted once per use, memoized,
    so the cost is the size of the file, not of the expansion); refuse over :data:`MAX_VALUES` or a cycle."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_:
        raise YAMLLimitError("an alias refers to a value that holds it (a cycle); write the values out")
    open_.add(key)
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    else:
        children = []
    total = 1 + sum(_expanded_size(child, sizes, open_) for child in children)
    open_.discard(key)
    if total > MAX_VALUES:
        raise YAMLLimitError(f"its aliases expand to more than {MAX_VALUES} values; famus reads at most {MAX_VALUES}")
    sizes[key] = total
    return total


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` with ``1e-3`` read as a float, within the limits.

    Raises:
        yaml.YAMLError: not valid YAML, or :class:`YAMLLimitError`: over a limit.
    """
    if len(text) > MAX_BYTES:
        raise YAMLLimitError(f"{len(text)} characters, more than the {MAX_BYTES} famus reads as YAML")
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


def load_file(path: str | os.PathLike[str]) -> Any:
    """:func:`safe_load` of a UTF-8 file of at most :data:`MAX_BYTES` (no more is ever read).

    Raises:
        OSError: unreadable; yaml.YAMLError: not valid YAML; ValueError: over a limit or not UTF-8, in one
            line naming the file.
    """
    name = repr(os.fspath(path))
    with open(path, "rb") as f:
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise ValueError(f"YAML file {name} is larger than {MAX_BYTES // 2**20} MiB, the most famus reads; is it the "
                         "right file?")
    try:
        return safe_load(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"YAML file {name} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
                         "save it as UTF-8") from None
    except YAMLLimitError as e:
        raise ValueError(f"YAML file {name} is refused: {e.problem}") from None
