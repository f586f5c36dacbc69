# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The NFQUEUE callback: one packet in, exactly one verdict out, compiled.

Why it is compiled: with every packet queued (`--no-offload`, throttled and frozen flows, flows still being
inspected) the callback runs for each packet, and a Python callback costs more than the core's whole decision
(frames, a bytes copy of the payload, a memoryview, attribute look-ups). Here the payload pointer netfilterqueue
already holds goes straight into the core's C entry point (`dpi._core.process_entry`) and the verdict is issued
through netfilterqueue's own C method, so an ordinary packet never executes Python bytecode.

Python runs only for the rare packets that do more than pass or drop: the engine left forged packets or events
(`slow(payload, code)`), the worker records censored flows to a pcap, or the censor raised (`failed`). A censor
that is not the compiled engine (the tests' plumbing censor) is called through its `process()` the same way, so
the verdict, the connmark hand-off and the counters have one implementation whatever decides.
"""
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from cpython.pycapsule cimport PyCapsule_GetPointer
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC
from netfilterqueue._impl cimport Packet, NF_ACCEPT, NF_DROP, NF_REPEAT

ctypedef int (*process_fn)(object, const uint8_t*, Py_ssize_t, double) except -1

DEF V_DROP = 1


cdef inline double _monotonic() noexcept nogil:
    """The clock of time.monotonic() (CLOCK_MONOTONIC), which the worker's timers and residual entries use."""
    cdef timespec t
    clock_gettime(CLOCK_MONOTONIC, &t)
    return t.tv_sec + t.tv_nsec * 1e-9


cdef class VerdictPath:
    """netfilterqueue's callback for one worker; raises `batch_done` after `batch_left` packets.

    `mark_accept`/`mark_drop` are the decision's flow marks (dpi.decision), `flow_accept`/`flow_drop`/`pass_mark`
    the connmark bits the iptables chain acts on (dpi.iptables): they are passed in, not repeated here.
    """
    cdef object core              # dpi._core.Core, when the censor is the compiled engine
    cdef process_fn c_process     # its C entry point (NULL: call `py_process` instead)
    cdef object py_process        # censor.process(payload, ts) -> Decision, for any other censor
    cdef object slow              # slow(payload, code or Decision): forged packets, events, pcap
    cdef object failed            # failed(exception, payload): the censor raised
    cdef object batch_done
    cdef int more_bit, mark_accept, mark_drop
    cdef uint32_t flow_accept, flow_drop, flow_mask, pass_mark, mark_mask
    cdef public bint offload, fail_closed, always_slow
    cdef public int batch_left
    cdef public uint64_t packets, accepted, dropped, offload_accept, offload_drop, fallthrough, errors
    cdef public uint64_t verdict_errors
    cdef public uint64_t python      # packets for which Python ran (a Python censor, or the engine's slow path)

    def __init__(self, censor, *, slow, failed, batch_done, bint offload, bint fail_closed, bint always_slow,
                 int mark_accept, int mark_drop, uint32_t flow_accept, uint32_t flow_drop, uint32_t pass_mark):
        from dpi import _core
        core = getattr(censor, "core", None)
        if isinstance(core, _core.Core) and callable(getattr(censor, "decision", None)):
            self.core = core
            self.c_process = <process_fn>PyCapsule_GetPointer(_core.PROCESS_ENTRY, b"dpi._core.process_entry")
            self.more_bit = _core.VERDICT_MORE
        else:
            self.core = None
            self.c_process = NULL
            self.more_bit = 0
        self.py_process = censor.process
        self.slow = slow
        self.failed = failed
        self.batch_done = batch_done
        self.offload = offload
        self.fail_closed = fail_closed
        self.always_slow = always_slow
        self.mark_accept = mark_accept
        self.mark_drop = mark_drop
        self.flow_accept = flow_accept
        self.flow_drop = flow_drop
        self.flow_mask = flow_accept | flow_drop
        self.pass_mark = pass_mark
        self.mark_mask = flow_accept | flow_drop | pass_mark
        self.batch_left = 1 << 30

    @property
    def compiled(self):
        """True when packets go straight into the compiled core (no Python per ordinary packet)."""
        return self.c_process != NULL

    def __call__(self, Packet pkt):
        cdef uint32_t mark = pkt.mark
        cdef int code
        self.packets += 1
        if mark & self.flow_mask:
            # A packet we gave back with NF_REPEAT came round again: the kernel could not settle it (no conntrack
            # entry). Settle it by its mark; never feed it to the censor twice.
            self.fallthrough += 1
            self._plain(pkt, (mark & self.flow_drop) != 0 and (mark & self.pass_mark) == 0)
        else:
            code = self._decide(pkt)
            self._give(pkt, code, mark)
        self.batch_left -= 1
        if self.batch_left <= 0:
            raise self.batch_done

    cdef int _decide(self, Packet pkt):
        """The packet's verdict code (bit 0 drop, bits 1-2 flow mark); never raises."""
        cdef int code
        cdef object d
        if self.c_process != NULL and pkt.payload != NULL:
            try:
                code = self.c_process(self.core, pkt.payload, pkt.payload_len, _monotonic())
            except Exception as e:
                return self._failed(pkt, e)
            if code & self.more_bit or self.always_slow:
                code &= ~self.more_bit
                self.python += 1
                self._slow(pkt, code)
            return code
        self.python += 1
        try:
            d = self.py_process(self._payload(pkt), _monotonic())
            code = (1 if d.verdict else 0) | (<int>d.mark << 1)
        except Exception as e:
            return self._failed(pkt, e)
        if d.inject or d.events or self.always_slow:
            self._slow(pkt, d)
        return code

    cdef bytes _payload(self, Packet pkt):
        if pkt.payload == NULL or pkt.payload_len <= 0:
            return b""
        return (<const char*>pkt.payload)[:pkt.payload_len]

    cdef int _failed(self, Packet pkt, object e):
        self.errors += 1
        try:
            self.failed(e, self._payload(pkt))
        except Exception:
            pass
        return V_DROP if self.fail_closed else 0

    cdef void _slow(self, Packet pkt, object what):
        # The worker's slow path counts and logs its own failures; nothing may reach netfilterqueue.
        try:
            self.slow(self._payload(pkt), what)
        except Exception:
            pass

    cdef void _give(self, Packet pkt, int code, uint32_t mark):
        """Issue the verdict; flows the censor has decided leave the queue through the connmark (NF_REPEAT with
        the flow bits set: the chain saves them and settles the flow's later packets in the kernel)."""
        cdef bint drop = code & V_DROP
        cdef int fmark = code >> 1
        cdef uint32_t bits
        if fmark == 0 or not self.offload or (drop and fmark == self.mark_accept):
            self._plain(pkt, drop)
            return
        if fmark == self.mark_accept:
            self.offload_accept += 1
            self.accepted += 1
            bits = self.flow_accept
        elif fmark == self.mark_drop:
            self.offload_drop += 1
            # GQ-2: the packet may pass while the flow's future is "drop": PASS accepts just this one.
            bits = self.flow_drop if drop else self.flow_drop | self.pass_mark
            if drop:
                self.dropped += 1
            else:
                self.accepted += 1
        else:
            self._plain(pkt, drop)
            return
        try:
            pkt.set_mark((mark & ~self.mark_mask) | bits)
            pkt.verdict(NF_REPEAT)
        except Exception:  # only when the queue is gone
            self.verdict_errors += 1

    cdef void _plain(self, Packet pkt, bint drop):
        if drop:
            self.dropped += 1
        else:
            self.accepted += 1
        try:
            pkt.verdict(NF_DROP if drop else NF_ACCEPT)
        except Exception:  # only when the queue is gone
            self.verdict_errors += 1
