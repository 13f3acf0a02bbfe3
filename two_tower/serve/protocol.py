"""Bounds on what a client can hold open: uvicorn's HTTP/1.1 protocol (h11) with a header read timeout
and a cap on open connections.

uvicorn bounds idle keep-alive connections (``timeout_keep_alive``) but has no limit on the time a
client may take to send a request's headers, so connections that send ``GET / HTTP/1.1\\r\\nHost: x\\r\\n``
and stop stay open until the process runs out of file descriptors, and then every real request fails.
Its ``limit_concurrency`` answers 503 to real requests once reached. ``GuardedH11Protocol`` instead:

- closes a connection whose request headers are not complete ``header_timeout`` seconds after its
  first byte (or after it was accepted, or after its previous response), whether it sent nothing, half a
  request line, or all but the blank line;
- closes a newly accepted connection at once, before reading it, when ``max_connections`` are open
  (refused at accept time: a client sees the connection closed, never a 5xx answer);
- aborts a connection whose client has read nothing of its answer for ``send_timeout`` seconds (looked at
  every tenth of it while the transport holds more than its high-water mark of it; a client that reads
  slowly but reads is not cut): clients that ask for large batches and never read held ~20 MB each, for
  as long as they stayed connected;
- aborts, the longest stalled first, connections whose clients have stopped reading while the answers waiting
  to be read together pass ``max_unsent_bytes`` (each counted as it was when its write paused, until it
  resumes; a client that reads is not cut for it): send_timeout
  bounds how long one answer is held, not how many are, and 250 clients asking for a batch at k=100 and
  reading nothing took a server from 1.5 to 2.7 GB on 2 cores (the more cores, the more answers a second).

``guarded_protocol(header_timeout, max_connections, send_timeout, max_unsent_bytes)`` returns the class to pass as
``uvicorn.run(http=...)``.
"""

from __future__ import annotations

import fcntl
import logging
import resource
import struct
import termios

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

# File descriptors kept free for everything that is not a client connection (index files, logs, threads).
FD_RESERVE = 256
# Looks at a stalled answer per send_timeout: a client that reads nothing is cut off within 1.1 send_timeout of
# its kernel taking its last bytes.
SEND_CHECKS = 10


class GuardedH11Protocol(H11Protocol):
    header_timeout: float = 5.0
    max_connections: int = 4096
    send_timeout: float = 30.0
    max_unsent_bytes: int = 256 * 2**20

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer = None
        self._write_timer = None
        self._armed_cycle = None
        if len(self.connections) > self.max_connections:
            self.server_state.refused = getattr(self.server_state, "refused", 0) + 1
            transport.abort()  # refused at accept time; nothing was read, nothing is answered
            return
        self._arm()

    def _arm(self) -> None:
        self._armed_cycle = self.cycle
        self._header_timer = self.loop.call_later(self.header_timeout, self._header_timeout)

    def _awaiting_headers(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and self._awaiting_headers():
            self._arm()
        super().data_received(data)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # The next request's headers get header_timeout from now: the timer armed before ran on and, on firing, re-armed
        # for a whole period, so a client had up to twice header_timeout after a response (a probe)
        if not self.transport.is_closing() and self._awaiting_headers():
            if self._header_timer is not None:
                self._header_timer.cancel()
            self._arm()

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is self._armed_cycle:  # no complete request headers since the timer was armed
            self.server_state.header_timeouts = getattr(self.server_state, "header_timeouts", 0) + 1
            self.transport.close()
        elif self._awaiting_headers():  # served a request meanwhile and now waits for the next one's headers
            self._arm()

    def pause_writing(self) -> None:  # the unread answer is above the transport's high-water mark
        super().pause_writing()
        if self._write_timer is None:
            self._unread, self._still = self._unsent(), 0
            self._arm_write_timer()
            self._hold(self.transport.get_write_buffer_size())

    def _hold(self, size: int) -> None:
        """Counts this connection's unsent answer among the server's (``server_state.unsent``: the connections
        paused, in the order they paused, and the bytes each held then), then sheds the stalled ones over budget."""
        held = self.server_state.__dict__.setdefault("unsent", {})
        self._release()
        held[self] = size
        self.server_state.unsent_bytes = getattr(self.server_state, "unsent_bytes", 0) + size
        self._shed()

    def _shed(self) -> None:
        """While the unsent answers together are over ``max_unsent_bytes``, aborts the connection whose client has
        gone the most looks in a row without taking anything (the oldest first among equals). One whose client took
        some at its last look is left alone: the budget bounds what stalled clients hold, and many slow clients that
        read (a big batch each, over a slow link) are not cut off for being many."""
        held = getattr(self.server_state, "unsent", {})
        while self.server_state.unsent_bytes > self.max_unsent_bytes:
            stalled = max(held, key=lambda protocol: protocol._still, default=None)  # the first of the most: the oldest
            if stalled is None or stalled._still < 1:
                return
            stalled._release()
            self.server_state.unsent_aborts = getattr(self.server_state, "unsent_aborts", 0) + 1
            stalled.transport.abort()

    def _release(self) -> None:
        """This connection's answer no longer counted among the unsent (read down, or the connection gone)."""
        held = getattr(self.server_state, "unsent", {})
        if self in held:
            self.server_state.unsent_bytes -= held.pop(self)

    def _unsent(self) -> int:
        """Bytes of the answer the client has not taken: the transport's buffer plus, where the system says
        (Linux: TIOCOUTQ), the socket's send queue, which drains first as the client reads."""
        unsent = self.transport.get_write_buffer_size()
        sock = self.transport.get_extra_info("socket")
        if sock is not None and hasattr(termios, "TIOCOUTQ"):
            try:
                unsent += struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
            except OSError:
                pass
        return unsent

    def _arm_write_timer(self) -> None:
        self._write_timer = self.loop.call_later(self.send_timeout / SEND_CHECKS, self._send_timeout)

    def resume_writing(self) -> None:  # the client read it down below the low-water mark
        super().resume_writing()
        self._release()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _send_timeout(self) -> None:
        """Looked at every tenth of ``send_timeout``: the connection is aborted after ``SEND_CHECKS`` looks in a row
        with nothing taken. It was one look a whole ``send_timeout`` after the count taken as the write paused, when
        the client's kernel had not yet taken its receive buffer's worth of the answer: the first look always saw
        progress, and a client reading nothing was cut off after twice send_timeout (a probe: 6.2 s of 3)."""
        self._write_timer = None
        unsent = self._unsent()
        if unsent < self._unread:  # taken some since the last look: a slow client, not a stalled one
            self._unread, self._still = unsent, 0
        else:
            self._still += 1
            if self._still >= SEND_CHECKS:
                self.server_state.send_timeouts = getattr(self.server_state, "send_timeouts", 0) + 1
                self._release()
                self.transport.abort()  # drops the unread answer (close() would keep it until sent)
                return
            self._shed()  # stalled now: over the budget, this one or one stalled longer goes
            if self not in self.server_state.unsent:  # this one went. Not is_closing(): a connection closed after its
                return  # answer (Connection: close, keep_alive_timeout) is closing too, its answer unread, and was never cut
        self._arm_write_timer()

    def connection_lost(self, exc) -> None:
        self._release()
        for name in ("_header_timer", "_write_timer"):
            if getattr(self, name, None) is not None:
                getattr(self, name).cancel()
                setattr(self, name, None)
        super().connection_lost(exc)


def connection_cap(requested: int) -> int:
    """``requested``, lowered to what the process's file-descriptor limit allows (the soft limit is raised
    to the hard one first)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    allowed = max(soft - FD_RESERVE, 16) if soft != resource.RLIM_INFINITY else requested
    if requested > allowed:
        log.warning("max_connections=%d lowered to %d (file descriptor limit %d)", requested, allowed, soft)
    return min(requested, allowed)


def guarded_protocol(header_timeout: float, max_connections: int, send_timeout: float = GuardedH11Protocol.send_timeout,
                     max_unsent_bytes: int = GuardedH11Protocol.max_unsent_bytes) -> type[GuardedH11Protocol]:
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {
        "header_timeout": float(header_timeout), "max_connections": int(max_connections), "send_timeout": float(send_timeout), "max_unsent_bytes": int(max_unsent_bytes),
    })
