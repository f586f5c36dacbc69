"""Offline classifier: replay a capture through the censor and report one decision per flow.

It runs the very same `Censor` as the live NFQUEUE censor (same core, same rules, timestamps from the capture),
so what `redweb classify` prints is what `redweb run` would have done to that traffic, IP fragments included.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TextIO

from dpi.config import Profile
from dpi.defrag import reassemble_capture
from dpi.engine import Censor, FlowRecord
from dpi.pcap import read_header


def classify_bytes(data: bytes, profile: Profile, *, seed: int | None = None, name: str = "capture") -> list[FlowRecord]:
    """One record per flow of the capture `data`.

    A profile that reassembles IP fragments (`flows.fragments: reassemble`, as the kernel does in front of the
    live censor) gets the capture with its fragments reassembled (dpi.defrag); that costs a second pass, taken
    only when the first one met fragments.
    """
    def replay(capture: bytes) -> Censor:
        hdr = read_header(capture, name)
        censor = Censor(profile, seed=seed, record=True)
        censor.core.process_pcap(capture, hdr.linktype, hdr.offset, hdr.nanosecond, hdr.swapped)
        return censor

    censor = replay(data)
    if profile.flows.fragments == "reassemble" and censor.core.n_fragments:
        censor = replay(reassemble_capture(data, name))
    assert censor.records is not None
    return sorted(censor.records.values(), key=lambda r: (r.first_ts, r.flow_id))


def classify_file(path: str | Path, profile: Profile, *, seed: int | None = None) -> list[FlowRecord]:
    return classify_bytes(Path(path).read_bytes(), profile, seed=seed, name=str(path))


def record_json(rec: FlowRecord) -> dict:
    d = asdict(rec)
    d["client"] = f"{rec.client[0]}:{rec.client[1]}" if ":" not in rec.client[0] else f"[{rec.client[0]}]:{rec.client[1]}"
    d["server"] = f"{rec.server[0]}:{rec.server[1]}" if ":" not in rec.server[0] else f"[{rec.server[0]}]:{rec.server[1]}"
    return d


def _describe(obs: dict) -> str:
    kind = obs.get("kind", "-")
    parts = [kind]
    for key, label in (("sni", "sni"), ("http_host", "host"), ("dns_qname", "qname"), ("quic_sni", "quic-sni")):
        if key in obs:
            v = obs[key]
            parts.append(f"{label}={','.join(v) if isinstance(v, list) else v}")
    if "quic_version" in obs:
        parts.append(f"version={obs['quic_version']:#x}")
    if "note" in obs:
        parts.append(f"({obs['note']})")
    return " ".join(parts)


def write_text(records: list[FlowRecord], out: TextIO) -> None:
    rows = [("PROTO", "CLIENT", "SERVER", "DIRECTION", "SEEN", "RULE", "ACTION")]
    for r in records:
        d = record_json(r)
        rows.append((r.proto, d["client"], d["server"], r.direction, _describe(r.observation),
                     r.rule or "-", r.action))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() + "\n")
    censored = sum(1 for r in records if r.rule)
    out.write(f"{len(records)} flows, {censored} censored\n")


def write_json(records: list[FlowRecord], out: TextIO) -> None:
    for r in records:
        out.write(json.dumps(record_json(r), sort_keys=True) + "\n")
