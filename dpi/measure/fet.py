"""GF-1 .. GF-3 in the lab: the share of fully encrypted connections blocked, and what is never blocked.

Trials (one TCP connection each, `fetclient`), in a shuffled order:
    random   N random first payloads to the listed server: GF-2 blocks ~26.3 % of the non-exempt ones
    exempt   each exemption kind of payloads.EXEMPT_KINDS (Ex1 .. Ex5), K times each, to the listed server:
             never blocked (GF-1)
    control  random first payloads to a server NOT on the profile's list: never blocked (GF-2, "only towards
             some server IP ranges")
Then the residual check (GF-3): a blocked connection's port, connected again with an exempt payload, stays
blocked (the 3-tuple is); a fresh port of the same server is open.

Every trial uses a server port of its own (a range redirected to one sink on the server host), so no trial runs
into another's 180 s residual: the ports are what keeps the trials independent, as separate servers did in the
paper. The bundled gfw-fet profile blocks only towards its listed ranges (documentation ranges); the run uses a
temporary profile that includes it and lists the lab server's address instead (`fet-servers`).
"""
from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dpi.lab import Lab, LabConfig, LabError, build_topology
from dpi.measure import payloads, profiles, stats
from dpi.measure.goodput import run_ticking
from dpi.measure.hostprocs import python_module, running
from dpi.measure.progress import Progress
from dpi.measure.results import Claim, Measurement

BASE_PROFILE = "gfw-fet"
SERVERS_LIST = "fet-servers"  # rules/gfw-fet.yaml: the GF-2 server ranges
PUBLISHED_P = 0.263  # GF-2
SINK_PORT = 9000
PORT_BASE = 20000
LISTED, UNLISTED = "example.org", "example.com"  # the lab names standing for a listed VPS and an unlisted host


def planned_addresses(topo: str, names: Sequence[str], clients: int = 1) -> dict[str, str]:
    """The IPv4 address each lab name will get (the topology assigns them in order), known before the lab starts:
    the temporary profile has to list the server before the censor is started with it."""
    params: dict[str, Any] = {"names": len(names)}
    if topo == "isp":
        params["clients"] = clients
    layout = build_topology(topo, **params).layout
    return {n: a[0] for n, a in zip(names, layout.name_addrs)}


def plan_trials(n_random: int, exempt_each: int, n_control: int, rng: random.Random,
                listed: str, unlisted: str) -> list[dict[str, Any]]:
    """The trials, shuffled, each with its own port; payload bytes as hex (what fetclient reads)."""
    trials: list[dict[str, Any]] = []
    for i in range(n_random):
        data = payloads.random_payload(rng, payloads.random_length(rng))
        trials.append({"group": "random", "kind": "random", "addr": listed, "payload": data})
    for kind in payloads.EXEMPT_KINDS:
        for _ in range(exempt_each):
            data = payloads.exempt_payload(kind, rng, payloads.random_length(rng, payloads.MIN_LENGTH, 600))
            trials.append({"group": "exempt", "kind": kind, "addr": listed, "payload": data})
    for _ in range(n_control):
        data = payloads.random_payload(rng, payloads.random_length(rng))
        trials.append({"group": "control", "kind": "random", "addr": unlisted, "payload": data})
    rng.shuffle(trials)
    for i, t in enumerate(trials):
        t["id"] = i
        t["port"] = PORT_BASE + i
        t["length"] = len(t["payload"])
        held = payloads.exemptions(t["payload"])
        t["exemptions"] = list(held)
    return trials


def _run_client(lab: Lab, client: str, trials: Sequence[dict[str, Any]], path: Path, concurrency: int,
                reply_timeout: float, bar: Progress | None) -> dict[int, dict[str, Any]]:
    path.write_text(json.dumps([{"id": t["id"], "addr": t["addr"], "port": t["port"], "payload": t["payload"].hex()}
                                for t in trials]))
    argv = python_module("dpi.measure.fetclient", "client", "--jobs", path, "--concurrency", concurrency,
                         "--reply-timeout", reply_timeout, "--connect-timeout", reply_timeout)
    rounds = max(1.0, len(trials) / max(1, concurrency)) * 0.3 + reply_timeout
    r = run_ticking(lambda: lab.run(client, argv, timeout=60 + len(trials) * reply_timeout / max(1, concurrency)
                                    * 4), rounds, bar)
    out: dict[int, dict[str, Any]] = {}
    for line in r.stdout.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and "id" in doc:
            out[int(doc["id"])] = doc
    if len(out) < len(trials):
        raise LabError(f"FET client returned {len(out)} of {len(trials)} results ({r.status()}): "
                       f"{(r.stderr.strip().splitlines() or ['-'])[-1]}")
    return out


def measure_fet(out: Path, *, n: int = 1000, exempt_each: int = 20, control: int | None = None,
                seed: int = 1, censor_seed: int | None = 1, concurrency: int = 32, reply_timeout: float = 2.0,
                topo: str = "isp", progress: bool = True,
                say: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> Measurement:
    """Run the FET trials through a lab running gfw-fet (its server list pointed at the lab's listed server)."""
    if n < 1 or exempt_each < 0:
        raise ValueError("need --n >= 1 and --exempt-each >= 0")
    control = max(1, n // 10) if control is None else control
    out.mkdir(parents=True, exist_ok=True)
    names = (LISTED, UNLISTED)
    addrs = planned_addresses(topo, names)
    prof = profiles.with_list(BASE_PROFILE, SERVERS_LIST, [f"{addrs[LISTED]}/32"], out / "profile-fet.yaml",
                              fmt="ip", name="gfw-fet-lab",
                              summary=f"gfw-fet with the lab server {addrs[LISTED]} as the GF-2 server range",
                              comment="Measurement variant written by `redweb measure fet`: gfw-fet unchanged except "
                                      f"its server ranges (GF-2), which list the lab's {LISTED} address only.")
    rng = random.Random(seed)
    trials = plan_trials(n, exempt_each, control, rng, addrs[LISTED], addrs[UNLISTED])
    m = Measurement("fet", config={"profile": BASE_PROFILE, "run_profile": str(prof), "n_random": n,
                                   "exempt_each": exempt_each, "n_control": control, "seed": seed,
                                   "censor_seed": censor_seed, "concurrency": concurrency,
                                   "reply_timeout": reply_timeout, "topo": topo,
                                   "listed_server": addrs[LISTED], "unlisted_server": addrs[UNLISTED],
                                   "published_p": PUBLISHED_P})
    censor_args = ("--seed", str(censor_seed)) if censor_seed is not None else ()
    cfg = LabConfig(topo=topo, profile=str(prof), names=names, clients=1, workdir=out / "lab",
                    censor_args=censor_args)
    with Lab(cfg) as lab:
        if lab.addr(LISTED) != addrs[LISTED]:
            raise LabError(f"the lab gave {LISTED} {lab.addr(LISTED)}, not the planned {addrs[LISTED]}")
        client, server = lab.layout.clients[0], lab.layout.web
        last_port = PORT_BASE + len(trials) + 10
        nat = ["iptables", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", f"{PORT_BASE}:{last_port}",
               "-j", "REDIRECT", "--to-ports", str(SINK_PORT)]
        r = lab.run(server, nat, timeout=20)
        if r.rc != 0:
            raise LabError(f"cannot redirect the trial ports on {server}: {r.stderr.strip()}")
        say(f"lab up: {topo}, censor gfw-fet (server list: {addrs[LISTED]}); {len(trials)} connections "
            f"({n} random, {exempt_each} x {len(payloads.EXEMPT_KINDS)} exempt, {control} to an unlisted server)")
        try:
            with running(lab, server, python_module("dpi.measure.fetclient", "sink", "--port", SINK_PORT),
                         lab.workdir / "fet-sink.log"):
                bar = Progress(max(1, int(len(trials) / max(1, concurrency) * 0.3 + reply_timeout)), "fet",
                               enabled=progress)
                results = _run_client(lab, client, trials, lab.workdir / "fet-jobs.json", concurrency,
                                      reply_timeout, bar)
                bar.close()
                check = _residual_check(trials, results, last_port)
                if check:
                    results.update(_run_client(lab, client, check, lab.workdir / "fet-residual-jobs.json", 4,
                                               reply_timeout, None))
                    trials = [*trials, *check]
        finally:
            lab.run(server, ["iptables", "-t", "nat", "-D", *nat[4:]], timeout=20)
    for t in trials:
        res = results[t["id"]]
        m.records.append({"id": t["id"], "group": t["group"], "kind": t["kind"], "server": t["addr"],
                          "port": t["port"], "length": t["length"], "exemptions": "+".join(t["exemptions"]) or "-",
                          "fully_encrypted": not t["exemptions"], "outcome": res.get("outcome"),
                          "connect_ms": res.get("connect_ms"), "reply_ms": res.get("reply_ms"),
                          "error": res.get("error", ""), "payload_head": t["payload"][:16].hex()})
    summarise(m)
    m.finish()
    return m


def _residual_check(trials: Sequence[dict[str, Any]], results: dict[int, dict[str, Any]],
                    last_port: int) -> list[dict[str, Any]]:
    """GF-3: the port of the first blocked random trial again (an exempt payload: only the residual can block
    it), and a port never used (open)."""
    blocked = next((t for t in sorted(trials, key=lambda t: t["id"]) if t["group"] == "random"
                    and results.get(t["id"], {}).get("outcome") == "blocked"), None)
    if blocked is None:
        return []
    rng = random.Random(0)
    base = len(trials)
    out = []
    for i, (kind, port) in enumerate((("residual-same-port", blocked["port"]), ("residual-fresh-port", last_port))):
        data = payloads.exempt_payload("ex5-tls-prefix", rng, 200)
        out.append({"id": base + i, "group": "residual-check", "kind": kind, "addr": blocked["addr"], "port": port,
                    "payload": data, "length": len(data), "exemptions": list(payloads.exemptions(data))})
    return out


def _group(m: Measurement, label: str, group: str, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    decided = [r for r in rows if r["outcome"] in ("open", "blocked")]
    k = sum(1 for r in decided if r["outcome"] == "blocked")
    p = stats.wilson(k, len(decided))
    return {"label": label, "group": group, "n": len(decided), "blocked": k, "blocked_share": p.value if p.n else 0.0,
            "ci_low": p.low, "ci_high": p.high, "undecided": len(rows) - len(decided)}


def summarise(m: Measurement) -> None:
    rec = m.records
    groups = [_group(m, "random, fully encrypted (GF-2)", "random",
                     [r for r in rec if r["group"] == "random" and r["fully_encrypted"]])]
    lucky = [r for r in rec if r["group"] == "random" and not r["fully_encrypted"]]
    if lucky:
        groups.append(_group(m, "random that happened to be exempt", "exempt", lucky))
    for kind, (ex, _b) in payloads.EXEMPT_KINDS.items():
        rows = [r for r in rec if r["group"] == "exempt" and r["kind"] == kind]
        if rows:
            groups.append(_group(m, f"{ex}: {kind}", "exempt", rows))
    groups.append(_group(m, "random to an unlisted server", "control", [r for r in rec if r["group"] == "control"]))
    m.summary["groups"] = groups
    m.summary["outcomes"] = {o: sum(1 for r in rec if r["outcome"] == o) for o in sorted({r["outcome"] for r in rec})}
    checks = {r["kind"]: r["outcome"] for r in rec if r["group"] == "residual-check"}
    m.summary["residual_check"] = checks


def fet_claims(m: Measurement) -> list[Claim]:
    groups = m.summary.get("groups", [])
    main = next((g for g in groups if g["group"] == "random"), None)
    exempt = [g for g in groups if g["group"] == "exempt" and g["label"].startswith("Ex")]
    control = next((g for g in groups if g["group"] == "control"), None)
    claims: list[Claim] = []
    if main and main["n"]:
        p = stats.wilson(main["blocked"], main["n"])
        claims.append(Claim("GF-2", "share of fully encrypted connections blocked", f"~{PUBLISHED_P * 100:.1f} %",
                            f"{p.text()}", p.contains(PUBLISHED_P)))
    ex_n = sum(g["n"] for g in exempt)
    ex_k = sum(g["blocked"] for g in exempt)
    claims.append(Claim("GF-1", "payloads meeting an exemption (Ex1-Ex5) are never blocked",
                        "0 blocked", f"{ex_k}/{ex_n} blocked over {len(exempt)} kinds",
                        ex_n > 0 and ex_k == 0 and all(g["undecided"] == 0 for g in exempt)))
    if control:
        claims.append(Claim("GF-2", "only towards some server ranges: an unlisted server is never blocked",
                            "0 blocked", f"{control['blocked']}/{control['n']} blocked",
                            control["n"] > 0 and control["blocked"] == 0))
    chk = m.summary.get("residual_check", {})
    if chk:
        same, fresh = chk.get("residual-same-port"), chk.get("residual-fresh-port")
        claims.append(Claim("GF-3", "after a block, the 3-tuple stays blocked; other ports of the server work",
                            "same port blocked, other port open", f"same port: {same}; fresh port: {fresh}",
                            same in ("blocked", "no-connect") and fresh == "open"))
    return claims
