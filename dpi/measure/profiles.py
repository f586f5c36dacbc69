"""Temporary profiles for measurements: a bundled profile included unchanged, with one thing overridden.

Why not edit the bundled files or build `Profile` objects in memory: the censor runs as its own process
(`redweb run --profile FILE` in the lab's censor namespace) and must load exactly what a user could write, and
`include:` is how users derive profiles. So every measurement variant is a small YAML file that names the bundled
profile and overrides lists (replaced whole, by name) or rules (replaced whole, by name, in place). The file is
kept next to the results, so the run can be repeated with `redweb lab --profile FILE`.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from dpi.profile import RULES_DIR, load_profile


def _profile_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or "/" in name_or_path:
        return p.resolve()
    return RULES_DIR / f"{name_or_path}.yaml"


def _include_ref(name_or_path: str) -> str:
    """What to write after `include:`: a bundled name stays a name, a file becomes an absolute path."""
    p = _profile_path(name_or_path)
    return name_or_path if p.parent == RULES_DIR.resolve() or p.parent == RULES_DIR else str(p)


def raw_rules(name_or_path: str, _seen: frozenset[Path] = frozenset()) -> list[dict[str, Any]]:
    """The rules of a profile as YAML data, includes merged the way the loader merges them (by name, in place)."""
    path = _profile_path(name_or_path)
    if path in _seen:
        return []
    data = yaml.safe_load(path.read_text()) or {}
    rules: list[dict[str, Any]] = []
    for inc in data.get("include") or []:
        ref = str(inc)
        if "/" in ref or ref.endswith((".yaml", ".yml")):
            ref = str((path.parent / ref).resolve()) if not Path(ref).is_absolute() else ref
        for r in raw_rules(ref, _seen | {path}):
            _put(rules, r)
    for r in data.get("rules") or []:
        if isinstance(r, dict):
            _put(rules, r)
    return rules


def _put(rules: list[dict[str, Any]], rule: dict[str, Any]) -> None:
    for i, r in enumerate(rules):
        if r.get("name") == rule.get("name"):
            rules[i] = rule
            return
    rules.append(rule)


def write_profile(path: Path, base: str, name: str, summary: str, *, lists: dict[str, Any] | None = None,
                  rules: Sequence[dict[str, Any]] = (), flows: dict[str, Any] | None = None,
                  comment: str = "") -> Path:
    """Write `path`: `include: [base]` plus the overrides; loads it once so a mistake fails here, not in the lab."""
    doc: dict[str, Any] = {"name": name, "summary": summary, "include": [_include_ref(base)]}
    if flows:
        doc["flows"] = flows
    if lists:
        doc["lists"] = lists
    if rules:
        doc["rules"] = list(rules)
    head = "".join(f"# {line}\n" for line in comment.splitlines()) if comment else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(head + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=110))
    load_profile(str(path))  # raises ProfileError with file:line if the variant is wrong
    return path


def with_residual_seconds(base: str, seconds: float, path: Path) -> Path:
    """`base` with every rule's residual window set to `seconds` (G-4, GE-1, GF-3, GQ-2): a 180 s window scaled
    down so a run takes seconds; everything else, key and action included, stays as published."""
    changed = []
    for rule in raw_rules(base):
        if isinstance(rule.get("residual"), dict):
            r = copy.deepcopy(rule)
            r["residual"]["seconds"] = float(seconds)
            changed.append(r)
    if not changed:
        raise ValueError(f"profile {base!r} has no rule with a residual to scale")
    label = f"{seconds:g}"
    return write_profile(path, base, f"{Path(base).stem}-residual-{label}s",
                         f"{base} with its residual windows set to {label} s (measurement variant)",
                         rules=changed,
                         comment=f"Measurement variant written by `redweb measure`: {base} unchanged except the "
                                 f"residual seconds ({label} s) of: {', '.join(r['name'] for r in changed)}.")


def with_idle_timeout(base: str, seconds: float, path: Path) -> Path:
    """`base` with its TCP idle timeout set to `seconds` (T21-6: ~600 s), so waiting it out takes seconds."""
    label = f"{seconds:g}"
    return write_profile(path, base, f"{Path(base).stem}-idle-{label}s",
                         f"{base} with its TCP idle timeout set to {label} s (measurement variant)",
                         flows={"idle_timeout": float(seconds)},
                         comment=f"Measurement variant written by `redweb measure`: {base} unchanged except "
                                 f"flows.idle_timeout ({label} s).")


def with_list(base: str, list_name: str, entries: Sequence[str], path: Path, *, fmt: str = "plain",
              name: str | None = None, summary: str = "", comment: str = "") -> Path:
    """`base` with list `list_name` replaced by `entries` (inline). The list must exist in `base`."""
    profile = load_profile(base)
    if list_name not in profile.lists:
        raise ValueError(f"profile {base!r} has no list {list_name!r} (it has: {', '.join(profile.lists)})")
    return write_profile(path, base, name or f"{Path(base).stem}-{list_name}",
                         summary or f"{base} with list {list_name} replaced (measurement variant)",
                         lists={list_name: {"format": fmt, "entries": list(entries)}}, comment=comment)
