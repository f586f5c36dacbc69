"""Blocklist loaders: the list formats users bring, turned into Patterns (names) and networks (addresses).

Formats (names as in `dpi.config.LIST_FORMATS`):

* `plain` — one pattern a line in `dpi.match` syntax, `#` comments (whole line, or after whitespace).
* `ip` — one address or CIDR a line: server addresses blocked by IP (T22-3).
* `gfwlist` — the AdBlock-style GFWList, base64-encoded as published (or already decoded).
* `v2fly` — v2fly/domain-list-community data files (`domain:`, `full:`, `keyword:`, `regexp:`, attributes).
* `registry-csv` — the Russian blocking registry dump (zapret-info `dump.csv`), often cp1251: names and addresses.

A malformed line becomes a ListIssue naming file:line and a fix. `on_error="reject"` raises ListError with every
issue of the file at once (so a user fixes them in one pass); `"skip"` keeps the good lines and returns the issues.
"""
from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from dpi.config import LIST_FORMATS
from dpi.match import Pattern, PatternError, parse_pattern

__all__ = [
    "ListError",
    "ListIssue",
    "LoadedList",
    "Network",
    "decode_bytes",
    "detect_format",
    "load_list",
    "parse_list_text",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_ON_ERROR: Final[tuple[str, ...]] = ("skip", "reject")
_DEFAULT_FORMS: Final[tuple[str, ...]] = ("subdomains", "exact")
# Comment after whitespace: `example.com   # why it is listed`.
_TRAILING_COMMENT: Final[re.Pattern[str]] = re.compile(r"\s#")
_V2FLY_PREFIX: Final[re.Pattern[str]] = re.compile(r"^(domain|full|keyword|regexp|regex|include):", re.MULTILINE)
_BASE64_BODY: Final[re.Pattern[str]] = re.compile(r"[A-Za-z0-9+/=\s]+")
_URL_SCHEME: Final[re.Pattern[str]] = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)
# A URL-matching regex in GFWList opens with the scheme; on a host name that part is simply the start.
_GFW_SCHEME_REGEX: Final[re.Pattern[str]] = re.compile(r"^\^(?:https\?|https|http)(?::|\\:)(?:\\/|/){2}")
_SNIFF_CHARS: Final[int] = 65536
_SYNTAX_CHARS: Final[str] = "=*./~"


@dataclass(frozen=True, slots=True)
class ListIssue:
    """One problem in a list file, located precisely enough to fix it."""

    file: str
    line: int
    message: str
    fix: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}"
        return f"{where}: {self.message} (fix: {self.fix})" if self.fix else f"{where}: {self.message}"


@dataclass(slots=True)
class LoadedList:
    """What a list file yields. `skipped` counts lines left out on purpose, by reason (e.g. GFWList whitelist)."""

    patterns: list[Pattern] = field(default_factory=list)
    networks: list[Network] = field(default_factory=list)
    issues: list[ListIssue] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    def _skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


class ListError(Exception):
    """A list could not be loaded; `issues` holds every problem found, and str() shows one per line."""

    def __init__(self, issues: list[ListIssue]) -> None:
        super().__init__("\n".join(str(issue) for issue in issues))
        self.issues = issues


def load_list(path: str | os.PathLike[str], format: str = "auto", *, default_form: str = "subdomains",
              on_error: str = "reject", case_sensitive: bool = False) -> LoadedList:
    """Read a list file. The bytes are decoded as UTF-8 (a BOM is dropped), or cp1251 when not valid UTF-8.

    Raises ListError when the file cannot be read, or (with on_error="reject") when any line is malformed.
    """
    _check_options(format, default_form, on_error)
    name = os.fspath(path)
    try:
        data = Path(name).read_bytes()
    except OSError as exc:
        raise ListError([ListIssue(name, 0, f"cannot read the list: {exc.strerror or exc}",
                                   "check the path (relative paths are relative to the profile file)")]) from None
    text = decode_bytes(data)
    return parse_list_text(text, format, source=name, default_form=default_form, on_error=on_error,
                           case_sensitive=case_sensitive)


def decode_bytes(data: bytes) -> str:
    """UTF-8 if it is valid UTF-8, else cp1251 (the registry dump's encoding), else Latin-1 (never fails)."""
    for encoding in ("utf-8-sig", "cp1251", "latin-1"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise AssertionError("latin-1 decodes any bytes")  # pragma: no cover


def parse_list_text(text: str, format: str, *, source: str = "<inline>", default_form: str = "subdomains",
                    on_error: str = "reject", case_sensitive: bool = False) -> LoadedList:
    """Parse a list held in memory; `source` names it in issues and in each Pattern's `source` ("file:line")."""
    _check_options(format, default_form, on_error)
    if text.startswith("\ufeff"):
        text = text[1:]
    if format == "auto":
        format = _detect_text(text[:_SNIFF_CHARS])
    result = LoadedList()
    if format == "plain":
        _parse_plain(text, source, default_form, case_sensitive, result)
    elif format == "ip":
        _parse_ip(text, source, result)
    elif format == "gfwlist":
        _parse_gfwlist(text, source, case_sensitive, result)
    elif format == "v2fly":
        _parse_v2fly(text, source, case_sensitive, result)
    else:
        _parse_registry(text, source, default_form, case_sensitive, result)
    if result.issues and on_error == "reject":
        raise ListError(result.issues)
    return result


def _check_options(format: str, default_form: str, on_error: str) -> None:
    formats = (*LIST_FORMATS, "auto")
    if format not in formats:
        raise ValueError(f"unknown list format {format!r}; one of: {', '.join(formats)}")
    if default_form not in _DEFAULT_FORMS:
        raise ValueError(f"default_form must be one of {_DEFAULT_FORMS}, not {default_form!r}")
    if on_error not in _ON_ERROR:
        raise ValueError(f"on_error must be one of {_ON_ERROR}, not {on_error!r}")


# --- format detection ---------------------------------------------------------------------------------------


def detect_format(path_or_text: str | bytes | os.PathLike[str]) -> str:
    """Guess a list's format from its content (only the first 64 KiB are looked at).

    A `Path` (or a one-line string naming an existing file) is read; any other string is the list itself.
    """
    text: str
    if isinstance(path_or_text, os.PathLike) or (
            isinstance(path_or_text, str) and "\n" not in path_or_text and _is_file(path_or_text)):
        try:
            with open(path_or_text, "rb") as fh:
                text = decode_bytes(fh.read(_SNIFF_CHARS))
        except OSError:
            return "plain"
    elif isinstance(path_or_text, (bytes, bytearray)):
        text = decode_bytes(bytes(path_or_text[:_SNIFF_CHARS]))
    else:
        text = str(path_or_text)[:_SNIFF_CHARS]
    return _detect_text(text.lstrip("\ufeff"))


def _detect_text(text: str) -> str:
    lines = [line.strip() for line in text.split("\n")]
    content = [line for line in lines if line and not line.startswith(("#", "!"))]
    if not content:
        return "plain"
    if content[0].lower().startswith("updated:") or _looks_like_registry(content):
        return "registry-csv"
    if "[AutoProxy" in text or _gfwlist_base64_head(text):
        return "gfwlist"
    if _V2FLY_PREFIX.search(text):
        return "v2fly"
    sample = content[:200]
    if sum(_is_network(line) for line in sample) * 5 >= len(sample) * 4:  # mostly addresses: a few typos
        return "ip"
    if any(line.startswith(("||", "@@", "|http")) for line in sample):
        return "gfwlist"
    return "plain"


def _is_file(text: str) -> bool:
    try:
        return len(text) < 4096 and os.path.isfile(text)
    except (OSError, ValueError):
        return False


def _looks_like_registry(content: list[str]) -> bool:
    rows = content[:50]
    return all(line.count(";") >= 5 for line in rows)


def _is_network(text: str) -> bool:
    try:
        ipaddress.ip_network(_strip_comment(text), strict=False)
    except ValueError:
        return False
    return True


def _lines(text: str) -> enumerate[str]:
    """(number, line) as an editor counts them: only a newline ends a line. str.splitlines would also split on
    form feeds, NEL and Unicode separators, and shift every reported line number after one of them."""
    return enumerate(text.split("\n"), 1)


def _strip_comment(line: str) -> str:
    """`#` starts a comment at the start of a line or after whitespace (a regex may hold a bare '#')."""
    if line.startswith("#"):
        return ""
    found = _TRAILING_COMMENT.search(line)
    return (line[:found.start()] if found else line).strip()


# --- plain ----------------------------------------------------------------------------------------------------


def _parse_plain(text: str, source: str, default_form: str, case_sensitive: bool, out: LoadedList) -> None:
    patterns = out.patterns
    for number, raw in _lines(text):
        line = raw.strip()
        if not line or line[0] == "#":
            continue
        if "#" in line:
            line = _strip_comment(line)
            if not line:
                continue
        try:
            patterns.append(parse_pattern(line, default_form=default_form, source=f"{source}:{number}",
                                          case_sensitive=case_sensitive))
        except PatternError as exc:
            out.issues.append(ListIssue(source, number, exc.message, exc.fix))


# --- ip -------------------------------------------------------------------------------------------------------


def _parse_network(text: str) -> Network:
    """An address or CIDR; raises PatternError with a fix (host bits set, ranges, garbage)."""
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            if "-" in text:
                raise PatternError(f"address range {text!r} is not supported", "write it as CIDR blocks") from None
            raise PatternError(f"bad address or CIDR {text!r}",
                               "write an IPv4/IPv6 address or a CIDR such as 192.0.2.0/24") from None
        raise PatternError(f"CIDR {text!r} has host bits set", f"write {loose}") from None


def _parse_ip(text: str, source: str, out: LoadedList) -> None:
    for number, raw in _lines(text):
        line = _strip_comment(raw.strip())
        if not line:
            continue
        try:
            out.networks.append(_parse_network(line))
        except PatternError as exc:
            out.issues.append(ListIssue(source, number, exc.message, exc.fix))


# --- gfwlist --------------------------------------------------------------------------------------------------


def _gfwlist_base64_head(text: str) -> bool:
    """Whether `text` starts like a base64-encoded GFWList (decodes only the head: sniffing may cut the body)."""
    head = "".join(text[:8192].split())
    if len(head) < 16 or _BASE64_BODY.fullmatch(head) is None:
        return False
    head = head[:len(head) - len(head) % 4]
    try:
        decoded = base64.b64decode(head, validate=True).decode("utf-8", errors="ignore")
    except (binascii.Error, ValueError):
        return False
    return "[AutoProxy" in decoded


def _decode_gfwlist_base64(text: str) -> str | None:
    """The decoded GFWList if `text` is its base64 form, else None."""
    body = text.strip()
    if not body or len(body) < 16 or _BASE64_BODY.fullmatch(body) is None:
        return None
    compact = "".join(body.split())
    compact += "=" * (-len(compact) % 4)
    try:
        decoded = base64.b64decode(compact, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    return decoded if "[AutoProxy" in decoded[:4096] else None


def _parse_gfwlist(text: str, source: str, case_sensitive: bool, out: LoadedList) -> None:
    decoded = text if "[AutoProxy" in text[:4096] else _decode_gfwlist_base64(text)
    if decoded is None:
        if any(line.strip().startswith(("||", "@@", "|http", "!")) for line in text.splitlines()[:200]):
            decoded = text  # decoded list without the header: still readable
        else:
            out.issues.append(ListIssue(source, 1, "not a GFWList: neither base64 of '[AutoProxy ...]' text nor "
                                        "AdBlock-style lines", "give the gfwlist.txt as published, or set format"))
            return
    where = source if decoded is text else f"{source} (base64-decoded)"
    for number, raw in _lines(decoded):
        line = raw.strip()
        if not line or line[0] == "!" or line.startswith("[AutoProxy") or line.startswith("[Adblock"):
            continue
        if line.startswith("@@"):
            out._skip("whitelist")  # exceptions to the list: a censor's blocklist has no use for them
            continue
        try:
            pattern = _gfwlist_rule(line, f"{where}:{number}", case_sensitive)
        except PatternError as exc:
            out.issues.append(ListIssue(where, number, exc.message, exc.fix))
            continue
        out.patterns.append(pattern)


def _gfwlist_rule(line: str, source: str, case_sensitive: bool) -> Pattern:
    """One AdBlock-style rule reduced to what a name-matching censor can see: the host part."""
    if line.startswith("/"):
        if len(line) < 2 or not line.endswith("/"):
            raise PatternError(f"unbalanced regex {line!r}", "close the regex with '/'")
        body = _GFW_SCHEME_REGEX.sub("^", line[1:-1], count=1)
        return parse_pattern(f"/{body}/", source=source, case_sensitive=case_sensitive)
    if line.startswith("||"):
        anchor, rest = "label", line[2:]
    elif line.startswith("|"):
        anchor, rest = "start", line[1:]
    elif line.startswith("."):
        anchor, rest = "label", line[1:]
    else:
        anchor, rest = "none", line
    host = _host_part(rest)
    if not host:
        raise PatternError(f"no host name in rule {line!r}", "this rule matches URL paths only; remove it")
    if "*" in host:
        return _wildcard_host(line, host, anchor, source, case_sensitive)
    if anchor == "none":
        return parse_pattern(f"*{host}*", source=source, case_sensitive=case_sensitive)
    return _domain_pattern(host, "subdomains" if anchor == "label" else "exact", source, case_sensitive)


def _domain_pattern(name: str, form: str, source: str, case_sensitive: bool) -> Pattern:
    """A bare domain name from a format that has its own syntax: our pattern prefixes are not allowed in it."""
    if name[:1] in _SYNTAX_CHARS or name[-1:] == "*":
        raise PatternError(f"{name!r} is not a domain name", "write the name alone, e.g. example.com")
    return parse_pattern(f"={name}" if form == "exact" else name, default_form="subdomains", source=source,
                         case_sensitive=case_sensitive)


def _host_part(rest: str) -> str:
    rest = _URL_SCHEME.sub("", rest, count=1)
    end = len(rest)
    for stop in "/^?#$%|":
        found = rest.find(stop)
        if 0 <= found < end:
            end = found
    host = rest[:end]
    if host.startswith("["):  # [IPv6]:port
        close = host.find("]")
        return host[1:close] if close > 0 else host
    if host.count(":") == 1:
        host = host.split(":", 1)[0]  # drop :port
    return host


def _wildcard_host(line: str, host: str, anchor: str, source: str, case_sensitive: bool) -> Pattern:
    """A host with `*` in it: a fast form when one says the same, else the equivalent regex (`.*` per `*`)."""
    if anchor != "none" and host.count("*") == 1:
        if host.startswith("*.") and len(host) > 2:  # any subdomain of the rest
            return parse_pattern("." + host[2:], source=source, case_sensitive=case_sensitive)
        if anchor == "label" and host.endswith("*") and host[:1] not in _SYNTAX_CHARS:  # `.google.*`
            return parse_pattern(host, source=source, case_sensitive=case_sensitive)
    inner = ".*".join(re.escape(part.lower() if not case_sensitive else part) for part in host.split("*"))
    left = {"label": r"(?:^|\.)", "start": "^", "none": ""}[anchor]
    right = "" if host.endswith("*") or anchor == "none" else "$"
    try:
        return parse_pattern(f"/{left}{inner}{right}/", source=source, case_sensitive=case_sensitive)
    except PatternError as exc:
        raise PatternError(f"cannot read rule {line!r}: {exc.message}", exc.fix) from None


# --- v2fly ----------------------------------------------------------------------------------------------------

_V2FLY_KINDS: Final[tuple[str, ...]] = ("domain", "full", "keyword", "regexp", "regex")


def _parse_v2fly(text: str, source: str, case_sensitive: bool, out: LoadedList) -> None:
    for number, raw in _lines(text):
        line = raw.split("#", 1)[0].strip()  # `#` starts a comment anywhere (domain-list-community syntax)
        if not line:
            continue
        # Attributes (`@ads`, `@!cn`) and affiliations (`&other`) only select sub-lists: drop them.
        tokens = [token for token in line.split() if not token.startswith(("@", "&"))]
        if len(tokens) != 1:
            out.issues.append(ListIssue(source, number, f"expected one rule per line, got {line!r}",
                                        "one rule, then optional @attributes"))
            continue
        rule = tokens[0]
        kind, sep, value = rule.partition(":")
        if not sep:
            kind, value = "domain", rule
        if kind == "include":
            out._skip("include")
            out.issues.append(ListIssue(source, number, f"cannot resolve {rule!r} outside domain-list-community",
                                        f"load the file {value!r} as another list, or remove the line"))
            continue
        if kind not in _V2FLY_KINDS:
            out.issues.append(ListIssue(source, number, f"unknown rule type {kind!r} in {rule!r}",
                                        "use domain:, full:, keyword:, regexp: or include:"))
            continue
        if not value:
            out.issues.append(ListIssue(source, number, f"empty {kind} rule", "write a value after the colon"))
            continue
        where = f"{source}:{number}"
        try:
            if kind == "domain" or kind == "full":
                pattern = _domain_pattern(value, "subdomains" if kind == "domain" else "exact", where, case_sensitive)
            elif kind == "keyword":
                pattern = parse_pattern(f"*{value}*", source=where, case_sensitive=case_sensitive)
            else:
                pattern = parse_pattern(f"~{value}", source=where, case_sensitive=case_sensitive)
            out.patterns.append(pattern)
        except PatternError as exc:
            out.issues.append(ListIssue(source, number, exc.message, exc.fix))


# --- registry-csv ---------------------------------------------------------------------------------------------


def _parse_registry(text: str, source: str, default_form: str, case_sensitive: bool, out: LoadedList) -> None:
    """`ip;domain;url;organisation;number;date` rows after an `Updated: ...` header.

    Only the first two fields matter to a censor of names and addresses; the rest (free text that may even hold
    stray `;` and quotes) is not parsed, which is why this is a split and not a CSV reader.
    """
    for number, raw in _lines(text):
        line = raw.strip()
        if not line:
            continue
        if number == 1 and line.lower().startswith("updated"):
            continue
        fields = line.split(";", 2)
        if len(fields) < 2:
            out.issues.append(ListIssue(source, number, "row has no ';' separated domain field",
                                        "rows are ip;domain;url;organisation;number;date"))
            continue
        ips, domain = fields[0].strip(), fields[1].strip()
        for address in (part.strip() for part in ips.split("|")):
            if not address:
                continue
            try:
                out.networks.append(_parse_network(address))
            except PatternError as exc:
                out.issues.append(ListIssue(source, number, exc.message, exc.fix))
        if not domain:
            continue
        # `*.example.com` is the registry's mask entry: the name and every subdomain.
        mask = domain.startswith("*.")
        try:
            out.patterns.append(_domain_pattern(domain[2:] if mask else domain,
                                                "subdomains" if mask else default_form,
                                                f"{source}:{number}", case_sensitive))
        except PatternError as exc:
            out.issues.append(ListIssue(source, number, exc.message, exc.fix))
