"""In-host TCP programs for the fully-encrypted-traffic measurement (GF-1 .. GF-3): a sink and a client.

    python -m dpi.measure.fetclient sink --port 9000
    python -m dpi.measure.fetclient client --jobs jobs.json [--concurrency 32] [--reply-timeout 2]

GF-1 looks at the first data packet a client sends; GF-3 then drops every later packet. So each trial is one
plain TCP connection: connect, send one chosen payload (TCP_NODELAY, at most one MSS: it leaves as one segment),
wait for the sink's short reply. The reply is a "later packet": it arrives when the connection was left alone
and never when it was blocked. No TLS or HTTP on top on purpose: the payload bytes must be exactly the ones
chosen (payloads.py).

The sink answers `ok\\n` after the first chunk of every connection and reads until the client closes.

The client reads a JSON list of jobs {"id", "addr", "port", "payload" (hex)} and prints one JSON object per
line {"id", "outcome", "connect_ms", "reply_ms", "error"} where outcome is
    open        the reply came back: not blocked
    blocked     connected and sent, but no reply within --reply-timeout (GF-3: later packets dropped)
    no-connect  the handshake did not complete within --connect-timeout (a residual drop of the SYN, GF-3)
    reset       a RST (refused or reset after the payload)
    error       anything else (the text says what)
"""
from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
from typing import Any

# ------------------------------------------------------------------------------------------------- sink

async def _serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        first = await asyncio.wait_for(reader.read(65536), timeout=30)
        if first:
            writer.write(b"ok\n")
            await writer.drain()
            while await asyncio.wait_for(reader.read(65536), timeout=30):
                pass
    except (TimeoutError, OSError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def _sink(port: int) -> None:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", port))
    server = await asyncio.start_server(_serve_one, sock=sock, backlog=1024)
    print(f"ready port={port}", flush=True)
    async with server:
        await server.serve_forever()


# ----------------------------------------------------------------------------------------------- client

async def _trial(job: dict[str, Any], connect_timeout: float, reply_timeout: float) -> dict[str, Any]:
    out: dict[str, Any] = {"id": job["id"], "outcome": "error", "connect_ms": None, "reply_ms": None, "error": ""}
    payload = bytes.fromhex(job["payload"])
    t0 = time.monotonic()
    writer = None
    try:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(job["addr"], int(job["port"])), timeout=connect_timeout)
        except TimeoutError:
            out["outcome"] = "no-connect"
            return out
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t1 = time.monotonic()
        out["connect_ms"] = round((t1 - t0) * 1000, 3)
        writer.write(payload)
        await writer.drain()
        try:
            reply = await asyncio.wait_for(reader.read(64), timeout=reply_timeout)
        except TimeoutError:
            out["outcome"] = "blocked"
            return out
        if reply:
            out["outcome"] = "open"
            out["reply_ms"] = round((time.monotonic() - t1) * 1000, 3)
        else:
            out["outcome"], out["error"] = "error", "closed without a reply"
    except ConnectionRefusedError as e:
        out["outcome"], out["error"] = "reset", f"refused: {e}"
    except ConnectionResetError as e:
        out["outcome"], out["error"] = "reset", str(e)
    except OSError as e:
        out["outcome"], out["error"] = "error", f"{type(e).__name__}: {e}"
    finally:
        if writer is not None:
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), timeout=1)
            except (TimeoutError, OSError):
                pass
    return out


async def _client(jobs: list[dict[str, Any]], concurrency: int, connect_timeout: float,
                  reply_timeout: float) -> None:
    sem = asyncio.Semaphore(concurrency)

    async def one(job: dict[str, Any]) -> None:
        async with sem:
            res = await _trial(job, connect_timeout, reply_timeout)
        sys.stdout.write(json.dumps(res) + "\n")
        sys.stdout.flush()

    await asyncio.gather(*(one(j) for j in jobs))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dpi.measure.fetclient", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("sink")
    s.add_argument("--port", type=int, default=9000)
    c = sub.add_parser("client")
    c.add_argument("--jobs", required=True, help="JSON file: a list of {id, addr, port, payload (hex)}")
    c.add_argument("--concurrency", type=int, default=32)
    c.add_argument("--connect-timeout", type=float, default=2.0)
    c.add_argument("--reply-timeout", type=float, default=2.0)
    a = ap.parse_args(argv)
    try:
        if a.mode == "sink":
            asyncio.run(_sink(a.port))
            return 0
        with open(a.jobs) as f:
            jobs = json.load(f)
        asyncio.run(_client(jobs, max(1, a.concurrency), a.connect_timeout, a.reply_timeout))
    except KeyboardInterrupt:
        return 130
    except OSError as e:
        print(f"fetclient: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
