"""Reading hand-written YAML with line numbers: an issue sink and typed value readers.

Every reader takes a YAML node (from `yaml.compose`, which keeps line numbers), reports what is wrong to a
`Sink` with the fix spelled out, and returns the value or `BAD`; nothing raises, so one pass over a file finds
every mistake in it. `dpi.profile` builds profiles with these; they know nothing about censors.
"""
from __future__ import annotations

import difflib
import ipaddress
import typing
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from dpi import config


@dataclass(frozen=True)
class ProfileIssue:
    """One problem in a profile (or in a list it loads), located and with the fix spelled out."""

    file: str
    line: int
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message} (fix: {self.fix})"


class Bad:
    """Marker for a value that failed validation (its issue is already reported)."""

    def __repr__(self) -> str:
        return "<invalid>"


BAD = Bad()


class Sink:
    """Collects the issues of one file; every check reports here and goes on, so one pass finds them all."""

    def __init__(self, file: str, out: list[ProfileIssue]) -> None:
        self.file = file
        self.out = out

    def add(self, where: Node | int, message: str, fix: str) -> None:
        line = where if isinstance(where, int) else line_of(where)
        self.out.append(ProfileIssue(self.file, max(1, line), message, fix))


def line_of(node: Node) -> int:
    return node.start_mark.line + 1


def did_you_mean(word: str, choices: typing.Iterable[str], fallback: str) -> str:
    """The closest valid spelling (difflib), else a choice containing the word (`csv` -> `registry-csv`)."""
    choices = list(choices)
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not close and len(word) >= 3:
        close = [c for c in choices if word.lower() in c.lower()][:1]
    return f"did you mean '{close[0]}'?" if close else fallback


def one_of(choices: typing.Iterable[str]) -> str:
    return ", ".join(choices)


def kind_of(node: Node) -> str:
    """A human name for what a node holds, for 'expected X, got Y' messages."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    tag = node.tag.rsplit(":", 1)[-1]
    return {"null": "nothing", "bool": "true/false", "int": "an integer", "float": "a number",
            "str": f"the text '{node.value}'"}.get(tag, f"a {tag}")


def scalar_value(node: Node) -> Any:
    """The Python value of a scalar node as YAML 1.1 reads it (so `yes` is True and `0x1` is 1)."""
    if not isinstance(node, ScalarNode):
        return BAD
    try:
        return yaml.constructor.SafeConstructor().construct_object(node, deep=True)
    except Exception:
        return BAD


def mapping_items(sink: Sink, node: Node, where: str) -> list[tuple[str, Node, Node]] | None:
    """The (key, key node, value node) pairs of a mapping; `None` (after an issue) when it is not one.

    Keys are taken as written (`no:` stays the text "no"): they are names, not values. A repeated key is an
    issue (YAML would silently keep the last one). `<<: *anchor` merges are honoured.
    """
    if isinstance(node, ScalarNode) and node.tag.endswith(":null"):
        return []
    if not isinstance(node, MappingNode):
        sink.add(node, f"{where} must be a mapping (key: value lines), got {kind_of(node)}",
                 f"write {where} as indented `key: value` lines")
        return None
    seen: dict[str, int] = {}
    for key_node, _ in node.value:
        if isinstance(key_node, ScalarNode) and not key_node.tag.endswith(":merge"):
            if key_node.value in seen:
                sink.add(key_node, f"duplicate key '{key_node.value}' in {where} "
                         f"(first at line {seen[key_node.value]})", "remove one of them: YAML would keep only the last")
            else:
                seen[key_node.value] = line_of(key_node)
    if any(k.tag.endswith(":merge") for k, _ in node.value):
        try:
            yaml.constructor.SafeConstructor().flatten_mapping(node)
        except Exception:
            sink.add(node, f"a `<<` merge in {where} does not name a mapping",
                     "merge only anchors of mappings: `<<: *name`")
            node.value = [(k, v) for k, v in node.value if not k.tag.endswith(":merge")]
    pairs: dict[str, tuple[Node, Node]] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, ScalarNode) or key_node.value == "":
            sink.add(key_node, f"a key in {where} is not a name", "use plain names as keys")
            continue
        pairs[key_node.value] = (key_node, value_node)  # last wins, as in YAML
    return [(k, kn, vn) for k, (kn, vn) in pairs.items()]


def unknown_key(sink: Sink, key_node: Node, key: str, where: str, valid: typing.Iterable[str]) -> None:
    valid = list(valid)
    sink.add(key_node, f"unknown key '{key}' in {where}",
             did_you_mean(key, valid, f"valid keys in {where}: {one_of(valid)}"))


# ----------------------------------------------------------------------------------------------------------------
# Typed value readers: each returns the value or BAD (after reporting why, with the fix)


def read_text(sink: Sink, node: Node, what: str) -> str | Bad:
    """Any non-empty scalar as the text written (so `name: 2021` or `summary: yes` mean what they say)."""
    if not isinstance(node, ScalarNode) or node.tag.endswith(":null") or node.value == "":
        sink.add(node, f"{what} must be text, got {kind_of(node)}", f"write {what} as text, e.g. {what}: example")
        return BAD
    return str(node.value)


def read_bool(sink: Sink, node: Node, what: str) -> bool | Bad:
    value = scalar_value(node)
    if not isinstance(value, bool):
        sink.add(node, f"{what} must be true or false, got {kind_of(node)}",
                 f"write {what}: true or {what}: false (no quotes)")
        return BAD
    return value


def read_int(sink: Sink, node: Node, what: str, lo: int | None = None, hi: int | None = None,
         hex_text: bool = False, example: str | None = None) -> int | Bad:
    """An integer in [lo, hi]; with `hex_text`, also a quoted hex string such as "0x00000001" (QUIC versions)."""
    value = scalar_value(node)
    if hex_text and isinstance(value, str) and value.strip().lower().startswith("0x"):
        try:
            value = int(value.strip(), 16)
        except ValueError:
            pass
    if not isinstance(value, int) or isinstance(value, bool):
        example = example or f"{what.rsplit('.', 1)[-1]}: " + ("0x00000001" if hex_text else str(max(lo or 0, 1)))
        sink.add(node, f"{what} must be a whole number, got {kind_of(node)}", f"write a whole number, e.g. {example}")
        return BAD
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        sink.add(node, f"{what} is {value}, outside {range_text(lo, hi)}", f"use a value in {range_text(lo, hi)}")
        return BAD
    return value


def read_number(sink: Sink, node: Node, what: str, lo: float | None = 0.0, hi: float | None = None,
            fix: str | None = None) -> float | Bad:
    value = scalar_value(node)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
        sink.add(node, f"{what} must be a number, got {kind_of(node)}", fix or f"write a number, e.g. {what}: 1.5")
        return BAD
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        sink.add(node, f"{what} is {value}, outside {range_text(lo, hi)}", fix or f"use a value in {range_text(lo, hi)}")
        return BAD
    return float(value)


def range_text(lo: float | None, hi: float | None) -> str:
    if hi is None:
        return f">= {lo:g}"
    if lo is None:
        return f"<= {hi:g}"
    return f"{lo:g}..{hi:g}"


def read_choice(sink: Sink, node: Node, what: str, choices: typing.Sequence[str]) -> str | Bad:
    if not isinstance(node, ScalarNode) or node.tag.endswith(":null"):
        sink.add(node, f"{what} must be one of {one_of(choices)}, got {kind_of(node)}",
                 f"write e.g. {what}: {choices[0]}")
        return BAD
    if node.value not in choices:
        sink.add(node, f"{what} is '{node.value}', not one of {one_of(choices)}",
                 did_you_mean(node.value, choices, f"use one of {one_of(choices)}"))
        return BAD
    return str(node.value)


def read_seq(sink: Sink, node: Node, what: str) -> list[Node] | None:
    if isinstance(node, ScalarNode) and node.tag.endswith(":null"):
        return []
    if not isinstance(node, SequenceNode):
        sink.add(node, f"{what} must be a list, got {kind_of(node)}", f"write {what} as a list: [a, b] or `- a` lines")
        return None
    return list(node.value)


def read_texts(sink: Sink, node: Node, what: str) -> list[tuple[str, Node]] | Bad:
    items = read_seq(sink, node, what)
    if items is None:
        return BAD
    out: list[tuple[str, Node]] = []
    for item in items:
        value = read_text(sink, item, f"an entry of {what}")
        if value is BAD:
            return BAD
        out.append((typing.cast(str, value), item))
    return out


def read_ints(sink: Sink, node: Node, what: str, lo: int, hi: int, hex_text: bool = False) -> tuple[int, ...] | Bad:
    """One integer or a list of them (ports, QUIC versions)."""
    items = [node] if isinstance(node, ScalarNode) else read_seq(sink, node, what)
    if items is None:
        return BAD
    values = [read_int(sink, item, what, lo, hi, hex_text) for item in items]
    if any(v is BAD for v in values):
        return BAD
    return tuple(typing.cast(int, v) for v in values)


def read_network(sink: Sink, node: Node, what: str) -> config.Network | Bad:
    text = read_text(sink, node, what)
    if text is BAD:
        return BAD
    text = typing.cast(str, text).strip()
    try:
        return ipaddress.ip_network(text)
    except ValueError:
        try:
            fixed = ipaddress.ip_network(text, strict=False)
        except ValueError:
            sink.add(node, f"'{text}' in {what} is not an address or CIDR",
                     "write an IPv4/IPv6 address or network, e.g. 10.0.0.0/8 or 2001:db8::/32")
            return BAD
        sink.add(node, f"'{text}' in {what} has host bits set", f"write the network address: {fixed}")
        return BAD


def read_address(sink: Sink, node: Node, what: str, version: int) -> str | Bad:
    text = read_text(sink, node, what)
    if text is BAD:
        return BAD
    try:
        address = ipaddress.ip_address(typing.cast(str, text).strip())
    except ValueError:
        address = None
    if address is None or address.version != version:
        example = "203.0.113.7" if version == 4 else "2001::1"
        sink.add(node, f"'{text}' in {what} is not an IPv{version} address",
                 f"write IPv{version} addresses, e.g. {example}")
        return BAD
    return str(address)
