"""The HTTP server of `qlens serve`: uvicorn on a socket bound first, with bounded connections.

- `bind` binds the address before anything is announced: a port in use is one line and exit
  code 2 (`InputError`), never a banner followed by a server's traceback.
- `BoundedH11Protocol` closes a connection that has not sent a whole request within
  `REQUEST_SECONDS` of opening it, or of its previous answer (an idle connection, a half-sent
  request line, headers or body, however slowly it trickles); uvicorn's own keep-alive timeout
  (`KEEP_ALIVE_SECONDS`) closes idle keep-alive connections sooner. uvicorn alone closes neither
  a connection that never sends anything nor one that sends a byte now and then.
- At most `MAX_CONNECTIONS` connections and requests at once (more are answered 503 by uvicorn),
  request heads (request line and headers) of at most `MAX_HEAD_BYTES` (more: 431, closed).
"""

from __future__ import annotations

import asyncio
import socket

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from qlens_jax.errors import InputError

KEEP_ALIVE_SECONDS = 5  # an idle keep-alive connection is closed after this long
REQUEST_SECONDS = 10  # a connection gets this long to send a whole request (from opening, or from its last answer)
MAX_HEAD_BYTES = 16 * 1024  # request line and headers
MAX_CONNECTIONS = 128
_RECEIVED = (h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.ERROR)  # the client's side of the exchange is over


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each whole request (`REQUEST_SECONDS`)."""

    request_seconds: float = REQUEST_SECONDS
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE and self._head_too_large(data):
            body = b'{"error": "request line and headers longer than %d bytes"}' % MAX_HEAD_BYTES
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
            )
            self.transport.close()
            return
        super().data_received(data)
        if self.conn.their_state in _RECEIVED:  # the whole request is in: it may take as long as it needs
            self._disarm()

    def _head_too_large(self, data: bytes) -> bool:
        """Whether the request head being received (buffered + `data`) passes `MAX_HEAD_BYTES`
        (h11's own limit only holds a head that arrives in pieces, not one sent at once)."""
        buffered = self.conn.trailing_data[0] + data
        end = buffered.find(b"\r\n\r\n", 0, MAX_HEAD_BYTES + 4)
        return end == -1 and len(buffered) > MAX_HEAD_BYTES

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state not in _RECEIVED:
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.request_seconds, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if not self.transport.is_closing() and self.conn.their_state not in _RECEIVED:
            self.transport.close()


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on `host:port` (port 0: any free one; `InputError` in one line if
    it cannot be had)."""
    if not 0 <= port < 65536:
        raise InputError(f"--port {port}: must be between 1 and 65535")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            "127.0.0.1" if host == "localhost" else host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (socket.gaierror, UnicodeError) as err:
        raise InputError(f"--host {host!r}: not an address of this machine ({err})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart does not wait out TIME_WAIT
        sock.bind(address)
        sock.listen(2048)
    except OSError as err:
        sock.close()
        raise InputError(
            f"--host {host} --port {port}: cannot listen there ({err.strerror or err}); choose another --port"
        ) from None
    return sock


def uvicorn_server(app, keep_alive: int = KEEP_ALIVE_SECONDS):
    """A uvicorn server of `app` with the limits above (`.run(sockets=[bind(...)])` serves)."""
    import uvicorn

    config = uvicorn.Config(
        app,
        http=BoundedH11Protocol,
        timeout_keep_alive=keep_alive,
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        limit_concurrency=MAX_CONNECTIONS,
        log_level="warning",
        lifespan="on",
    )
    return uvicorn.Server(config)


def serve(app, sock: socket.socket) -> None:
    """Serve `app` on the bound socket `sock` until interrupted (Ctrl-C, SIGTERM)."""
    uvicorn_server(app).run(sockets=[sock])
