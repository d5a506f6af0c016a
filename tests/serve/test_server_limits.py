"""The server's own limits: errors answered by class, costly routes only from the page and a few
at once, a usable connection after a 500, idle and half-sent connections closed, a port in use
refused in one line before any banner. Real sockets on 127.0.0.1 only; every wait is bounded."""

import http.client
import socket
import threading
import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from qlens_jax.errors import InputError
from qlens_jax.serve import server as limits
from qlens_jax.serve.app import MAX_REVERSE, create_app
from qlens_jax.serve.errors import (
    BusyError,
    CrossOriginError,
    NotFoundError,
    QueryError,
    RunFileError,
    UnavailableError,
    http_status,
)
from qlens_jax.serve.page import REQUEST_HEADER, render
from qlens_jax.serve.reverse import ReverseLookup
from test_serve_cli import free_port, qlens


def test_errors_are_answered_by_their_class():
    class Unknown(NotFoundError):
        pass

    statuses = [
        http_status(e)
        for e in (
            QueryError("x"),
            Unknown("x"),
            UnavailableError("x"),
            RunFileError(Path("f"), "x"),
            BusyError("x"),
            CrossOriginError("x"),
            InputError("x"),
            RuntimeError("x"),
        )
    ]
    assert statuses == [400, 404, 409, 503, 429, 403, 400, 500]


@pytest.fixture(scope="module")
def client(serve_run):
    with TestClient(create_app(serve_run[0]), raise_server_exceptions=False) as c:
        yield c


@pytest.mark.parametrize(
    "token,message",
    [
        ("id:\u00b2", "ASCII decimal digits"),  # a superscript two is a digit to str.isdigit, not to int()
        ("id:" + "9" * 900, "ASCII decimal digits"),
        ("id:100000", "the vocabulary has 320 ids"),
    ],
)
def test_reverse_token_ids_that_are_not_ids_are_a_400(client, token, message):
    response = client.get("/api/reverse", params={"token": token}, headers={REQUEST_HEADER: "1"})
    assert response.status_code == 400 and message in response.json()["error"] and "\n" not in response.text


def test_reverse_lookups_need_the_page_header_and_this_origin(client, serve_run):
    assert REQUEST_HEADER in render("t")
    ask = lambda **headers: client.get("/api/reverse", params={"token": " the", "top": 2}, headers=headers)  # noqa: E731
    refused = [
        ask(),
        ask(**{REQUEST_HEADER: "1", "Sec-Fetch-Site": "cross-site"}),
        ask(**{REQUEST_HEADER: "1", "Origin": "http://evil.example"}),
    ]
    assert [r.status_code for r in refused] == [403, 403, 403]
    assert REQUEST_HEADER in refused[0].json()["error"] and "another site" in refused[1].json()["error"]
    assert (
        ask(**{REQUEST_HEADER: "1", "Sec-Fetch-Site": "same-origin", "Origin": "http://testserver"}).status_code == 200
    )
    assert client.get("/api/search", params={"token": "the"}).status_code == 200  # cheap routes need nothing


def test_concurrent_reverse_lookups_are_capped_with_a_429(serve_run):
    gate, entered = threading.Event(), threading.Semaphore(0)

    class Slow(ReverseLookup):
        def __init__(self, run):  # nothing loaded: only lookups that wait
            pass

        def lookup(self, token, side, dictionary, top, names=None):
            entered.release()
            gate.wait(60)
            return {"hits": [], "token": token}

    app = create_app(serve_run[0], reverse_factory=Slow, index_tokens=False)
    statuses = []
    with TestClient(app, raise_server_exceptions=False, headers={REQUEST_HEADER: "1"}) as c:

        def ask():
            statuses.append(c.get("/api/reverse", params={"token": "the"}).status_code)

        waiting = [threading.Thread(target=ask, daemon=True) for _ in range(MAX_REVERSE)]
        for t in waiting:
            t.start()
        try:
            assert all(
                entered.acquire(timeout=30) for _ in range(MAX_REVERSE)
            )  # every slot taken (not serialized here)
            busy = c.get("/api/reverse", params={"token": "the"})
            assert busy.status_code == 429 and busy.headers["retry-after"] and "busy" in busy.json()["error"]
        finally:
            gate.set()
            for t in waiting:
                t.join(timeout=30)
        assert statuses == [200] * MAX_REVERSE
        assert c.get("/api/reverse", params={"token": "the"}).status_code == 200  # the slots are free again


@pytest.fixture
def live_server(serve_run, monkeypatch):
    """`qlens serve`'s uvicorn server in a thread, with a broken reverse lookup and short limits:
    1 s to send a request, 1 s of keep-alive. Yields (port, server)."""
    monkeypatch.setattr(limits.BoundedH11Protocol, "request_seconds", 1.0)

    def broken(run):
        raise RuntimeError("boom")

    sock = limits.bind("127.0.0.1", 0)
    server = limits.uvicorn_server(create_app(serve_run[0], reverse_factory=broken, index_tokens=False), keep_alive=1)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(300):
        if server.started:
            break
        time.sleep(0.05)
    assert server.started
    yield sock.getsockname()[1], server
    server.should_exit = True
    thread.join(timeout=20)


def test_a_request_after_a_500_on_the_same_connection_is_answered(live_server):
    port, _ = live_server
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", "/api/reverse?token=the", headers={REQUEST_HEADER: "1"})
    failed = connection.getresponse()
    assert failed.status == 500 and b"boom" not in failed.read() and failed.getheader("connection") != "close"
    first_socket = connection.sock
    connection.request("GET", "/api/run")
    again = connection.getresponse()
    assert again.status == 200 and again.read() and connection.sock is first_socket  # the same connection
    connection.close()


def _closed_after(sock: socket.socket, trickle: bytes = b"", limit: float = 8.0) -> float:
    """Seconds until the server closes `sock` (sending `trickle` a byte every 0.2 s meanwhile)."""
    start = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - start < limit:
        if trickle:
            try:
                sock.sendall(trickle[:1])
            except OSError:
                return time.monotonic() - start
            trickle = trickle[1:] or b"x"
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - start
        if not data:
            return time.monotonic() - start
    return float("inf")


def test_idle_and_half_sent_connections_are_closed(live_server):
    port, _ = live_server
    with socket.create_connection(("127.0.0.1", port), timeout=5) as idle:  # never sends anything
        assert 0.5 < _closed_after(idle) < 4
    with socket.create_connection(("127.0.0.1", port), timeout=5) as slow:  # headers a byte at a time, never finished
        slow.sendall(b"GET /api/run HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        assert 0.5 < _closed_after(slow, trickle=b"X-Slow: " + b"a" * 100) < 4
    with socket.create_connection(("127.0.0.1", port), timeout=5) as kept:  # a whole request, then idle
        kept.sendall(b"GET /api/run HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert kept.recv(65536).startswith(b"HTTP/1.1 200")
        assert _closed_after(kept) < 4
    with socket.create_connection(("127.0.0.1", port), timeout=5) as answered:  # the server still answers
        answered.sendall(b"GET /api/run HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert answered.recv(65536).startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("size,status", [(limits.MAX_HEAD_BYTES // 2, b"200"), (limits.MAX_HEAD_BYTES + 10, b"431")])
def test_request_heads_over_the_limit_are_refused_even_sent_at_once(live_server, size, status):
    port, _ = live_server
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        client.sendall(
            b"GET /api/run HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * size + b"\r\nConnection: close\r\n\r\n"
        )
        assert client.recv(65536).startswith(b"HTTP/1.1 " + status)


def test_a_port_in_use_is_one_line_and_exit_2_without_a_banner(serve_run):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", free_port()))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = qlens("serve", str(serve_run[0]), "--port", str(port))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and f"--port {port}: cannot listen there" in result.stderr
