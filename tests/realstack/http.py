"""curl's plaintext HTTP request."""
from __future__ import annotations

import functools
import shutil

from tests.realstack.capture import capture_first_flight, http_headers_complete


def curl_http_request(host: str, path: str = "/", *, headers: tuple[str, ...] = (), timeout: float = 10.0) -> bytes:
    """The request `curl http://HOST:PORT/PATH` sends (HOST resolved to a local listener on a random PORT).

    curl writes `Host: HOST:PORT` since the port is not 80; pass e.g. headers=("Host: other.example",) to
    replace it (curl then sends exactly that line).
    """
    return _curl_http_request(host, path, tuple(headers), timeout)


@functools.lru_cache(maxsize=None)
def _curl_http_request(host: str, path: str, headers: tuple[str, ...], timeout: float) -> bytes:
    curl = shutil.which("curl") or "curl"
    extra = [arg for header in headers for arg in ("-H", header)]
    return capture_first_flight(
        lambda port: [curl, "-s", "--max-time", str(int(timeout)), "--resolve", f"{host}:{port}:127.0.0.1", *extra,
                      f"http://{host}:{port}{path}"],
        http_headers_complete, timeout)
