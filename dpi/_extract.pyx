# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Protocol extractors: what a censor reads out of a first flight.

Pure functions over bytes for the rare packets that carry a TLS ClientHello, an HTTP request, a DNS query or a
QUIC long header, plus the fully-encrypted-traffic features of GF-1. The per-packet hot path lives in `_core`;
these run only once a flow's first flight is at hand, so they may build Python objects -- but only at the end,
after a C-level pass has walked and bounds-checked the bytes.

Why the care: every length field in a first flight is attacker-controlled (evasion tools lie on purpose), and
the module is compiled with boundscheck=False, so every read below is guarded by hand. No parser raises on bad
bytes; each returns a status:

    OK          parsed
    NEED_MORE   a valid prefix: more bytes of the same stream could complete it
    NOT_THIS    does not look like this protocol
    MALFORMED   looks like it, but a length field lies or a structure is truncated/violated
    FRAGMENTED  TLS only: the ClientHello continues in another TLS record and record reassembly is off (G-E)

Inputs are contiguous bytes-like objects (bytes, bytearray, memoryview of bytes); anything else is a caller's
bug and raises TypeError. Names and values are kept exactly as sent (no lowercasing, trailing dots kept): normalisation is the matcher's
job, because censors differ there (T21-E: TSPU-2021 keeps the trailing dot).
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_DecodeLatin1
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset

# ---------------------------------------------------------------------------------------------------------------
# Status codes

cdef enum:
    S_OK = 0
    S_NEED_MORE = 1
    S_NOT_THIS = 2
    S_MALFORMED = 3
    S_FRAGMENTED = 4

OK = S_OK
NEED_MORE = S_NEED_MORE
NOT_THIS = S_NOT_THIS
MALFORMED = S_MALFORMED
FRAGMENTED = S_FRAGMENTED

STATUS_NAMES = {S_OK: "OK", S_NEED_MORE: "NEED_MORE", S_NOT_THIS: "NOT_THIS", S_MALFORMED: "MALFORMED",
                S_FRAGMENTED: "FRAGMENTED"}

cdef enum:
    # TLSCiphertext may carry 2^14 + 2048 bytes; a record that claims more is a lie, not a prefix of anything.
    MAX_RECORD = 18432
    # The largest ClientHello body the grammar allows: version 2, random 32, session_id 1+32, cipher_suites
    # 2+65534, compression 1+255, extensions 2+65535. A 24-bit length beyond it cannot be completed by more bytes.
    MAX_CLIENT_HELLO = 131396
    MAX_DNS_HOPS = 16
    QUIC_V1 = 0x00000001
    QUIC_V2 = 0x6b3343cf

EXT_SERVER_NAME = 0x0000
EXT_ALPN = 0x0010
EXT_SUPPORTED_VERSIONS = 0x002b
EXT_ESNI = 0xffce  # GE-1: encrypted_server_name (draft ESNI), blocked by the GFW in 2020
EXT_ECH = 0xfe0d   # encrypted_client_hello
QUIC_VERSION_1 = QUIC_V1
QUIC_VERSION_2 = QUIC_V2


cdef str _status_name(int status):
    return STATUS_NAMES.get(status, str(status))


cdef inline unsigned int _u16(const unsigned char* p) noexcept nogil:
    return (<unsigned int>p[0] << 8) | p[1]


cdef inline unsigned int _u24(const unsigned char* p) noexcept nogil:
    return (<unsigned int>p[0] << 16) | (<unsigned int>p[1] << 8) | p[2]


cdef inline unsigned int _u32(const unsigned char* p) noexcept nogil:
    return (<unsigned int>p[0] << 24) | (<unsigned int>p[1] << 16) | (<unsigned int>p[2] << 8) | p[3]


cdef inline str _latin1(const unsigned char* p, Py_ssize_t n):
    return PyUnicode_DecodeLatin1(<const char*>p, n, NULL)


cdef inline bytes _bytes(const unsigned char* p, Py_ssize_t n):
    return PyBytes_FromStringAndSize(<const char*>p, n)


cdef inline const unsigned char* _ptr(const unsigned char[::1] view) noexcept:
    """Start of a buffer, or NULL for an empty one (never dereferenced then: every read is length-guarded)."""
    if view.shape[0] == 0:
        return NULL
    return &view[0]


# ---------------------------------------------------------------------------------------------------------------
# TLS ClientHello

cdef class ClientHello:
    """A TLS ClientHello as a censor sees it, with the record-layer facts evasions play with (T21-2, T21-3, G-E)."""

    cdef readonly int status
    cdef readonly int records_before
    cdef readonly int record_version
    cdef readonly int record_length
    cdef readonly long handshake_length
    cdef readonly int record_count
    cdef readonly int legacy_version
    cdef readonly tuple sni
    cdef readonly tuple alpn
    cdef readonly tuple supported_versions
    cdef readonly tuple extensions
    cdef readonly bint has_esni
    cdef readonly bint has_ech
    cdef readonly Py_ssize_t end

    def __init__(self):
        _init_client_hello(self)

    def __repr__(self):
        return ("ClientHello(status=%s, sni=%r, alpn=%r, supported_versions=%s, records_before=%d, "
                "record_version=0x%04x, record_length=%d, handshake_length=%d, record_count=%d, "
                "legacy_version=0x%04x, extensions=%d, has_esni=%s, has_ech=%s, end=%d)" % (
                    _status_name(self.status), self.sni, self.alpn,
                    "(" + ", ".join("0x%04x" % v for v in self.supported_versions) + ")",
                    self.records_before, self.record_version, self.record_length, self.handshake_length,
                    self.record_count, self.legacy_version, len(self.extensions), self.has_esni,
                    self.has_ech, self.end))


cdef inline ClientHello _init_client_hello(ClientHello r):
    r.sni = ()
    r.alpn = ()
    r.supported_versions = ()
    r.extensions = ()
    return r


cdef inline ClientHello _new_client_hello():
    # Defaults set here rather than in __cinit__, which would stop Cython's automatic pickling.
    return _init_client_hello(ClientHello.__new__(ClientHello))


cdef struct _Body:
    int legacy_version
    Py_ssize_t ext_off     # first extension (after the 2-byte block length); -1: no (valid) extensions block
    bint has_esni
    bint has_ech


cdef int _check_server_name(const unsigned char* d, Py_ssize_t n) noexcept nogil:
    """RFC 6066 ServerNameList: one host_name, non-empty; every inner length must fit exactly."""
    cdef Py_ssize_t q = 2, name_len
    cdef int names = 0, empty = 0
    if n < 2 or <Py_ssize_t>_u16(d) != n - 2 or n == 2:
        return S_MALFORMED  # zero-length extension, oversized/undersized list, or empty list
    while q < n:
        if n - q < 3:
            return S_MALFORMED
        name_len = _u16(d + q + 1)
        if d[q] == 0:
            names += 1
            if name_len == 0:
                empty = 1
        q += 3
        if name_len > n - q:
            return S_MALFORMED
        q += name_len
    if names > 1 or empty:
        return S_MALFORMED  # "MUST NOT contain more than one name of the same name_type"
    return S_OK


cdef int _check_alpn(const unsigned char* d, Py_ssize_t n) noexcept nogil:
    """RFC 7301 ProtocolNameList<2..2^16-1> of ProtocolName<1..2^8-1>."""
    cdef Py_ssize_t q = 2, l
    if n < 2 or <Py_ssize_t>_u16(d) != n - 2 or n == 2:
        return S_MALFORMED
    while q < n:
        l = d[q]
        q += 1
        if l == 0 or l > n - q:
            return S_MALFORMED
        q += l
    return S_OK


cdef int _check_supported_versions(const unsigned char* d, Py_ssize_t n) noexcept nogil:
    """RFC 8446 4.2.1 (ClientHello form): ProtocolVersion versions<2..254>."""
    if n < 1 or d[0] != n - 1 or d[0] < 2 or (d[0] & 1):
        return S_MALFORMED
    return S_OK


cdef int _parse_ch_body(const unsigned char* b, Py_ssize_t n, _Body* out) noexcept nogil:
    """Validate a ClientHello body (after the 4-byte handshake header): every length must fit exactly."""
    cdef Py_ssize_t pos, l
    cdef unsigned int t
    cdef unsigned char seen[8192]  # one bit per extension type: duplicates are a violation (RFC 8446 4.2)
    cdef int status = S_OK
    out.legacy_version = 0
    out.ext_off = -1
    out.has_esni = 0
    out.has_ech = 0
    if n < 2:
        return S_MALFORMED
    out.legacy_version = _u16(b)
    pos = 34  # legacy_version + random
    if n - pos < 1:
        return S_MALFORMED
    l = b[pos]
    pos += 1
    if l > 32 or n - pos < l:
        return S_MALFORMED
    pos += l
    if n - pos < 2:
        return S_MALFORMED
    l = _u16(b + pos)
    pos += 2
    if l < 2 or (l & 1) or n - pos < l:
        return S_MALFORMED
    pos += l
    if n - pos < 1:
        return S_MALFORMED
    l = b[pos]
    pos += 1
    if l < 1 or n - pos < l:
        return S_MALFORMED
    pos += l
    if pos == n:
        return S_OK  # no extensions block: legal before TLS 1.3
    if n - pos < 2:
        return S_MALFORMED
    l = _u16(b + pos)
    pos += 2
    if l != n - pos:
        return S_MALFORMED  # oversized block, or bytes after it
    out.ext_off = pos
    memset(seen, 0, sizeof(seen))
    while pos < n:
        if n - pos < 4:
            return S_MALFORMED
        t = _u16(b + pos)
        l = _u16(b + pos + 2)
        pos += 4
        if l > n - pos:
            return S_MALFORMED  # oversized extension
        if seen[t >> 3] & (1 << (t & 7)):
            status = S_MALFORMED
        seen[t >> 3] |= <unsigned char>(1 << (t & 7))
        if t == 0x0000:
            if _check_server_name(b + pos, l) != S_OK:
                status = S_MALFORMED
        elif t == 0x0010:
            if _check_alpn(b + pos, l) != S_OK:
                status = S_MALFORMED
        elif t == 0x002b:
            if _check_supported_versions(b + pos, l) != S_OK:
                status = S_MALFORMED
        elif t == 0xffce:
            out.has_esni = 1
        elif t == 0xfe0d:
            out.has_ech = 1
        pos += l
    return status


cdef void _fill_extensions(ClientHello r, const unsigned char* b, Py_ssize_t n, Py_ssize_t pos):
    """Build the Python-visible lists, walking the extensions as far as their structure holds.

    Semantic violations (several names, an empty name) keep their names: the status already says MALFORMED,
    and a censor that wants to match on them can.
    """
    cdef list exts = [], sni = [], alpn = [], versions = []
    cdef unsigned int t
    cdef Py_ssize_t l, q, e, nl
    cdef const unsigned char* d
    while n - pos >= 4:
        t = _u16(b + pos)
        l = _u16(b + pos + 2)
        pos += 4
        if l > n - pos:
            break
        exts.append(t)
        d = b + pos
        if t == 0x0000 and l >= 2:
            e = min(<Py_ssize_t>_u16(d) + 2, l)
            q = 2
            while e - q >= 3:
                nl = _u16(d + q + 1)
                if nl > e - q - 3:
                    break
                if d[q] == 0:
                    sni.append(_latin1(d + q + 3, nl))
                q += 3 + nl
        elif t == 0x0010 and l >= 2:
            e = min(<Py_ssize_t>_u16(d) + 2, l)
            q = 2
            while q < e:
                nl = d[q]
                if nl > e - q - 1:
                    break
                alpn.append(_latin1(d + q + 1, nl))
                q += 1 + nl
        elif t == 0x002b and l >= 1:
            e = min(<Py_ssize_t>d[0] + 1, l)
            q = 1
            while e - q >= 2:
                versions.append(<int>_u16(d + q))
                q += 2
        pos += l
    r.extensions = tuple(exts)
    r.sni = tuple(sni)
    r.alpn = tuple(alpn)
    r.supported_versions = tuple(versions)


cdef void _parse_body_into(ClientHello r, const unsigned char* b, Py_ssize_t n):
    cdef _Body body
    cdef int status
    with nogil:
        status = _parse_ch_body(b, n, &body)
    r.status = status
    r.legacy_version = body.legacy_version
    r.has_esni = body.has_esni
    r.has_ech = body.has_ech
    if body.ext_off >= 0:
        _fill_extensions(r, b, n, body.ext_off)


cdef inline bint _is_record_type(unsigned char t) noexcept nogil:
    return 0x14 <= t <= 0x17


cdef struct _Walk:
    int status
    long handshake_length   # -1 while the 4-byte handshake header has not been seen
    int record_count        # records seen that carry part of the ClientHello
    Py_ssize_t end


cdef void _walk_handshake(const unsigned char* p, Py_ssize_t n, Py_ssize_t pos, _Walk* w) noexcept nogil:
    """Follow the ClientHello through consecutive handshake records starting at `pos` (a record header).

    Reads the 4-byte handshake header even when it straddles records, and stops at the record that completes the
    message. Later records must be complete, well-formed handshake records: RFC 8446 5.1 forbids interleaving
    another content type inside a handshake message, so anything else is MALFORMED.
    """
    cdef unsigned char hdr[4]
    cdef int got = 0
    cdef long need = -1, total = 0
    cdef Py_ssize_t rl, avail, i
    w.handshake_length = -1
    w.record_count = 0
    w.end = 0
    while True:
        avail = n - pos
        if avail < 5:
            if (avail >= 1 and p[pos] != 0x16) or (avail >= 2 and p[pos + 1] != 0x03):
                w.status = S_MALFORMED
            else:
                w.status = S_NEED_MORE
            return
        if p[pos] != 0x16 or p[pos + 1] != 0x03:
            w.status = S_MALFORMED
            return
        rl = _u16(p + pos + 3)
        if rl == 0 or rl > MAX_RECORD:
            w.status = S_MALFORMED  # empty handshake records are forbidden (RFC 8446 5.1)
            return
        w.record_count += 1
        i = 0
        while got < 4 and i < rl and 5 + i < avail:
            hdr[got] = p[pos + 5 + i]
            got += 1
            i += 1
        if got == 4 and need < 0:
            if hdr[0] != 0x01:
                w.status = S_MALFORMED
                return
            w.handshake_length = _u24(hdr + 1)
            if w.handshake_length > MAX_CLIENT_HELLO:
                w.status = S_MALFORMED
                return
            need = 4 + w.handshake_length
        if avail - 5 < rl:
            w.status = S_NEED_MORE  # record body incomplete
            return
        if need >= 0 and total + rl >= need:
            w.end = pos + 5 + (need - total)
            w.status = S_OK
            return
        total += rl
        pos += 5 + rl


cdef void _copy_handshake(const unsigned char* p, Py_ssize_t pos, long need, unsigned char* out) noexcept nogil:
    """Concatenate the handshake payloads of the records walked by _walk_handshake (already validated)."""
    cdef long total = 0
    cdef Py_ssize_t rl, take
    while total < need:
        rl = _u16(p + pos + 3)
        take = rl if rl < need - total else need - total
        memcpy(out + total, p + pos + 5, take)
        total += take
        pos += 5 + rl


def parse_tls_client_hello(data, bint reassemble_records=False, bint skip_leading_records=False):
    """Parse the ClientHello at the start of one TCP direction's first flight (stream offset 0).

    `reassemble_records`: a ClientHello spanning several TLS records is put back together (G-1 says the GFW does
    not do this, hence FRAGMENTED by default). `skip_leading_records`: complete records of types 0x14-0x17 before
    the ClientHello are skipped and counted; without it they hide the ClientHello (T21-E, T22-E) but are still
    counted in `records_before` when a handshake record follows (T21-3 needs to know "another record came first").

    FRAGMENTED is returned as soon as the first record shows the message cannot fit in it, even before that
    record is complete: no further bytes could make it parse without record reassembly.
    """
    cdef const unsigned char[::1] view = data
    cdef const unsigned char* p = _ptr(view)
    cdef Py_ssize_t n = view.shape[0]
    cdef Py_ssize_t pos = 0, avail, rl
    cdef int k = 0
    cdef unsigned char t
    cdef bint ch_start
    cdef _Walk w
    cdef unsigned char* buf
    cdef ClientHello r = _new_client_hello()

    # Leading records of other types (or handshake records that are not a ClientHello).
    while True:
        avail = n - pos
        if avail == 0:
            r.records_before = k if skip_leading_records else 0
            r.status = S_NEED_MORE if (k == 0 or skip_leading_records) else S_NOT_THIS
            return r
        t = p[pos]
        if not _is_record_type(t) or (avail >= 2 and p[pos + 1] != 0x03):
            r.records_before = k if skip_leading_records else 0
            r.status = S_NOT_THIS
            return r
        rl = _u16(p + pos + 3) if avail >= 5 else -1
        ch_start = t == 0x16 and rl != 0 and (avail < 6 or p[pos + 5] == 0x01)
        if ch_start:
            break
        if k == 0 and t == 0x16 and not skip_leading_records:
            r.status = S_NOT_THIS  # a handshake message, but not a ClientHello
            return r
        if avail < 5 or rl > MAX_RECORD or avail - 5 < rl:
            # an incomplete (or impossible) leading record
            r.records_before = k if skip_leading_records else 0
            if skip_leading_records and rl <= MAX_RECORD:
                r.status = S_NEED_MORE
            else:
                r.status = S_NOT_THIS
            return r
        k += 1
        pos += 5 + rl

    r.records_before = k
    if k > 0 and not skip_leading_records:
        r.status = S_NOT_THIS  # T21-3: "another TLS record" came first; the ClientHello is hidden
        return r

    if avail < 5:
        r.status = S_NEED_MORE
        return r
    r.record_version = _u16(p + pos + 1)
    r.record_length = rl
    if rl > MAX_RECORD:
        r.status = S_MALFORMED
        return r
    if rl >= 4 and avail >= 9:
        r.handshake_length = _u24(p + pos + 6)
        if r.handshake_length > MAX_CLIENT_HELLO:
            r.status = S_MALFORMED
            return r
    if not reassemble_records and (rl < 4 or (avail >= 9 and r.handshake_length + 4 > rl)):
        # G-E: the message continues in another record and this censor does not reassemble records.
        with nogil:
            _walk_handshake(p, n, pos, &w)
        r.record_count = w.record_count if w.record_count >= 2 else 2  # at least two
        if w.handshake_length >= 0:
            r.handshake_length = w.handshake_length
        r.status = S_FRAGMENTED
        return r

    with nogil:
        _walk_handshake(p, n, pos, &w)
    r.record_count = w.record_count
    if w.handshake_length >= 0:
        r.handshake_length = w.handshake_length
    if w.status != S_OK:
        r.status = w.status
        return r
    r.end = w.end
    if w.record_count == 1:
        _parse_body_into(r, p + pos + 9, w.handshake_length)
        return r
    buf = <unsigned char*>malloc(4 + w.handshake_length)
    if buf == NULL:
        raise MemoryError()
    try:
        with nogil:
            _copy_handshake(p, pos, 4 + w.handshake_length, buf)
        _parse_body_into(r, buf + 4, w.handshake_length)
    finally:
        free(buf)
    return r


def parse_handshake_client_hello(msg):
    """Parse a bare handshake message (type 0x01, 24-bit length, body), as carried in QUIC CRYPTO frames.

    There is no record layer: record fields and record_count stay 0.
    """
    cdef const unsigned char[::1] view = msg
    cdef const unsigned char* p = _ptr(view)
    cdef Py_ssize_t n = view.shape[0]
    cdef ClientHello r = _new_client_hello()
    if n == 0:
        r.status = S_NEED_MORE
        return r
    if p[0] != 0x01:
        r.status = S_NOT_THIS
        return r
    if n < 4:
        r.status = S_NEED_MORE
        return r
    r.handshake_length = _u24(p + 1)
    if r.handshake_length > MAX_CLIENT_HELLO:
        r.status = S_MALFORMED
        return r
    if n - 4 < r.handshake_length:
        r.status = S_NEED_MORE
        return r
    r.end = 4 + r.handshake_length
    _parse_body_into(r, p + 4, r.handshake_length)
    return r


# ---------------------------------------------------------------------------------------------------------------
# HTTP/1.x request (the Host header, G-1 and H-1)

cdef class HttpRequest:
    """The request line and Host header of a plaintext HTTP request."""

    cdef readonly int status
    cdef readonly object method
    cdef readonly object path
    cdef readonly object version
    cdef readonly object host
    cdef readonly object port
    cdef readonly bint headers_complete

    def __repr__(self):
        return "HttpRequest(status=%s, method=%r, path=%r, version=%r, host=%r, port=%r, headers_complete=%s)" % (
            _status_name(self.status), self.method, self.path, self.version, self.host, self.port,
            self.headers_complete)


cdef const char* _METHODS[10]
_METHODS[0] = b"GET"
_METHODS[1] = b"POST"
_METHODS[2] = b"PUT"
_METHODS[3] = b"HEAD"
_METHODS[4] = b"DELETE"
_METHODS[5] = b"OPTIONS"
_METHODS[6] = b"CONNECT"
_METHODS[7] = b"PATCH"
_METHODS[8] = b"TRACE"
_METHODS[9] = NULL


cdef int _match_method(const unsigned char* p, Py_ssize_t n, Py_ssize_t* mlen) noexcept nogil:
    """OK with the method length, NEED_MORE if `p` is a prefix of some "METHOD ", else NOT_THIS."""
    cdef int i = 0, status = S_NOT_THIS
    cdef Py_ssize_t j, ml
    cdef const char* m
    while _METHODS[i] != NULL:
        m = _METHODS[i]
        ml = 0
        while m[ml] != 0:
            ml += 1
        j = 0
        while j < ml and j < n and p[j] == <unsigned char>m[j]:
            j += 1
        if j == n and n <= ml:
            status = S_NEED_MORE
        elif j == ml and p[ml] == 0x20:  # here n > ml
            mlen[0] = ml
            return S_OK
        i += 1
    return status


cdef inline bint _is_ows(unsigned char c) noexcept nogil:
    return c == 0x20 or c == 0x09


cdef inline Py_ssize_t _find_lf(const unsigned char* p, Py_ssize_t start, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i = start
    while i < n:
        if p[i] == 0x0a:
            return i
        i += 1
    return -1


def parse_http_request(data):
    """Parse the request line and the first Host header of an HTTP/1.x request.

    OK as soon as a Host header line is complete (a censor need not wait for the blank line), or once the header
    block is complete without a Host (host None). Header names are case-insensitive; optional whitespace around
    the value (and before the colon, as lenient DPI does) is tolerated. Bare LF line ends are accepted.
    """
    cdef const unsigned char[::1] view = data
    cdef const unsigned char* p = _ptr(view)
    cdef Py_ssize_t n = view.shape[0]
    cdef Py_ssize_t mlen = 0, i, lf, le, sp, pos, colon, ns, ne, vs, ve, hs = -1, he = -1, c, ps
    cdef unsigned char ch
    cdef long port
    cdef int status
    cdef bint complete = 0
    cdef HttpRequest r = HttpRequest.__new__(HttpRequest)

    status = _match_method(p, n, &mlen)
    if status != S_OK:
        r.status = status
        return r
    r.method = _latin1(p, mlen)
    # Request line: METHOD SP request-target SP HTTP-version (CR) LF. Control bytes mean it is not a request
    # line at all, so junk after "GET " is MALFORMED at once instead of NEED_MORE forever.
    lf = -1
    i = mlen + 1
    while i < n:
        ch = p[i]
        if ch == 0x0a:
            lf = i
            break
        if (ch < 0x20 and ch != 0x0d and ch != 0x09) or ch == 0x7f:
            r.status = S_MALFORMED
            return r
        i += 1
    if lf < 0:
        r.status = S_NEED_MORE
        return r
    le = lf
    if le > mlen + 1 and p[le - 1] == 0x0d:
        le -= 1
    sp = mlen + 1
    while sp < le and p[sp] != 0x20:
        sp += 1
    if sp == mlen + 1 or sp >= le:
        r.status = S_MALFORMED
        return r
    r.path = _latin1(p + mlen + 1, sp - mlen - 1)
    if le - (sp + 1) < 5 or p[sp + 1] != 0x48 or p[sp + 2] != 0x54 or p[sp + 3] != 0x54 or p[sp + 4] != 0x50 \
            or p[sp + 5] != 0x2f:  # "HTTP/"
        r.status = S_MALFORMED
        return r
    i = sp + 1
    while i < le:
        if p[i] == 0x20 or p[i] == 0x0d:
            r.status = S_MALFORMED
            return r
        i += 1
    r.version = _latin1(p + sp + 1, le - sp - 1)

    # Header lines, until the blank line.
    pos = lf + 1
    while pos < n:
        lf = _find_lf(p, pos, n)
        if lf < 0:
            break
        le = lf
        if le > pos and p[le - 1] == 0x0d:
            le -= 1
        if le == pos:
            complete = 1
            break
        if hs < 0 and not _is_ows(p[pos]):
            colon = pos
            while colon < le and p[colon] != 0x3a:
                colon += 1
            if colon < le:
                ne = colon
                while ne > pos and _is_ows(p[ne - 1]):
                    ne -= 1
                if ne - pos == 4 and (p[pos] | 0x20) == 0x68 and (p[pos + 1] | 0x20) == 0x6f \
                        and (p[pos + 2] | 0x20) == 0x73 and (p[pos + 3] | 0x20) == 0x74:  # "host"
                    vs = colon + 1
                    ve = le
                    while vs < ve and _is_ows(p[vs]):
                        vs += 1
                    while ve > vs and _is_ows(p[ve - 1]):
                        ve -= 1
                    hs = vs
                    he = ve
        pos = lf + 1
    r.headers_complete = complete

    if hs < 0:
        r.status = S_OK if complete else S_NEED_MORE
        return r
    # Split the port off: "[v6]:port", "name:port"; a bare v6 literal (several colons) has no port.
    r.status = S_OK
    ps = -1
    if he > hs and p[hs] == 0x5b:  # '['
        c = hs
        while c < he and p[c] != 0x5d:
            c += 1
        if c == he:
            r.host = _latin1(p + hs, he - hs)
            r.status = S_MALFORMED
            return r
        r.host = _latin1(p + hs, c + 1 - hs)
        if c + 1 < he:
            if p[c + 1] != 0x3a:
                r.status = S_MALFORMED
                return r
            ps = c + 2
    else:
        colon = -1
        i = hs
        ns = 0
        while i < he:
            if p[i] == 0x3a:
                ns += 1
                if colon < 0:
                    colon = i
            i += 1
        if ns == 1:
            r.host = _latin1(p + hs, colon - hs)
            ps = colon + 1
        else:
            r.host = _latin1(p + hs, he - hs)
    if ps >= 0 and ps < he:
        if he - ps > 5:
            r.status = S_MALFORMED
            return r
        port = 0
        i = ps
        while i < he:
            if p[i] < 0x30 or p[i] > 0x39:
                r.status = S_MALFORMED
                return r
            port = port * 10 + (p[i] - 0x30)
            i += 1
        if port > 65535:
            r.status = S_MALFORMED
            return r
        r.port = port
    return r


# ---------------------------------------------------------------------------------------------------------------
# DNS (first question only: what GD-1 injectors look at)

cdef class DnsMessage:
    """Header and first question of a DNS message."""

    cdef readonly int status
    cdef readonly int id
    cdef readonly int flags
    cdef readonly bint is_response
    cdef readonly int opcode
    cdef readonly int qdcount
    cdef readonly str qname
    cdef readonly int qtype
    cdef readonly int qclass
    cdef readonly Py_ssize_t question_end

    def __init__(self):
        self.qname = ""

    def __repr__(self):
        return ("DnsMessage(status=%s, id=0x%04x, flags=0x%04x, is_response=%s, opcode=%d, qdcount=%d, qname=%r, "
                "qtype=%d, qclass=%d, question_end=%d)" % (
                    _status_name(self.status), self.id, self.flags, self.is_response, self.opcode, self.qdcount,
                    self.qname, self.qtype, self.qclass, self.question_end))


cdef int _dns_name(const unsigned char* m, Py_ssize_t n, Py_ssize_t pos, unsigned char* out, Py_ssize_t* out_len,
                   Py_ssize_t* after) noexcept nogil:
    """Decode a (possibly compressed) name into dotted form in `out` (>= 256 bytes).

    Pointers must land inside the message past the header, at most MAX_DNS_HOPS of them (a loop runs out of
    hops); the wire length is capped at 255 (RFC 1035 3.1). Labels hold printable ASCII without '.', so the
    dotted form is unambiguous for the matcher.
    """
    cdef int hops = 0
    cdef Py_ssize_t wire = 0, olen = 0, target, i
    cdef unsigned char c, ch
    after[0] = -1
    while True:
        if pos >= n:
            return S_MALFORMED
        c = m[pos]
        if c == 0:
            if after[0] < 0:
                after[0] = pos + 1
            out_len[0] = olen
            return S_OK
        if (c & 0xc0) == 0xc0:
            if n - pos < 2:
                return S_MALFORMED
            target = ((c & 0x3f) << 8) | m[pos + 1]
            if after[0] < 0:
                after[0] = pos + 2
            hops += 1
            if hops > MAX_DNS_HOPS or target < 12 or target >= n or target == pos:
                return S_MALFORMED
            pos = target
            continue
        if c & 0xc0:
            return S_MALFORMED  # 0x40 / 0x80: extended label types, obsolete
        wire += 1 + c
        if wire + 1 > 255 or n - pos - 1 < c:
            return S_MALFORMED
        if olen > 0:
            out[olen] = 0x2e
            olen += 1
        i = 0
        while i < c:
            ch = m[pos + 1 + i]
            if ch <= 0x20 or ch >= 0x7f or ch == 0x2e:
                return S_MALFORMED
            out[olen] = ch
            olen += 1
            i += 1
        pos += 1 + c


def parse_dns(data, bint tcp=False):
    """Parse the header and first question of a DNS message.

    With `tcp`, `data` starts with the 2-byte length prefix (RFC 1035 4.2.2) and an incomplete message is
    NEED_MORE. A UDP message is whole by definition, so truncation there is MALFORMED. A message without a
    question (qdcount 0) is MALFORMED: there is nothing a censor could match, and qname "" would read as the root.
    """
    cdef const unsigned char[::1] view = data
    cdef const unsigned char* p = _ptr(view)
    cdef Py_ssize_t n = view.shape[0]
    cdef Py_ssize_t mlen, name_len = 0, after = -1
    cdef const unsigned char* m
    cdef unsigned char name[256]
    cdef unsigned int flags
    cdef int status
    cdef DnsMessage r = DnsMessage.__new__(DnsMessage)
    r.qname = ""
    if tcp:
        if n < 2:
            r.status = S_NEED_MORE
            return r
        mlen = _u16(p)
        if mlen < 12:
            r.status = S_MALFORMED
            return r
        if n - 2 < mlen:
            r.status = S_NEED_MORE
            return r
        m = p + 2
    else:
        mlen = n
        m = p
        if mlen < 12:
            r.status = S_MALFORMED
            return r
    flags = _u16(m + 2)
    r.id = _u16(m)
    r.flags = flags
    r.is_response = (flags >> 15) & 1
    r.opcode = (flags >> 11) & 0xf
    r.qdcount = _u16(m + 4)
    if r.qdcount == 0:
        r.status = S_MALFORMED
        return r
    with nogil:
        status = _dns_name(m, mlen, 12, name, &name_len, &after)
    if status != S_OK or mlen - after < 4:
        r.status = S_MALFORMED
        return r
    r.qname = _latin1(name, name_len)
    r.qtype = _u16(m + after)
    r.qclass = _u16(m + after + 2)
    r.question_end = after + 4
    r.status = S_OK
    return r


# ---------------------------------------------------------------------------------------------------------------
# QUIC long header (T22-4 reads only this; GQ-1 goes on to decrypt the Initial)

cdef class QuicLongHeader:
    """One QUIC long-header packet (RFC 9000 17.2, RFC 9369 for v2) inside a UDP datagram."""

    cdef readonly int status
    cdef readonly int first_byte
    cdef readonly unsigned int version
    cdef readonly int packet_type
    cdef readonly bytes dcid
    cdef readonly bytes scid
    cdef readonly bytes token
    cdef readonly unsigned long long length
    cdef readonly Py_ssize_t pn_offset
    cdef readonly Py_ssize_t packet_end
    cdef readonly bint is_initial

    def __init__(self):
        self.dcid = self.scid = self.token = b""

    def __repr__(self):
        return ("QuicLongHeader(status=%s, version=0x%08x, packet_type=%d, is_initial=%s, dcid=%s, scid=%s, "
                "token=%d bytes, length=%d, pn_offset=%d, packet_end=%d)" % (
                    _status_name(self.status), self.version, self.packet_type, self.is_initial, self.dcid.hex(),
                    self.scid.hex(), len(self.token), self.length, self.pn_offset, self.packet_end))


cdef inline bint _varint(const unsigned char* p, Py_ssize_t n, Py_ssize_t* pos,
                         unsigned long long* out) noexcept nogil:
    """RFC 9000 16: 1/2/4/8-byte integer, length in the two top bits. False if it runs past `n`."""
    cdef Py_ssize_t l, i
    cdef unsigned long long v
    if pos[0] >= n:
        return 0
    l = 1 << (p[pos[0]] >> 6)
    if n - pos[0] < l:
        return 0
    v = p[pos[0]] & 0x3f
    i = 1
    while i < l:
        v = (v << 8) | p[pos[0] + i]
        i += 1
    pos[0] += l
    out[0] = v
    return 1


cdef inline bint _v1_layout(unsigned int version) noexcept nogil:
    """Versions whose long header after the connection IDs is known: v1, v2 and the IETF drafts (ff0000xx)."""
    return version == QUIC_V1 or version == QUIC_V2 or (version >> 8) == 0xff0000


def parse_quic_long_header(data, Py_ssize_t offset=0):
    """Parse the long-header packet at `offset` of a UDP datagram (loop on `packet_end` for coalesced packets).

    A datagram is whole, so truncation is MALFORMED (never NEED_MORE). Connection IDs may be 20 bytes for the
    versions we know (RFC 9000 17.2); version negotiation (version 0) and unknown versions follow only the
    invariants (RFC 8999: up to 255 bytes) and end the datagram (packet_end = len(data)). For v1, v2 and drafts
    the type-specific fields are read, with v2's type numbering (RFC 9369: Initial is 1, Retry is 0).
    """
    cdef const unsigned char[::1] view = data
    cdef const unsigned char* p = _ptr(view)
    cdef Py_ssize_t n = view.shape[0]
    cdef Py_ssize_t pos, dl, sl, ts
    cdef unsigned long long v = 0
    cdef unsigned int version
    cdef int initial_type, retry_type
    cdef QuicLongHeader r = QuicLongHeader.__new__(QuicLongHeader)
    r.dcid = r.scid = r.token = b""
    if offset < 0 or offset >= n:
        r.status = S_NOT_THIS
        return r
    r.first_byte = p[offset]
    if not (p[offset] & 0x80):
        r.status = S_NOT_THIS
        return r
    r.packet_type = (p[offset] >> 4) & 0x03
    pos = offset + 1
    if n - pos < 5:
        r.status = S_MALFORMED
        return r
    version = _u32(p + pos)
    r.version = version
    pos += 4
    dl = p[pos]
    pos += 1
    if (dl > 20 and _v1_layout(version)) or n - pos < dl + 1:
        r.status = S_MALFORMED
        return r
    r.dcid = _bytes(p + pos, dl)
    pos += dl
    sl = p[pos]
    pos += 1
    if (sl > 20 and _v1_layout(version)) or n - pos < sl:
        r.status = S_MALFORMED
        return r
    r.scid = _bytes(p + pos, sl)
    pos += sl
    if not _v1_layout(version):
        r.packet_end = n
        r.status = S_OK
        return r
    initial_type = 1 if version == QUIC_V2 else 0
    retry_type = 0 if version == QUIC_V2 else 3
    if r.packet_type == retry_type:
        # Retry: token up to the 16-byte integrity tag, no Length field (RFC 9000 17.2.5).
        if n - pos < 16:
            r.status = S_MALFORMED
            return r
        r.token = _bytes(p + pos, n - pos - 16)
        r.packet_end = n
        r.status = S_OK
        return r
    if r.packet_type == initial_type:
        r.is_initial = True
        if not _varint(p, n, &pos, &v) or v > <unsigned long long>(n - pos):
            r.status = S_MALFORMED
            return r
        ts = <Py_ssize_t>v
        r.token = _bytes(p + pos, ts)
        pos += ts
    if not _varint(p, n, &pos, &v):
        r.status = S_MALFORMED
        return r
    r.length = v
    r.pn_offset = pos
    if v == 0 or v > <unsigned long long>(n - pos):
        r.status = S_MALFORMED  # beyond the datagram, or no room for even a packet number
        return r
    r.packet_end = pos + <Py_ssize_t>v
    r.status = S_OK
    return r


# ---------------------------------------------------------------------------------------------------------------
# Fully encrypted traffic (GF-1)

cdef class FetFeatures:
    """The GF-1 exemption features of a first client data packet (Wu et al., USENIX Security 2023)."""

    cdef readonly double popcount_avg
    cdef readonly bint first6_printable
    cdef readonly double printable_fraction
    cdef readonly Py_ssize_t max_printable_run
    cdef readonly bint protocol_prefix
    cdef readonly object exempt

    def __repr__(self):
        return ("FetFeatures(popcount_avg=%.3f, first6_printable=%s, printable_fraction=%.3f, max_printable_run=%d, "
                "protocol_prefix=%s, exempt=%r)" % (
                    self.popcount_avg, self.first6_printable, self.printable_fraction, self.max_printable_run,
                    self.protocol_prefix, self.exempt))


cdef unsigned char _POPCOUNT[256]
cdef int _i
for _i in range(256):
    _POPCOUNT[_i] = (_i & 1) + ((_i >> 1) & 1) + ((_i >> 2) & 1) + ((_i >> 3) & 1) + ((_i >> 4) & 1) \
        + ((_i >> 5) & 1) + ((_i >> 6) & 1) + ((_i >> 7) & 1)


cdef inline bint _printable(unsigned char c) noexcept nogil:
    return 0x20 <= c <= 0x7e


cdef inline bint _starts(const unsigned char* p, Py_ssize_t n, const char* s, Py_ssize_t sl) noexcept nogil:
    cdef Py_ssize_t i
    if n < sl:
        return 0
    for i in range(sl):
        if p[i] != <unsigned char>s[i]:
            return 0
    return 1


def fet_features(data):
    """Compute the GF-1 features and the first exemption (Ex1..Ex5) that holds, or None (= would be blocked).

    The thresholds are compared in integers (10 * set bits against 34 or 46 * length), so a payload sitting
    exactly on 3.4 or 4.6 is exempt as the paper's `<=` / `>=` say, free of float rounding.

    Empty input: popcount_avg is 0.0, so Ex1 holds and it is exempt. An empty payload is not a first data
    packet; exempting it means the caller never blocks on one.
    """
    cdef const unsigned char[::1] view = data
    cdef const unsigned char* p = _ptr(view)
    cdef Py_ssize_t n = view.shape[0]
    cdef Py_ssize_t i, bits = 0, printable = 0, run = 0, best = 0
    cdef bint first6 = 0, prefix = 0
    cdef unsigned char c
    cdef FetFeatures r = FetFeatures.__new__(FetFeatures)
    with nogil:
        for i in range(n):
            c = p[i]
            bits += _POPCOUNT[c]
            if _printable(c):
                printable += 1
                run += 1
                if run > best:
                    best = run
            else:
                run = 0
        if n >= 6:
            first6 = 1
            for i in range(6):
                if not _printable(p[i]):
                    first6 = 0
                    break
        if n >= 3 and (p[0] == 0x16 or p[0] == 0x17) and p[1] == 0x03 and p[2] <= 0x09:
            prefix = 1
        elif (_starts(p, n, "GET ", 4) or _starts(p, n, "PUT ", 4) or _starts(p, n, "POST ", 5)
              or _starts(p, n, "HEAD ", 5)):
            prefix = 1
    r.popcount_avg = (<double>bits / n) if n else 0.0
    r.first6_printable = first6
    r.printable_fraction = (<double>printable / n) if n else 0.0
    r.max_printable_run = best
    r.protocol_prefix = prefix
    if bits * 10 <= 34 * n or bits * 10 >= 46 * n:
        r.exempt = "Ex1"
    elif first6:
        r.exempt = "Ex2"
    elif printable * 2 > n:
        r.exempt = "Ex3"
    elif best > 20:
        r.exempt = "Ex4"
    elif prefix:
        r.exempt = "Ex5"
    else:
        r.exempt = None
    return r
