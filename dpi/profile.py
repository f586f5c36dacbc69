"""Profiles: hand-written YAML censor models turned into the frozen dataclasses of `dpi.config`.

People write profiles by hand to reproduce a censor they read about, so a mistake must come back as
`FILE:LINE: what is wrong (fix: what to write instead)`, every mistake of the file in one pass, and never as a
traceback. That is why the YAML is read with `yaml.compose` (nodes keep their line numbers; `safe_load` loses
them) and why every check below reports to a sink and carries on instead of raising.

The reading happens in three steps:
  1. each file is parsed on its own into a `_Layer` (validated values, rules and list declarations, each with the
     file and line it came from), so that an issue always points at the file that holds the mistake;
  2. `include`d layers are merged first, the including file last (it wins: mappings key by key, lists by name,
     rules by name in place);
  3. the merged layer is checked as a whole (list references, list kinds) and built into a `Profile`.
`check_profile` additionally parses the list files' contents with `dpi.lists`; `load_profile` only checks that
they exist, because the engine parses them when it compiles its matchers.
"""
from __future__ import annotations

import ipaddress
import os
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode

from dpi import config
from dpi.config import (
    ACTION_TYPES,
    INJECTOR_PRESETS,
    LIST_FORMATS,
    Action,
    DnsInspection,
    FlowTableConfig,
    Injector,
    ListSpec,
    Match,
    MatchOptions,
    Profile,
    QuicInspection,
    Residual,
    Rule,
    TcpInspection,
)

from dpi.yamlread import (  # module-private aliases: the readers below stay short
    Bad as _Bad,
    Sink as _Sink,
    line_of as _line,
    did_you_mean as _did_you_mean,
    one_of as _one_of,
    kind_of as _kind,
    mapping_items as _items,
    unknown_key as _unknown_key,
    read_text as _text,
    read_bool as _bool,
    read_int as _int,
    read_number as _number,
    read_choice as _choice,
    read_seq as _seq,
    read_texts as _texts,
    read_ints as _ints,
    read_network as _network,
    read_address as _address,
    BAD,
    ProfileIssue,
)

__all__ = [
    "BEHAVIOUR_IDS",
    "RULES_DIR",
    "ProfileError",
    "ProfileIssue",
    "bundled_profiles",
    "check_profile",
    "load_profile",
]

RULES_DIR: Path = Path(os.environ.get("REDWEB_RULES") or Path(__file__).resolve().parent.parent / "rules")

# Every behaviour ID of CENSOR-MODELS.md. Embedded (not read at run time) because that catalogue lives outside
# the package; tests/test_profile.py compares this set with the catalogue when it is at hand.
BEHAVIOUR_IDS: frozenset[str] = frozenset(
    [f"T21-{i}" for i in range(1, 7)] + ["T21-E"]
    + [f"T22-{i}" for i in range(1, 6)] + ["T22-E"]
    + ["T25-1"]
    + [f"G-{i}" for i in range(1, 5)] + ["G-E"]
    + ["GE-1"]
    + [f"GF-{i}" for i in range(1, 4)]
    + [f"GQ-{i}" for i in range(1, 4)] + ["GQ-E"]
    + [f"GD-{i}" for i in range(1, 4)]
    + ["H-1", "H-2", "H-E"]
)

# `auto` defers to dpi.lists.detect_format when the list is loaded.
_LIST_FORMATS: tuple[str, ...] = (*LIST_FORMATS, "auto")
_DOMAIN_FORMATS = frozenset({"plain", "gfwlist", "v2fly"})  # formats that yield patterns only
_IP_FORMATS = frozenset({"ip"})  # formats that yield networks only


# ----------------------------------------------------------------------------------------------------------------
# Public types




class ProfileError(Exception):
    """Raised by `load_profile` with every issue found; `str()` prints one issue per line."""

    def __init__(self, issues: list[ProfileIssue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


# ----------------------------------------------------------------------------------------------------------------
# Public API


def load_profile(name_or_path: str | Path) -> Profile:
    """Load a bundled profile by name (`gfw`) or a profile file by path; raise `ProfileError` listing all issues.

    List files must exist but their contents are not read here: the engine parses them once, when it builds its
    matchers, and `check_profile` is the place to validate them.
    """
    try:
        result = _read_profile(name_or_path)
    except Exception as exc:  # a bug of ours must still not show the user a traceback
        raise ProfileError([_internal_issue(str(name_or_path), exc)]) from exc
    if result.issues or result.profile is None:
        raise ProfileError(result.issues or [_internal_issue(str(name_or_path))])
    return result.profile


def check_profile(path: str | Path) -> list[ProfileIssue]:
    """Every issue of a profile, its includes and the contents of the lists it declares; [] when it is fine.

    Never raises for bad input. When `dpi.lists` cannot be imported, list contents are not checked.
    """
    try:
        result = _read_profile(path)
        issues = list(result.issues)
        lists_module = _lists_module()
        if lists_module is not None:
            issues += _list_content_issues(result, lists_module)
        return _ordered(issues)
    except Exception as exc:  # a bug of ours must still not show the user a traceback
        return [_internal_issue(str(path), exc)]


def bundled_profiles() -> list[tuple[str, Path, str]]:
    """The profiles shipped in RULES_DIR as (name, path, summary), sorted by name.

    Only the `summary` is read (not the whole profile) so that one broken file does not hide the others.
    """
    found: list[tuple[str, Path, str]] = []
    for path in sorted(RULES_DIR.glob("*.yaml"), key=lambda p: p.stem):
        found.append((path.stem, path, _read_summary(path)))
    return found


# ----------------------------------------------------------------------------------------------------------------
# Inspection sections: keys are exactly the dataclass fields; types come from the annotations


_SECTIONS: dict[str, type] = {
    "flows": FlowTableConfig,
    "tcp": TcpInspection,
    "quic": QuicInspection,
    "dns": DnsInspection,
    "matching": MatchOptions,
}

# Bounds of section values, (lo, hi) with None = unbounded. Unlisted numbers are 0..2**31-1: the compiled core
# keeps them in C ints.
_BOUNDS: dict[str, tuple[float | None, float | None]] = {
    "flows.max_flows": (1, 2**31 - 1),
    "flows.max_buffer_bytes": (0, 2**40),
    "flows.idle_timeout": (0.001, None),
    "flows.udp_idle_timeout": (0.001, None),
    "quic.ports": (1, 65535),
    "quic.versions": (0, 0xFFFFFFFF),
    "quic.min_size": (0, 65535),
    "dns.ports": (1, 65535),
}
_DEFAULT_BOUNDS: tuple[float | None, float | None] = (0, 2**31 - 1)
_TCP_HEADER_LENGTHS: tuple[int, ...] = (0, *range(20, 61, 4))  # 0 = any (H-1 uses 20)


def _section(sink: _Sink, section: str, node: Node) -> dict[str, Any]:
    """An inspection section; its keys and their types are exactly those of the dataclass."""
    cls = _SECTIONS[section]
    hints = get_type_hints(cls, vars(config))
    defaults = vars(cls())
    out: dict[str, Any] = {}
    for key, key_node, value_node in _items(sink, node, section) or []:
        if key not in hints:
            _unknown_key(sink, key_node, key, section, [f.name for f in fields(cls)])
            continue
        value = _typed(sink, value_node, f"{section}.{key}", hints[key], defaults[key])
        if key == "tcp_header_exact" and value is not BAD and value not in _TCP_HEADER_LENGTHS:
            sink.add(value_node, "tcp.tcp_header_exact must be 0 (any) or a TCP header length",
                     "use 0, or a multiple of 4 from 20 to 60 (H-1: 20)")
            continue
        if value is not BAD:
            out[key] = value
    return out


def _typed(sink: _Sink, node: Node, what: str, tp: Any, default: Any) -> Any:
    """A section value of the annotated type `tp`; `default` (the field's) is the example in messages."""
    lo, hi = _BOUNDS.get(what, _DEFAULT_BOUNDS)
    example = f"{what.rsplit('.', 1)[-1]}: {default}"
    if tp is bool:
        return _bool(sink, node, what)
    if tp is int:
        return _int(sink, node, what, typing.cast(int | None, lo), typing.cast(int | None, hi), example=example)
    if tp is float:
        return _number(sink, node, what, lo, hi)
    if tp is str:
        return _text(sink, node, what)
    if get_origin(tp) is Literal:
        return _choice(sink, node, what, [str(a) for a in get_args(tp)])
    if get_origin(tp) is tuple and get_args(tp)[0] is int:
        return _ints(sink, node, what, int(lo or 0), int(hi if hi is not None else 2**31 - 1),
                     hex_text=what == "quic.versions")
    raise TypeError(f"dpi.profile cannot read a field of type {tp!r} ({what}): teach _typed about it")


# ----------------------------------------------------------------------------------------------------------------
# Per-file layer


@dataclass
class _ListDecl:
    """A declared list with where it came from, so that a list problem points at its declaration."""

    spec: ListSpec
    file: str
    line: int
    file_lines: tuple[int, ...] = ()  # YAML line of each entry of spec.files
    entry_lines: tuple[int, ...] = ()  # YAML line of each entry of spec.entries


@dataclass
class _ListRef:
    match_field: str  # the Match field, e.g. tls_sni
    key: str  # as written, e.g. tls.sni
    name: str  # the list named
    line: int


@dataclass
class _RuleDraft:
    name: str
    file: str
    line: int
    match: dict[str, Any]
    refs: list[_ListRef]
    inline: dict[str, _ListDecl]  # anonymous lists `<rule>:<key>` written in the match
    action: Action | None
    residual: Residual | None
    probability: float
    implements: tuple[str, ...]
    valid: bool  # False: an issue was reported in it and it must not be built


@dataclass
class _Layer:
    values: dict[str, Any] = field(default_factory=dict)  # top-level scalars and sequences, already typed
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    lists: dict[str, _ListDecl] = field(default_factory=dict)
    rules: list[_RuleDraft] = field(default_factory=list)


@dataclass
class _Include:
    path: Path
    line: int
    sink: _Sink


_TOP_KEYS: tuple[str, ...] = ("name", "summary", "year", "sources", "implements", "evasions", "include", "inside",
                              "triggers", "seed", "flows", "tcp", "quic", "dns", "matching", "lists", "rules")


def _parse_file(path: Path, out: list[ProfileIssue]) -> tuple[_Layer | None, list[_Include]]:
    sink = _Sink(str(path), out)
    root = _compose(sink, path)
    if root is None:
        return None, []
    items = _items(sink, root, "the profile")
    if items is None:
        return None, []
    layer = _Layer()
    includes: list[_Include] = []
    keys = {k for k, _, _ in items}
    if "name" not in keys:
        sink.add(1, "the profile has no `name`",
                 f"add `name: {path.stem}` at the top" + (" (bundled profiles are named after their file)"
                                                          if _is_bundled(path) else ""))
    for key, key_node, node in items:
        if key == "name":
            name = _text(sink, node, "name")
            if name is not BAD and _is_bundled(path) and name != path.stem:
                sink.add(node, f"bundled profile name '{name}' differs from its file name",
                         f"write `name: {path.stem}`")
            layer.values["name"] = name
        elif key in ("summary", "year"):
            layer.values[key] = _text(sink, node, key)
        elif key in ("sources", "evasions"):
            texts = _texts(sink, node, key)
            layer.values[key] = BAD if texts is BAD else tuple(t for t, _ in typing.cast(list, texts))
        elif key == "implements":
            layer.values[key] = _implements(sink, node, "implements")
        elif key == "include":
            includes = _includes(sink, node, path.parent)
        elif key == "inside":
            items_ = _seq(sink, node, "inside")
            nets = [_network(sink, n, "inside") for n in items_ or []]
            layer.values[key] = BAD if items_ is None or BAD in nets else tuple(nets)
        elif key == "triggers":
            layer.values[key] = _choice(sink, node, "triggers", ("outbound", "both"))
        elif key == "seed":
            is_null = isinstance(node, ScalarNode) and node.tag.endswith(":null")
            layer.values[key] = None if is_null else _int(sink, node, "seed", 0)
        elif key in _SECTIONS:
            layer.sections[key] = _section(sink, key, node)
        elif key == "lists":
            layer.lists = _lists(sink, node, path.parent)
        elif key == "rules":
            layer.rules = _rules(sink, node)
        else:
            owners = [name for name, cls in _SECTIONS.items() if key in {f.name for f in fields(cls)}]
            if owners:  # e.g. `reassembly: false` written at the top instead of under `tcp:`
                sink.add(key_node, f"'{key}' is not a top-level key", f"move it under `{owners[0]}:`")
            else:
                _unknown_key(sink, key_node, key, "the profile", _TOP_KEYS)
    layer.values = {k: v for k, v in layer.values.items() if v is not BAD}
    return layer, includes


def _compose(sink: _Sink, path: Path) -> Node | None:
    """The YAML node tree of a file, or None after reporting why there is none (unreadable, not YAML, empty)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        sink.add(1, "no such profile file", _missing_profile_fix(path))
        return None
    except OSError as exc:
        sink.add(1, f"cannot read the profile: {exc.strerror or exc}", "check the path and its permissions")
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        sink.add(data[:exc.start].count(b"\n") + 1, "the profile is not UTF-8 text", "save the file as UTF-8")
        return None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else text[: getattr(exc, "position", 0)].count("\n") + 1
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        context = getattr(exc, "context", None)
        opened = getattr(exc, "context_mark", None)
        message = f"YAML syntax error: {context + ': ' if context else ''}{problem}"
        sink.add(line, message, _yaml_fix(message, opened.line + 1 if opened is not None else line))
        return None
    if root is None:
        sink.add(1, "the profile is empty", "start it with `name: ...`, then the keys it needs (see rules/gfw.yaml)")
    return root


def _yaml_fix(problem: str, opened: int) -> str:
    """Turn PyYAML's terse complaint into what to type."""
    if "alias" in problem:
        return "quote values that start with * (e.g. '*t.co*'): YAML reads a leading * as an alias"
    if "'\\t'" in problem:
        return "indent with spaces, not tabs"
    if "mapping values are not allowed" in problem:
        return "quote a value that contains ': ', or check the indentation of this line"
    if "expected a single document" in problem:
        return "keep one profile per file: remove the extra `---`"
    if "flow sequence" in problem or "flow mapping" in problem:
        return f"close the bracket opened at line {opened} with ] or }}, and separate items with commas"
    if "expected <block end>" in problem:
        return "align keys of the same mapping at the same indentation"
    return "fix the YAML at this line (indentation, quoting, brackets)"


def _implements(sink: _Sink, node: Node, what: str) -> tuple[str, ...] | _Bad:
    texts = _texts(sink, node, what)
    if texts is BAD:
        return BAD
    ids: list[str] = []
    for text, item in typing.cast(list, texts):
        if text not in BEHAVIOUR_IDS:
            family = sorted(i for i in BEHAVIOUR_IDS if i.split("-")[0] == text.split("-")[0].upper())
            fix = (f"the {family[0].split('-')[0]} behaviours of CENSOR-MODELS.md are {_one_of(family)}" if family
                   else _did_you_mean(text, sorted(BEHAVIOUR_IDS),
                                      "use an ID from CENSOR-MODELS.md, e.g. G-1 or T21-4"))
            sink.add(item, f"unknown behaviour ID '{text}' in {what}", fix)
        else:
            ids.append(text)
    return tuple(ids)


def _is_bundled(path: Path) -> bool:
    try:
        return path.resolve().parent == RULES_DIR.resolve()
    except OSError:
        return False


def _bundled_names() -> list[str]:
    return sorted(p.stem for p in RULES_DIR.glob("*.yaml"))


def _missing_profile_fix(path: Path) -> str:
    names = _bundled_names()
    suggestion = _did_you_mean(path.stem, names, "")
    listing = f"bundled profiles: {_one_of(names)}" if names else f"no profiles found in {RULES_DIR}"
    return f"{suggestion} {listing}".strip() + "; `redweb profiles` lists them"


def _looks_like_path(text: str) -> bool:
    return "/" in text or os.sep in text or text.endswith((".yaml", ".yml"))


def _includes(sink: _Sink, node: Node, base_dir: Path) -> list[_Include]:
    texts = _texts(sink, node, "include")
    if texts is BAD:
        return []
    out: list[_Include] = []
    for text, item in typing.cast(list, texts):
        if _looks_like_path(text):
            path = Path(text) if Path(text).is_absolute() else base_dir / text
        else:
            path = RULES_DIR / f"{text}.yaml"
        if not path.is_file():
            sink.add(item, f"included profile '{text}' not found ({path})",
                     _did_you_mean(text, _bundled_names(), f"name a bundled profile ({_one_of(_bundled_names())}) "
                                   f"or a path relative to {base_dir}"))
            continue
        out.append(_Include(path, _line(item), sink))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Lists


_LIST_KEYS: tuple[str, ...] = ("format", "files", "entries", "default_form", "on_error")


def _format_from_extension(path: str) -> str:
    """A list file's format from its name: `.csv` is the registry dump; anything else is sniffed (`auto`)."""
    return "registry-csv" if path.lower().endswith(".csv") else "auto"


def _lists(sink: _Sink, node: Node, base_dir: Path) -> dict[str, _ListDecl]:
    out: dict[str, _ListDecl] = {}
    for name, key_node, value in _items(sink, node, "lists") or []:
        if ":" in name:
            sink.add(key_node, f"list name '{name}' contains ':'",
                     "rename it: `rule:key` names are kept for inline lists")
            continue
        out[name] = _list_decl(sink, name, value, base_dir, _line(key_node))
    return out


def _list_decl(sink: _Sink, name: str, node: Node, base_dir: Path, line: int) -> _ListDecl:
    """A list declaration: a file path (string form) or a mapping. The declaration is kept even when part of it
    is wrong (its issue is reported and the profile will not build), so rules naming it do not also complain
    that it is undeclared."""
    what = f"list '{name}'"
    if isinstance(node, ScalarNode) and not node.tag.endswith(":null"):
        path = _list_file(sink, node, base_dir, what)
        spec = ListSpec(name=name, format=_format_from_extension(node.value), files=() if path is None else (path,))
        return _ListDecl(spec, sink.file, line, file_lines=(_line(node),) if path else ())
    fmt = "auto"
    files: list[Path] = []
    file_lines: list[int] = []
    files_written = 0
    entries: list[str] = []
    entry_lines: list[int] = []
    options: dict[str, Any] = {}
    for key, key_node, value in _items(sink, node, what) or []:
        if key == "format":
            chosen = _choice(sink, value, f"the format of {what}", _LIST_FORMATS)
            fmt = chosen if isinstance(chosen, str) else fmt
        elif key == "files":
            for item in _seq(sink, value, f"the files of {what}") or []:
                files_written += 1
                path = _list_file(sink, item, base_dir, what)
                if path is not None:
                    files.append(path)
                    file_lines.append(_line(item))
        elif key == "entries":
            texts = _texts(sink, value, f"the entries of {what}")
            for text, item in [] if texts is BAD else typing.cast(list, texts):
                entries.append(text.strip())
                entry_lines.append(_line(item))
        elif key in ("default_form", "on_error"):
            choices = ("subdomains", "exact") if key == "default_form" else ("skip", "reject")
            chosen = _choice(sink, value, f"the {key} of {what}", choices)
            if isinstance(chosen, str):
                options[key] = chosen
        else:
            _unknown_key(sink, key_node, key, what, _LIST_KEYS)
    if isinstance(node, MappingNode) and not files_written and not entries:
        sink.add(line, f"{what} has neither files nor entries", "add `files: [path.txt]` or `entries: [example.com]`")
    # Inline entries are patterns unless told otherwise; files keep `auto` for dpi.lists.detect_format.
    spec = ListSpec(name=name, format="plain" if fmt == "auto" and not files_written else fmt, files=tuple(files),
                    entries=tuple(entries), **options)
    return _ListDecl(spec, sink.file, line, tuple(file_lines), tuple(entry_lines))


def _list_file(sink: _Sink, node: Node, base_dir: Path, what: str) -> Path | None:
    """A list file, relative to the YAML file that names it; it must exist (its contents are checked later)."""
    text = _text(sink, node, f"a file of {what}")
    if text is BAD:
        return None
    path = Path(typing.cast(str, text))
    path = path if path.is_absolute() else base_dir / path
    if not path.is_file():
        nearby = sorted(p.name for p in path.parent.glob("*") if p.is_file()) if path.parent.is_dir() else []
        sink.add(node, f"list file '{text}' of {what} not found ({path})",
                 _did_you_mean(path.name, nearby, f"create it, or correct the path (relative to {base_dir})"))
        return None
    return path.resolve()


def _check_entries(sink: _Sink, decl: _ListDecl, what: str) -> None:
    """Inline entries are part of the YAML, so they are checked on load, each at its own YAML line."""
    spec = decl.spec
    for text, line in zip(spec.entries, decl.entry_lines):
        if spec.format in _IP_FORMATS:
            _check_network_text(sink, text, line, what)
        else:
            _check_pattern_text(sink, text, line, spec.format, spec.default_form)


def _check_network_text(sink: _Sink, text: str, line: int, what: str) -> None:
    try:
        ipaddress.ip_network(text)
    except ValueError:
        try:
            fix = f"write the network address: {ipaddress.ip_network(text, strict=False)}"
        except ValueError:
            fix = "write an IPv4/IPv6 address or network, e.g. 10.0.0.0/8 or 2001:db8::/32"
        sink.add(line, f"'{text}' in {what} is not an address or CIDR", fix)


def _check_pattern_text(sink: _Sink, text: str, line: int, fmt: str, default_form: str) -> None:
    lists = _lists_module()
    if lists is None:
        return
    try:
        lists.parse_list_text(text, "plain" if fmt == "auto" else fmt, source=sink.file,
                              default_form=default_form, on_error="reject")
    except lists.ListError as exc:
        for issue in exc.issues:
            sink.add(line, str(issue.message), str(issue.fix or "correct the pattern"))
    except Exception as exc:
        sink.add(line, f"pattern '{text}' cannot be read: {exc}", "correct the pattern")


def _lists_module() -> ModuleType | None:
    """`dpi.lists` if it can be imported; without it, list contents are simply not checked."""
    try:
        from dpi import lists
    except Exception:
        return None
    return lists


def _list_content_issues(result: _Result, lists: ModuleType) -> list[ProfileIssue]:
    """Read every list file the way the engine will, so that `redweb check` finds what `redweb run` would trip on.

    Issues inside a list file point at that file's line; a file that cannot be read at all points at the YAML
    line that names it. Lines an `on_error: skip` list leaves out are the user's stated choice, not issues.
    """
    out: list[ProfileIssue] = []
    for name, decl in result.lists.items():
        spec = decl.spec
        for path, line in zip(spec.files, decl.file_lines):
            try:
                if name in result.path_only:  # http.path reads the raw lines as UTF-8 text
                    path.read_text(encoding="utf-8")
                else:
                    lists.load_list(path, spec.format, default_form=spec.default_form, on_error=spec.on_error)
            except lists.ListError as exc:
                for issue in exc.issues:
                    fix = issue.fix or "correct this line of the list"
                    if issue.line > 0:
                        out.append(ProfileIssue(issue.file or str(path), issue.line, issue.message, fix))
                    else:
                        out.append(ProfileIssue(decl.file, line, f"list '{name}' ({path}): {issue.message}", fix))
            except Exception as exc:
                out.append(ProfileIssue(decl.file, line, f"list '{name}': {path} cannot be read: {exc}",
                                        "check the file and the list's `format`"))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Rules


_RULE_KEYS: tuple[str, ...] = ("name", "implements", "match", "probability", "action", "residual")

# match key -> Match field
_MATCH_LIST_KEYS: dict[str, str] = {"tls.sni": "tls_sni", "http.host": "http_host", "http.path": "http_path",
                                    "quic.sni": "quic_sni", "dns.qname": "dns_qname", "ip": "ip"}
_MATCH_BOOL_KEYS: dict[str, str] = {"fet": "fet", "tls.esni": "tls_esni", "tls.ech": "tls_ech", "tls.any": "tls_any"}
_MATCH_CHOICE_KEYS: dict[str, tuple[str, ...]] = {"protocol": ("tcp", "udp"), "direction": ("outbound", "inbound")}
_MATCH_KEYS: tuple[str, ...] = (*_MATCH_LIST_KEYS, "quic.version", "port", *_MATCH_BOOL_KEYS, *_MATCH_CHOICE_KEYS)


def _rules(sink: _Sink, node: Node) -> list[_RuleDraft]:
    out: list[_RuleDraft] = []
    seen: dict[str, int] = {}
    for item in _seq(sink, node, "rules") or []:
        rule = _rule(sink, item)
        if rule is None:
            continue
        if rule.name in seen:
            sink.add(item, f"duplicate rule name '{rule.name}' (first at line {seen[rule.name]})",
                     "give each rule a unique name (a rule of an included profile is replaced by name on purpose)")
            continue
        seen[rule.name] = rule.line
        out.append(rule)
    return out


def _rule(sink: _Sink, node: Node) -> _RuleDraft | None:
    """One rule. A rule with a usable name is kept even when other parts are wrong (`valid` is then False), so
    that its list references are still checked and an include override still finds it: one pass, all issues."""
    items = _items(sink, node, "a rule")
    if items is None:
        return None
    by_key = {k: (kn, vn) for k, kn, vn in items}
    before = len(sink.out)
    name: Any = BAD
    if "name" in by_key:
        name = _text(sink, by_key["name"][1], "the rule name")
    else:
        sink.add(node, "a rule has no `name`", "add `name: ...` (unique in the profile; events report it)")
    label = f"rule '{name}'" if isinstance(name, str) else "the rule"
    for key, key_node, _ in items:
        if key not in _RULE_KEYS:
            _unknown_key(sink, key_node, key, label, _RULE_KEYS)
    match: dict[str, Any] = {}
    refs: list[_ListRef] = []
    inline: dict[str, _ListDecl] = {}
    match_node = by_key["match"][1] if "match" in by_key else None
    if match_node is None or _is_empty(match_node):
        sink.add(match_node or node, f"{label} has no match: it would fire on every connection",
                 "add a `match:` with at least one condition, e.g. `match: {tls.sni: LIST}`")
    else:
        match = _match(sink, match_node, name if isinstance(name, str) else "rule", label, refs, inline)
    action: Any = None
    if "action" in by_key:
        action = _action(sink, by_key["action"][1], label)
    else:
        sink.add(node, f"{label} has no action", f"add `action: TYPE`, one of {_one_of(ACTION_TYPES)}")
    residual = _residual(sink, by_key["residual"][1], label) if "residual" in by_key else None
    probability: Any = 1.0
    if "probability" in by_key:
        probability = _number(sink, by_key["probability"][1], "probability", 0.0, 1.0,
                              fix="write a fraction from 0 to 1, e.g. probability: 0.263 for 26.3 % (GF-2)")
    implements: Any = ()
    if "implements" in by_key:
        implements = _implements(sink, by_key["implements"][1], f"the implements of {label}")
    if not isinstance(name, str):
        return None
    return _RuleDraft(name, sink.file, _line(node), match, refs, inline, action, residual, probability, implements,
                      valid=len(sink.out) == before)


def _is_empty(node: Node) -> bool:
    return (isinstance(node, ScalarNode) and node.tag.endswith(":null")) or \
        (isinstance(node, MappingNode) and not node.value)


def _match(sink: _Sink, node: Node, rule: str, label: str, refs: list[_ListRef],
           inline: dict[str, _ListDecl]) -> dict[str, Any]:
    """Match conditions by Match field; list-valued keys name a declared list or hold an inline list, which
    becomes an anonymous list `<rule>:<key>`."""
    out: dict[str, Any] = {}
    for key, key_node, value in _items(sink, node, f"the match of {label}") or []:
        what = f"match.{key}"
        if key in _MATCH_LIST_KEYS:
            fld = _MATCH_LIST_KEYS[key]
            if isinstance(value, ScalarNode) and not value.tag.endswith(":null"):
                out[fld] = str(value.value)
                refs.append(_ListRef(fld, key, str(value.value), _line(value)))
                continue
            texts = _texts(sink, value, what)
            if texts is BAD:
                continue
            if not texts:
                sink.add(value, f"{what} of {label} is empty", "name a declared list, or give at least one entry")
                continue
            entries = [t.strip() for t, _ in typing.cast(list, texts)]
            lines = [_line(n) for _, n in typing.cast(list, texts)]
            fmt = "ip" if key == "ip" else "plain"
            list_name = f"{rule}:{key}"
            inline[list_name] = _ListDecl(ListSpec(name=list_name, format=fmt, entries=tuple(entries)),
                                          sink.file, _line(value), entry_lines=tuple(lines))
            out[fld] = list_name
        elif key in ("quic.version", "port"):
            values = (_ints(sink, value, what, 0, 0xFFFFFFFF, hex_text=True) if key == "quic.version"
                      else _ints(sink, value, what, 1, 65535))
            out["quic_version" if key == "quic.version" else "port"] = values
        elif key in _MATCH_BOOL_KEYS:
            out[_MATCH_BOOL_KEYS[key]] = _bool(sink, value, what)
        elif key in _MATCH_CHOICE_KEYS:
            out[key] = _choice(sink, value, what, _MATCH_CHOICE_KEYS[key])
        else:
            _unknown_key(sink, key_node, key, f"the match of {label}", _MATCH_KEYS)
    return out


# action type -> parameter as written in YAML -> Action field
_ACTION_PARAMS: dict[str, dict[str, str]] = {
    "accept": {},
    "drop": {},
    "blackhole": {"include_trigger": "include_trigger", "direction": "blackhole_direction"},
    "rst": {"to": "rst_to", "injector": "injector", "drop_trigger": "drop_trigger"},
    "dns-inject": {"mode": "dns_mode", "pool_a": "pool_a", "pool_aaaa": "pool_aaaa", "order": "pool_order",
                   "ttl": "dns_ttl", "injector": "injector"},
    "throttle": {"rate_kbps": "rate_bps", "rate_bps": "rate_bps", "burst_bytes": "burst_bytes"},
    "freeze": {"after_bytes": "after_bytes"},
}


def _action(sink: _Sink, node: Node, label: str) -> Action | None:
    """`rst` or `{type: rst, to: both, injector: gfw-type2}`. Parameters are checked against the type (they
    cannot be judged without one); whatever is wrong is reported and left at its default."""
    if isinstance(node, ScalarNode):
        kind = _action_type(sink, node, label)
        return None if kind is None else Action(type=kind)
    items = _items(sink, node, f"the action of {label}")
    if items is None:
        return None
    by_key = {k: (kn, vn) for k, kn, vn in items}
    if "type" not in by_key:
        sink.add(node, f"the action of {label} has no `type`", f"add `type: TYPE`, one of {_one_of(ACTION_TYPES)}")
        return None
    kind = _action_type(sink, by_key["type"][1], label)
    if kind is None:
        return None
    params = _ACTION_PARAMS[kind]
    if "rate_kbps" in by_key and "rate_bps" in by_key:
        sink.add(by_key["rate_bps"][0], f"the action of {label} gives both rate_kbps and rate_bps",
                 "keep one of them (rate_kbps: 140 is rate_bps: 140000)")
    changes: dict[str, Any] = {}
    for key, key_node, value in items:
        if key == "type":
            continue
        if key not in params:
            takes = f"{kind} takes {_one_of(params)}" if params else f"{kind} takes no parameters"
            owners = [t for t, p in _ACTION_PARAMS.items() if key in p]
            fix = (f"'{key}' is a parameter of {_one_of(owners)}; {takes}" if owners
                   else _did_you_mean(key, params, takes))
            sink.add(key_node, f"unknown parameter '{key}' for action type {kind} in {label}", fix)
            continue
        value_ = _action_param(sink, key, value, label)
        if value_ is not BAD:
            changes[params[key]] = value_
    return Action(type=kind, **changes)


def _action_type(sink: _Sink, node: Node, label: str) -> str | None:
    if isinstance(node, ScalarNode) and node.value in ACTION_TYPES:
        return str(node.value)
    written = f"'{node.value}'" if isinstance(node, ScalarNode) else _kind(node)
    sink.add(node, f"unknown action type {written} in {label}",
             _did_you_mean(str(getattr(node, "value", "")), ACTION_TYPES, f"use one of {_one_of(ACTION_TYPES)}"))
    return None


def _action_param(sink: _Sink, key: str, node: Node, label: str) -> Any:
    what = f"action.{key}"
    if key == "to":
        return _choice(sink, node, what, ("client", "server", "both"))
    if key == "injector":
        return _injector(sink, node, label)
    if key in ("drop_trigger", "include_trigger"):
        return _bool(sink, node, what)
    if key == "mode":
        return _choice(sink, node, what, ("on-path", "in-path"))
    if key == "direction":
        return _choice(sink, node, what, ("both", "client-to-server"))
    if key == "order":
        return _choice(sink, node, what, ("cycle", "random"))
    if key in ("pool_a", "pool_aaaa"):
        nodes = _seq(sink, node, what)
        addresses = [_address(sink, n, what, 4 if key == "pool_a" else 6) for n in nodes or []]
        return BAD if nodes is None or BAD in addresses else tuple(addresses)
    if key == "ttl":
        return _int(sink, node, what, 0, 2**31 - 1)
    if key == "rate_kbps":  # T21-4 is reported in kbit/s; the policer counts bits per second
        kbps = _number(sink, node, what, 0.001)
        return BAD if kbps is BAD else int(round(typing.cast(float, kbps) * 1000))
    return _int(sink, node, what, 1)  # rate_bps, burst_bytes, after_bytes


_INJECTOR_KEYS: tuple[str, ...] = ("preset", "name", "flags", "count", "ttl", "ip_id", "df", "window", "payload",
                                   "delay_ms")


def _injector(sink: _Sink, node: Node, label: str) -> Any:
    """A preset name (G-3, H-2 fingerprints) or a mapping; a mapping may start from `preset:` and override it."""
    presets = sorted(INJECTOR_PRESETS)
    if isinstance(node, ScalarNode):
        if node.value in INJECTOR_PRESETS:
            return INJECTOR_PRESETS[node.value]
        sink.add(node, f"unknown injector preset '{node.value}' in {label}",
                 _did_you_mean(node.value, presets, f"use one of {_one_of(presets)}")
                 + " (or spell one out as a mapping: flags, count, ttl, ip_id, df, window, payload, delay_ms)")
        return BAD
    items = _items(sink, node, "the injector")
    if items is None:
        return BAD
    base = Injector(name="custom")
    changes: dict[str, Any] = {}
    for key, key_node, value in items:
        what = f"injector.{key}"
        value_: Any
        if key == "preset":
            chosen = _choice(sink, value, what, presets)
            base = INJECTOR_PRESETS[chosen] if isinstance(chosen, str) else base
            continue
        if key == "name":
            value_ = _text(sink, value, what)
        elif key == "flags":
            value_ = _choice(sink, value, what, ("R", "RA"))
        elif key == "count":
            value_ = _int(sink, value, what, 1, 100)
        elif key == "ttl":
            value_ = _pair(sink, value, what, lambda n: _int(sink, n, what, 1, 255))
        elif key == "ip_id":
            value_ = _ip_id(sink, value, what)
        elif key == "df":
            value_ = _bool(sink, value, what)
        elif key == "window":
            value_ = _int(sink, value, what, 0, 65535)
        elif key == "payload":
            value_ = _payload(sink, value, what)
        elif key == "delay_ms":  # G-3: 11-445 ms
            pair = _pair(sink, value, what, lambda n: _number(sink, n, what, 0.0))
            value_ = BAD if pair is BAD else (pair[0] / 1000.0, pair[1] / 1000.0)
        else:
            _unknown_key(sink, key_node, key, "the injector", _INJECTOR_KEYS)
            continue
        if value_ is not BAD:
            changes["delay" if key == "delay_ms" else key] = value_
    return replace(base, **changes)


def _pair(sink: _Sink, node: Node, what: str, one: typing.Callable[[Node], Any]) -> Any:
    """A number or an inclusive [lo, hi] range."""
    if isinstance(node, ScalarNode):
        value = one(node)
        return BAD if value is BAD else (value, value)
    items = _seq(sink, node, what)
    if items is None:
        return BAD
    if len(items) != 2:
        sink.add(node, f"{what} must be a number or a [lo, hi] pair", f"write e.g. {what}: [39, 238]")
        return BAD
    lo, hi = one(items[0]), one(items[1])
    if BAD in (lo, hi):
        return BAD
    if lo > hi:
        sink.add(node, f"{what} range [{lo}, {hi}] is reversed", f"write [{hi}, {lo}]")
        return BAD
    return (lo, hi)


def _ip_id(sink: _Sink, node: Node, what: str) -> str | _Bad:
    text = _text(sink, node, what)
    if text is BAD:
        return BAD
    text = typing.cast(str, text).strip().lower()

    def number(token: str) -> int | None:
        try:
            value = int(token, 16) if token.startswith("0x") else int(token, 10)
        except ValueError:
            return None
        return value if 0 <= value <= 0xFFFF else None

    if text in ("random", "zero"):
        return text
    parts = text.split("-")
    values = [number(p.strip()) for p in parts]
    if len(parts) in (1, 2) and None not in values and values == sorted(values):  # type: ignore[type-var]
        return text
    sink.add(node, f"{what} '{text}' is not random, zero, a number or a range",
             "write random, zero, a value 0..65535 (decimal or 0x hex) or a range A-B, e.g. 0x9916-0x9933 (G-3)")
    return BAD


def _payload(sink: _Sink, node: Node, what: str) -> bytes | _Bad:
    """Hex bytes. The text as written is used, so an unquoted `0102...` keeps its leading zero (H-2)."""
    text = _text(sink, node, what)
    if text is BAD:
        return BAD
    text = typing.cast(str, text).strip()
    text = text[2:] if text.lower().startswith("0x") else text
    try:
        return bytes.fromhex(text.replace(":", " "))
    except ValueError:
        sink.add(node, f"{what} is not hex bytes", "write the bytes as hex, e.g. payload: '01020304050607080900' (H-2)")
        return BAD


_RESIDUAL_KEYS: tuple[str, ...] = ("key", "seconds", "action")


def _residual(sink: _Sink, node: Node, label: str) -> Residual | None:
    """Blocking that outlives the trigger (G-4, GE-1, GF-3, GQ-2); `residual: null` means none."""
    if isinstance(node, ScalarNode) and node.tag.endswith(":null"):
        return None
    items = _items(sink, node, f"the residual of {label}")
    if items is None:
        return None
    changes: dict[str, Any] = {}
    for key, key_node, value in items:
        what = f"residual.{key}"
        if key == "key":
            changes[key] = _choice(sink, value, what, ("3-tuple", "2-tuple", "server-ip"))
        elif key == "seconds":
            changes[key] = _number(sink, value, what, 0.0)
        elif key == "action":
            changes[key] = _choice(sink, value, what, ("rst", "drop"))
        else:
            _unknown_key(sink, key_node, key, f"the residual of {label}", _RESIDUAL_KEYS)
    return Residual(**{k: v for k, v in changes.items() if v is not BAD})


# ----------------------------------------------------------------------------------------------------------------
# Includes, merging and building


@dataclass
class _Result:
    profile: Profile | None
    issues: list[ProfileIssue]
    lists: dict[str, _ListDecl]  # every list of the merged profile, declared and inline, for content checks
    path_only: frozenset[str] = frozenset()  # lists only http.path uses: raw substrings, not patterns


def _resolve(name_or_path: str | Path) -> Path:
    """A bundled name (`gfw`) or a path. Path objects and anything that looks like a file name are paths."""
    if isinstance(name_or_path, Path):
        return name_or_path
    text = str(name_or_path)
    if _looks_like_path(text):
        return Path(text)
    bundled = RULES_DIR / f"{text}.yaml"
    if bundled.is_file() or not Path(text).is_file():
        return bundled
    return Path(text)


def _read_profile(name_or_path: str | Path) -> _Result:
    issues: list[ProfileIssue] = []
    path = _resolve(name_or_path)
    merged = _load_tree(path, issues, {}, [])
    if merged is None:
        return _Result(None, _ordered(issues), {})
    profile, lists, path_only = _build(merged, path, issues)
    return _Result(None if issues else profile, _ordered(issues), lists, path_only)


def _load_tree(path: Path, issues: list[ProfileIssue], cache: dict[Path, _Layer | None],
               stack: list[Path]) -> _Layer | None:
    """The layer of `path` with its includes merged under it; an include cycle is reported where it closes."""
    key = path.resolve()
    if key in cache:
        return cache[key]
    layer, includes = _parse_file(path, issues)
    if layer is None:
        cache[key] = None
        return None
    stack.append(key)
    merged = _Layer()
    for include in includes:
        target = include.path.resolve()
        if target in stack:
            loop = [p.name for p in stack[stack.index(target):]] + [target.name]
            include.sink.add(include.line, f"include cycle: {' -> '.join(loop)}",
                             "remove this include: a profile cannot include itself, directly or through others")
            continue
        child = _load_tree(include.path, issues, cache, stack)
        if child is not None:
            merged = _merge(merged, child)
    stack.pop()
    merged = _merge(merged, layer)
    cache[key] = merged
    return merged


def _merge(base: _Layer, top: _Layer) -> _Layer:
    """`top` overrides `base`: values by key, sections key by key, lists by name, rules by name in place."""
    sections = {name: {**base.sections.get(name, {}), **top.sections.get(name, {})}
                for name in {*base.sections, *top.sections}}
    rules = list(base.rules)
    position = {rule.name: i for i, rule in enumerate(rules)}
    for rule in top.rules:
        if rule.name in position:
            rules[position[rule.name]] = rule
        else:
            position[rule.name] = len(rules)
            rules.append(rule)
    return _Layer({**base.values, **top.values}, sections, {**base.lists, **top.lists}, rules)


def _build(layer: _Layer, path: Path, out: list[ProfileIssue]) -> tuple[Profile | None, dict[str, _ListDecl],
                                                                      frozenset[str]]:
    """Check what needs the whole merged profile and build the frozen dataclasses.

    Returns the profile (None when it cannot be built), every list (declared and inline) with its origin, and
    the names of the lists only `http.path` uses: those hold raw path substrings, not domain patterns.
    """
    all_lists = dict(layer.lists)
    used_by_path: set[str] = set()
    used_otherwise: set[str] = set()
    rules: list[Rule] = []
    for draft in layer.rules:
        rule_sink = _Sink(draft.file, out)
        for ref in draft.refs:
            _check_ref(rule_sink, draft.name, ref, layer.lists)
        for name, decl in draft.inline.items():
            if name in all_lists:
                rule_sink.add(decl.line, f"inline list '{name}' has the name of a declared list", "rename the rule")
            all_lists[name] = decl
        for fld in _MATCH_LIST_KEYS.values():
            if isinstance(draft.match.get(fld), str):
                (used_by_path if fld == "http_path" else used_otherwise).add(draft.match[fld])
        if draft.valid:
            rules.append(Rule(name=draft.name, match=Match(**draft.match), action=typing.cast(Action, draft.action),
                              residual=draft.residual, probability=draft.probability,
                              implements=draft.implements, line=draft.line))
    path_only = frozenset(used_by_path - used_otherwise)
    for name, decl in all_lists.items():
        if name not in path_only:
            _check_entries(_Sink(decl.file, out), decl, f"list '{name}'")
    values = layer.values
    if "name" not in values:
        return None, all_lists, path_only
    sections = {name: replace(cls(), **layer.sections.get(name, {})) for name, cls in _SECTIONS.items()}
    profile = Profile(
        name=values["name"],
        summary=values.get("summary", ""),
        year=values.get("year", ""),
        sources=values.get("sources", ()),
        implements=values.get("implements", ()),
        evasions=values.get("evasions", ()),
        inside=values.get("inside", ()),
        triggers=values.get("triggers", "outbound"),
        seed=values.get("seed"),
        lists={name: decl.spec for name, decl in all_lists.items()},
        rules=tuple(rules),
        path=path.resolve(),
        **sections,
    )
    return profile, all_lists, path_only


def _check_ref(sink: _Sink, rule: str, ref: _ListRef, lists: dict[str, _ListDecl]) -> None:
    """A list named in a match must be declared (in this file or an included one) and be of the right kind."""
    decl = lists.get(ref.name)
    if decl is None:
        names = sorted(lists)
        known = f"declared lists: {_one_of(names)}" if names else "no list is declared: add one under `lists:`"
        sink.add(ref.line, f"rule '{rule}': {ref.key} names list '{ref.name}', which is not declared",
                 f"{_did_you_mean(ref.name, names, '')} {known} (or write the patterns inline as a YAML list)".strip())
    elif ref.key == "ip" and decl.spec.format in _DOMAIN_FORMATS:
        sink.add(ref.line, f"rule '{rule}': ip names list '{ref.name}' of format {decl.spec.format}",
                 f"give list '{ref.name}' `format: ip`, or match its names with tls.sni / http.host")
    elif ref.key != "ip" and decl.spec.format in _IP_FORMATS:
        sink.add(ref.line, f"rule '{rule}': {ref.key} names list '{ref.name}', a list of networks (format ip)",
                 f"match it with `ip: {ref.name}`, or name a list of domain patterns")


def _ordered(issues: list[ProfileIssue]) -> list[ProfileIssue]:
    """Files in the order they were first reported, lines ascending within a file; duplicates dropped."""
    order: dict[str, int] = {}
    for issue in issues:
        order.setdefault(issue.file, len(order))
    unique = list(dict.fromkeys(issues))
    return sorted(unique, key=lambda i: (order[i.file], i.line))


def _internal_issue(file: str, exc: BaseException | None = None) -> ProfileIssue:
    detail = f": {type(exc).__name__}: {exc}" if exc is not None else ""
    return ProfileIssue(file, 1, f"internal error while reading the profile{detail}",
                        "this is a bug in redweb: please report it with the profile attached")


def _read_summary(path: Path) -> str:
    try:
        root = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except Exception:
        return f"(unreadable: run `redweb check {path}`)"
    if isinstance(root, MappingNode):
        for key, value in root.value:
            if isinstance(key, ScalarNode) and key.value == "summary" and isinstance(value, ScalarNode):
                return str(value.value)
    return ""
