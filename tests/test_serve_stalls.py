"""Stalled clients never lock others out (issue 18, item 2): a request takes a queue place only once its whole body
has arrived (within ``body_timeout_s``), and a connection whose headers do not arrive within ``header_timeout_s``
is closed."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from polymodal.serve import ServeConfig, create_app
from polymodal.serve import _connections
from polymodal.tasks import load_run
from test_serve import AUTH, KEY, Server, _free_port, run_dir  # noqa: F401 - run_dir is a fixture

STALLED = 16


@pytest.fixture(scope="module")
def server(run_dir):  # noqa: F811
    old = _connections.HEADER_TIMEOUT_S
    _connections.HEADER_TIMEOUT_S = 1.0
    cfg = ServeConfig(port=_free_port(), api_key=KEY, max_queue=2, body_timeout_s=2.0, header_timeout_s=1.0)
    # uvicorn with the service's own protocol class (header timeout) and no concurrency cap of its own, as serve() runs it
    srv = Server(create_app(load_run(run_dir), cfg), cfg.port, http=_connections.protocol_class(), limit_concurrency=None)
    yield srv
    srv.stop()
    _connections.HEADER_TIMEOUT_S = old


def _stalled(port: int, request: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(20)
    s.sendall(request)
    return s


def _read_all(s: socket.socket) -> bytes:
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return out


def test_clients_stalled_after_their_headers_do_not_lock_others_out(server):
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n").encode()
    stalled = [_stalled(server.port, head) for _ in range(STALLED)]  # headers, then nothing: 8x the queue
    try:
        time.sleep(0.3)  # let the server see them all
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as c:
            codes = [c.post("/v1/predict", json={"text": "red apple"}).status_code for _ in range(5)]
        assert codes == [200] * 5
        answers = [_read_all(s) for s in stalled]  # each stalled upload ends with a 408 and a closed connection
        assert all(a.startswith(b"HTTP/1.1 408") and b"body_timeout" in a for a in answers), answers[0][:200]
    finally:
        for s in stalled:
            s.close()


def test_connections_that_withhold_their_headers_are_closed(server):
    partial = [_stalled(server.port, b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nX-Slow: ") for _ in range(STALLED)]
    try:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as c:
            assert c.post("/v1/predict", json={"text": "blue sky"}).status_code == 200
        assert all(_read_all(s) == b"" for s in partial)  # closed by the server after header_timeout_s, no answer
    finally:
        for s in partial:
            s.close()
