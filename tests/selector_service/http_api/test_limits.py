"""HTTP limits over real servers with tight limits, through the socket: bodies over their route's
limit are 413 (declared or streamed, JSON or protobuf) and change nothing stored, in memory
or in Redis; every request of a connection must send its headers in time, while bodies and
answers that take longer are not cut; connections beyond the cap are closed at once."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from pcm_bench.servers import wait_until
from selector_service.settings import Settings
from tests.fixtures.servers import ServerThread
from tests.hardening.conftest import closed_within, read_all, status_of, trickle_until_closed
from tests.selector_service.conftest import batch, report, to_proto

HEADER_TIMEOUT_S = 0.5
LIMITS: dict[str, Any] = {"max_body_mb": 1, "max_small_body_kb": 4,
                          "header_timeout_s": HEADER_TIMEOUT_S, "body_timeout_s": 5.0,
                          "keep_alive_s": 30, "max_connections": 6}


@contextlib.contextmanager
def serving(**overrides: Any) -> Iterator[ServerThread]:
    settings = Settings(**{"host": "127.0.0.1", "grpc_port": 0, "http_port": 0,
                           "auth_tokens": "", "grace_period_s": 1.0, "worker_threads": 4,
                           **LIMITS, **overrides})
    srv = ServerThread(settings).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(params=["memory", "redis"])
def limited(request: pytest.FixtureRequest) -> Iterator[ServerThread]:
    store: dict[str, Any] = {"store": request.param}
    if request.param == "redis":
        store["redis_url"] = request.getfixturevalue("redis_url")
    with serving(**store) as srv:
        yield srv


def _stored(srv: ServerThread, http: httpx.Client, run: str) -> Any:
    info = http.get(f"/v1/runs/{run}").json()
    info.pop("store_epoch", None)
    return info, srv.service.history(run, 1000)


def _request(path: str, body: bytes = b"", method: str = "POST",
             content_type: str = "application/json") -> bytes:
    head = (f"{method} {path} HTTP/1.1\r\nhost: selector\r\ncontent-type: {content_type}\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode()
    return head + body


# -- body size -----------------------------------------------------------------------------------


def _declared(port: int, path: str, size: int, kind: str) -> tuple[int, bytes]:
    """Announce a `size`-byte body, send 16 bytes of it: the status and the answer's body."""
    head = (f"POST {path} HTTP/1.1\r\nhost: selector\r\ncontent-type: {kind}\r\n"
            f"content-length: {size}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + b"\0" * 16)
        answer = read_all(sock, 5.0)
    return status_of(answer), answer.partition(b"\r\n\r\n")[2]


def test_oversize_bodies_are_413_and_change_nothing(limited: ServerThread) -> None:
    port = limited.server.http_port
    with httpx.Client(base_url=limited.http_url, timeout=30) as http:
        assert http.put("/v1/runs/big", json={"feature_dim": 4}).status_code == 200
        first = http.post("/v1/runs/big/select", json=batch("big-0")).json()
        assert http.post("/v1/runs/big/outcomes",
                         json=report(first["selection_id"], "big-rep")).status_code == 200
        before = _stored(limited, http, "big")
        # Over PCM_MAX_BODY_MB (1 MiB) for a Select, JSON or protobuf: 413 naming the body and
        # the limit, by the declared size (before the body is read) or once a body sent
        # without a size (chunked) passes the limit.
        fat = batch("big-1", n=128, c=64, d=40)
        for kind, raw in (("application/json", httpx.Request("POST", "/", json=fat).read()),
                          ("application/x-protobuf",
                           to_proto("big", fat).SerializeToString())):
            assert len(raw) > 1024 * 1024
            status, answer = _declared(port, "/v1/runs/big/select", len(raw), kind)
            assert status == 413 and b"limit of 1048576" in answer, answer
            streamed = raw[:1024 * 1024 + 65536]
            r = http.post("/v1/runs/big/select", headers={"content-type": kind},
                          content=iter([streamed[i:i + 65536]
                                        for i in range(0, len(streamed), 65536)]))
            assert r.status_code == 413, r.text
            err = r.json()
            assert err["field"] == "body" and err["code"] == "INVALID_ARGUMENT"
            assert "limit of 1048576" in err["detail"]
            assert r.headers["connection"] == "close"
        # Every other route: PCM_MAX_SMALL_BODY_KB (4 KiB).
        padded = {**report(first["selection_id"], "big-rep-2"), "trainer_id": "t" * 5000}
        for method, path, body in (("POST", "/v1/runs/big/outcomes", padded),
                                   ("PUT", "/v1/runs/big", {"eps": 0.2, "pad": "x" * 5000})):
            r = http.request(method, path, json=body)
            assert r.status_code == 413 and "limit of 4096" in r.json()["detail"], r.text
        assert _stored(limited, http, "big") == before
        # The server goes on serving.
        assert http.post("/v1/runs/big/select", json=batch("big-2")).status_code == 200


# -- connections ---------------------------------------------------------------------------------


def test_every_request_of_a_connection_must_send_its_headers_in_time() -> None:
    with serving() as srv, socket.create_connection(("127.0.0.1", srv.server.http_port),
                                                    timeout=5) as sock:
        port = srv.server.http_port
        # A first request on time, then the next request's headers a byte at a time.
        sock.sendall(_request("/healthz", method="GET"))
        assert status_of(read_all(sock, 0.3)) == 200
        start = time.monotonic()
        closed = trickle_until_closed(sock, b"GET /healthz HTTP/1.1\r\nhost: x\r\n", 0.15)
        assert closed and time.monotonic() - start < 3.0
        # Silent after an answer: closed after PCM_HEADER_TIMEOUT_S, not PCM_KEEP_ALIVE_S (30).
        with socket.create_connection(("127.0.0.1", port), timeout=5) as quiet:
            quiet.sendall(_request("/healthz", method="GET"))
            assert status_of(read_all(quiet, 0.3)) == 200
            start = time.monotonic()
            assert closed_within(quiet, 3.0)
            assert time.monotonic() - start < 2.0


def test_slow_bodies_and_pipelined_requests_are_not_cut() -> None:
    """The header timer stops once a request's headers are in: a body that takes longer than
    PCM_HEADER_TIMEOUT_S (within PCM_BODY_TIMEOUT_S), and requests sent together, are served."""
    with serving() as srv, httpx.Client(base_url=srv.http_url, timeout=30) as http:
        port = srv.server.http_port
        assert http.put("/v1/runs/slow", json={"feature_dim": 4}).status_code == 200
        raw = httpx.Request("POST", "/", json=batch("slow-1")).read()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            request = _request("/v1/runs/slow/select", raw)
            head_end = request.index(b"\r\n\r\n") + 4
            sock.sendall(request[:head_end])
            body = request[head_end:]
            step = len(body) // 4 + 1
            pieces = [body[i:i + step] for i in range(0, len(body), step)]
            for piece in pieces:  # about 1.2 s in all, over twice the header timeout
                time.sleep(0.3)
                sock.sendall(piece)
            answer = read_all(sock, 2.0)
            assert status_of(answer) == 200, answer[:300]
        # Three requests in one write (pipelined), then the connection stays usable.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(_request("/healthz", method="GET") * 2 +
                         _request("/v1/runs/slow/select", httpx.Request(
                             "POST", "/", json=batch("slow-2")).read()))
            answers = b""
            deadline = time.monotonic() + 5
            while answers.count(b"HTTP/1.1 200") < 3 and time.monotonic() < deadline:
                answers += read_all(sock, 0.2)
            assert answers.count(b"HTTP/1.1 200") == 3, answers[:500]
        assert http.get("/v1/runs/slow").json()["state_version"] == 2


def test_connections_beyond_the_cap_are_closed_at_once() -> None:
    with serving(header_timeout_s=10.0) as srv:
        port = srv.server.http_port
        socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(9)]
        try:
            closed: list[int] = []
            deadline = time.monotonic() + 5.0
            while len(closed) < 3 and time.monotonic() < deadline:
                closed += [i for i, s in enumerate(socks)
                           if i not in closed and closed_within(s, 0.05)]
            closed += [i for i, s in enumerate(socks) if i not in closed and closed_within(s, 0.2)]
            assert len(closed) == 3, closed  # PCM_MAX_CONNECTIONS (6) stay open
        finally:
            for s in socks:
                s.close()
        # Once they are gone, new connections are served again.
        def healthy() -> bool:
            with httpx.Client(base_url=srv.http_url, timeout=5) as http:
                try:
                    return http.get("/healthz").status_code == 200
                except httpx.TransportError:
                    return False

        wait_until(healthy, 5.0, "200 from /healthz once the connections closed")
