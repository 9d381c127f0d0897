"""Reading composed YAML nodes safely: the building blocks of the config loader.

A :class:`NodeReader` turns one node at a time into a plain value (string, integer,
number, the entries of a mapping), refusing anything else, substituting ``${VAR}`` from
the environment, honouring ``<<`` merge keys at a bounded cost, and naming the YAML path
and line of every problem. :mod:`shardflow.config.loader` knows the cluster file's
sections and builds the model with it.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple, TypeVar

from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

from shardflow.errors import ConfigError

_D = TypeVar("_D")
_N = TypeVar("_N", bound=Node)

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
NULL = "tag:yaml.org,2002:null"
MAP = "tag:yaml.org,2002:map"
SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"
_KINDS = {
    _STR: "string",
    _INT: "integer",
    _FLOAT: "number",
    NULL: "null",
    "tag:yaml.org,2002:bool": "boolean",
    "tag:yaml.org,2002:timestamp": "date",
}


class NameRule(NamedTuple):
    what: str
    pattern: re.Pattern[str]
    spelled: str

    def problem(self, name: str) -> str | None:
        if self.pattern.fullmatch(name):
            return None
        return f"invalid {self.what} {shorten(name)!r}: use {self.spelled}"


# `$${` (a literal), `${NAME}`, `${NAME:-default}`; a bare `${` is a malformed reference.
_REFERENCE = re.compile(
    r"\$\$\{|\$\{(?:(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\})?"
)
MAX_MAPPING_WORK = 100_000
"""Most mapping entries (own and merged through ``<<``) one document may make the loader
look at. A real cluster file needs a few hundred; an alias "bomb" would need billions."""

_IN_PROGRESS: Mapping[str, Node] = MappingProxyType({})
"""Marks a merge source being read, to catch a mapping that merges itself."""
_RESOLVER = Resolver()
_CONSTRUCTOR = SafeConstructor()


@dataclass(frozen=True, slots=True)
class Fields:
    """The entries of one YAML mapping, and where it is, for error messages."""

    path: str
    line: int | None
    entries: dict[str, Node]

    def path_of(self, key: str) -> str:
        return _join(self.path, key)

    def get(self, key: str) -> Node | None:
        """The value under ``key``, or None if absent or null (both mean: the default)."""
        node = self.entries.get(key)
        return None if node is None or node.tag == NULL else node

    def require(self, key: str) -> Node:
        if key not in self.entries:
            raise ConfigError("missing required key", path=self.path_of(key), line=self.line)
        return self.entries[key]

    def error(self, key: str, message: str) -> ConfigError:
        return node_error(self.entries[key], self.path_of(key), message)


class NodeReader:
    """Reads nodes of one document into values, checking each on the way."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        # Merge sources already read, by node identity (the tree outlives the walk).
        self._merged: dict[int, Mapping[str, Node]] = {}
        self.work = 0
        """Mapping entries looked at so far; bounded by :data:`MAX_MAPPING_WORK`."""

    def _section(self, node: Node | None, path: str, keys: tuple[str, ...] | NameRule) -> Fields:
        """An optional mapping: absent or null reads as empty (all defaults)."""
        if node is None:
            return Fields(path, None, {})
        return self._mapping(node, path, keys)

    def _mapping(self, node: Node, path: str, keys: tuple[str, ...] | NameRule) -> Fields:
        """The entries of a mapping node, refusing duplicate and unexpected keys.

        ``keys`` is the fixed set of keys allowed, or the rule the keys follow when they
        are names (queues). ``<<`` merge keys are honoured; explicit keys win.
        """
        mapping = expect(node, path, MappingNode, (MAP,), "a mapping")
        entries: dict[str, Node] = {}
        merged: dict[str, Node] = {}
        lines: dict[str, int] = {}
        for key_node, value_node in mapping.value:
            if key_node.tag == _MERGE:
                sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
                for source in sources:
                    source_entries = self._merge_source(source, path, keys)
                    self._count_work(len(source_entries), source, path)
                    for key, value in source_entries.items():
                        merged.setdefault(key, value)
                continue
            self._count_work(1, key_node, path)
            if not isinstance(key_node, ScalarNode):
                raise node_error(key_node, path, "keys must be plain strings")
            key = key_node.value
            if key in lines:
                message = f"duplicate key; first set on line {lines[key]}"
                raise node_error(key_node, _join(path, key), message)
            _check_key(key_node, path, keys)
            lines[key] = _line(key_node)
            entries[key] = value_node
        return Fields(path, _line(node), merged | entries)

    def _merge_source(
        self, node: Node, path: str, keys: tuple[str, ...] | NameRule
    ) -> Mapping[str, Node]:
        """The entries a ``<<`` merge takes from ``node``, each node read once.

        An alias makes one node appear in many places; without this memo, a mapping that
        merges two aliases of one that merges two aliases of ... costs 2**depth.
        """
        known = self._merged.get(id(node))
        if known is _IN_PROGRESS:
            raise node_error(node, path, "a merge key (<<) includes the mapping that holds it")
        if known is not None:
            return known
        self._merged[id(node)] = _IN_PROGRESS
        entries = self._mapping(node, path, keys).entries
        self._merged[id(node)] = entries
        return entries

    def _count_work(self, amount: int, node: Node, path: str) -> None:
        self.work += amount
        if self.work > MAX_MAPPING_WORK:
            raise node_error(
                node,
                path,
                f"the document expands to more than {MAX_MAPPING_WORK} mapping entries"
                " through aliases and merge keys (<<); write the values out instead",
            )

    def _name(self, node: Node, path: str, rule: NameRule) -> str:
        name = self._str(node, path)
        if problem := rule.problem(name):
            raise node_error(node, path, problem)
        return name

    def _str(self, node: Node, path: str, *, secret: bool = False) -> str:
        scalar = expect(node, path, ScalarNode, (_STR,), "a string", secret=secret)
        return self._interpolate(scalar, path)

    def _int(self, node: Node, path: str, *, minimum: int = 1, maximum: int | None = None) -> int:
        scalar = expect(
            self._substituted(node, path), path, ScalarNode, (_INT,), "an integer", shown=node
        )
        value = _CONSTRUCTOR.construct_yaml_int(scalar)
        if value < minimum or (maximum is not None and value > maximum):
            if maximum is not None:
                bounds = f"between {minimum} and {maximum}"
            else:
                bounds = "> 0" if minimum == 1 else f">= {minimum}"
            raise node_error(node, path, f"must be {bounds}, got {value}")
        return value

    def _number(self, node: Node, path: str) -> float:
        """A positive, finite number of seconds."""
        scalar = expect(
            self._substituted(node, path), path, ScalarNode, (_INT, _FLOAT), "a number", shown=node
        )
        if scalar.tag == _INT:
            value = float(_CONSTRUCTOR.construct_yaml_int(scalar))
        else:
            value = _CONSTRUCTOR.construct_yaml_float(scalar)
        if not math.isfinite(value):
            raise node_error(node, path, "must be a finite number")
        if value <= 0:
            raise node_error(node, path, f"must be > 0, got {value:g}")
        return value

    def _int_field(
        self,
        fields: Fields,
        key: str,
        default: _D,
        *,
        minimum: int = 1,
        maximum: int | None = None,
    ) -> int | _D:
        node = fields.get(key)
        if node is None:
            return default
        return self._int(node, fields.path_of(key), minimum=minimum, maximum=maximum)

    def _number_field(self, fields: Fields, key: str, default: float) -> float:
        node = fields.get(key)
        return default if node is None else self._number(node, fields.path_of(key))

    def _substituted(self, node: Node, path: str) -> Node:
        """For a number field: ``${VAR}`` substituted, and the result read as a YAML scalar."""
        if not isinstance(node, ScalarNode) or node.tag != _STR or "${" not in node.value:
            return node
        text = self._interpolate(node, path)
        # (True, False): resolve as a plain scalar would be, e.g. "8" -> int.
        tag: str = _RESOLVER.resolve(ScalarNode, text, (True, False))  # type: ignore[no-untyped-call]
        return ScalarNode(tag, text, node.start_mark, node.end_mark)

    def _interpolate(self, node: ScalarNode, path: str) -> str:
        def substitute(match: re.Match[str]) -> str:
            if match.group(0) == "$${":
                return "${"
            name, default = match.group("name", "default")
            if name is None:
                hint = "write ${VAR} or ${VAR:-default}, or $${ for a literal ${"
                raise node_error(node, path, f"malformed ${{...}} reference; {hint}")
            value = self._env.get(name)
            if default is not None and not value:
                return default
            if value is None:
                raise node_error(node, path, f"environment variable {name} is not set")
            return value

        text: str = node.value
        return _REFERENCE.sub(substitute, text) if "${" in text else text


def _check_key(key_node: ScalarNode, path: str, keys: tuple[str, ...] | NameRule) -> None:
    key = key_node.value
    if isinstance(keys, NameRule):
        if problem := keys.problem(key):
            raise node_error(key_node, path, problem)
    elif key not in keys:
        close = difflib.get_close_matches(key, keys, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"expected one of {', '.join(keys)}"
        raise node_error(key_node, _join(path, key), f"unknown key; {hint}")


def expect(
    node: Node,
    path: str,
    kind: type[_N],
    tags: tuple[str, ...],
    expected: str,
    *,
    shown: Node | None = None,
    secret: bool = False,
) -> _N:
    """``node`` if it is a ``kind`` tagged with one of ``tags``; else a ConfigError.

    The message describes ``shown`` (the node as written, before substitution) so that it
    quotes the file, never the environment; with ``secret`` it quotes nothing.
    """
    if isinstance(node, kind) and node.tag in tags:
        return node
    got = describe(shown or node, secret=secret)
    raise node_error(node, path, f"must be {expected}, got {got}")


def describe(node: Node, *, secret: bool = False) -> str:
    if isinstance(node, MappingNode) and node.tag == MAP:
        return "a mapping"
    if isinstance(node, SequenceNode) and node.tag == SEQ:
        return "a list"
    kind = _KINDS.get(node.tag) if isinstance(node, ScalarNode) else None
    if kind is None:
        return f"a value tagged {node.tag!r}"
    if secret or node.tag == NULL:
        return kind
    text = shorten(node.value)
    return f"{kind} {text!r}" if node.tag == _STR else f"{kind} {text}"


def node_error(node: Node, path: str, message: str) -> ConfigError:
    return ConfigError(message, path=path, line=_line(node))


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def shorten(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
