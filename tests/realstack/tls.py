"""TLS ClientHellos from real stacks: Python's ssl (MemoryBIO), `openssl s_client` and curl."""
from __future__ import annotations

import functools
import shutil
import ssl
from collections.abc import Sequence

from tests.realstack.capture import capture_first_flight, tls_client_hello_complete

from dpi.strategies.tcpclient import client_hello

_TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def python_ssl_client_hello(
    server_name: str | None,
    alpn: Sequence[str] | None = None,
    *,
    tls_version: str | None = None,
) -> bytes:
    """The TLS records Python's ssl sends first, for SNI `server_name` (None: no SNI extension).

    `tls_version` "1.2" caps the handshake at TLS 1.2 (no supported_versions extension), "1.3" requires TLS 1.3;
    None offers both. The bytes are the record layer as written to the socket (a 0x16 record).
    """
    return _python_ssl_client_hello(server_name, tuple(alpn) if alpn is not None else None, tls_version)


@functools.lru_cache(maxsize=None)
def _python_ssl_client_hello(server_name: str | None, alpn: tuple[str, ...] | None, tls_version: str | None) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if tls_version is not None:
        ctx.minimum_version = ctx.maximum_version = _TLS_VERSIONS[tls_version]
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return client_hello(ctx, server_name)[3]


def openssl_client_hello(server_name: str, *, alpn: Sequence[str] | None = None,
                         tls_version: str | None = None, timeout: float = 10.0) -> bytes:
    """The first flight of `openssl s_client -servername NAME` (optionally -alpn, -tls1_2 / -tls1_3)."""
    return _openssl_client_hello(server_name, tuple(alpn) if alpn else None, tls_version, timeout)


@functools.lru_cache(maxsize=None)
def _openssl_client_hello(server_name: str, alpn: tuple[str, ...] | None, tls_version: str | None,
                          timeout: float) -> bytes:
    openssl = shutil.which("openssl") or "openssl"
    extra: list[str] = []
    if alpn:
        extra += ["-alpn", ",".join(alpn)]
    if tls_version is not None:
        extra.append({"1.2": "-tls1_2", "1.3": "-tls1_3"}[tls_version])
    return capture_first_flight(
        lambda port: [openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", server_name, *extra],
        tls_client_hello_complete, timeout)


@functools.lru_cache(maxsize=None)
def curl_client_hello(server_name: str, *, timeout: float = 10.0) -> bytes:
    """The first flight of `curl https://NAME:PORT/` (curl's own SNI and ALPN: h2, http/1.1)."""
    curl = shutil.which("curl") or "curl"
    return capture_first_flight(
        lambda port: [curl, "-sk", "--max-time", str(int(timeout)), "--resolve", f"{server_name}:{port}:127.0.0.1",
                      f"https://{server_name}:{port}/"],
        tls_client_hello_complete, timeout)
