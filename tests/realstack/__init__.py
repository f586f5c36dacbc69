"""First flights produced by real protocol stacks, for tests across the project.

Each helper returns the exact bytes a real client puts on the wire first: a TLS ClientHello from Python's ssl
(OpenSSL via MemoryBIO), `openssl s_client` or curl; curl's HTTP request; a dnslib query; an aioquic Initial
datagram or bare ClientHello. `tests.realstack.craft` re-frames and hand-builds TLS for edge cases. Subprocess clients are pointed at a local TCP listener that records what arrives, so no network is
needed. Results are cached: the same arguments give the same bytes within one test run (the stacks randomise
keys and client randoms, so do not compare bytes across calls with different arguments).

    from tests.realstack import python_ssl_client_hello, curl_client_hello, dnslib_query
"""
from tests.realstack.dns import dnslib_query
from tests.realstack.http import curl_http_request
from tests.realstack.quic import aioquic_client_hello, aioquic_initial_datagram
from tests.realstack.tls import curl_client_hello, openssl_client_hello, python_ssl_client_hello

__all__ = [
    "aioquic_client_hello",
    "aioquic_initial_datagram",
    "curl_client_hello",
    "curl_http_request",
    "dnslib_query",
    "openssl_client_hello",
    "python_ssl_client_hello",
]
