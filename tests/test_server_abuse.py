"""The server under abuse: malformed multipart, slow bodies, slow headers (slowloris), more
connections than it takes, and a burst of bad requests. Each gets a 4xx (or its connection
closed) and good requests keep being answered. The slow-client tests run a real uvicorn
server on loopback with the protocol and limits `imgcls serve` uses, with short timeouts."""

from __future__ import annotations

import asyncio
import io
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from imgcls.cli.main import main
from imgcls.serve.app import create_app
from imgcls.serve.limits import SERVER_LIMITS, header_timeout_protocol
from tests.helpers import make_class_folders

BOUNDARY = b"x-boundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY.decode()}"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    data = make_class_folders(tmp_path_factory.mktemp("abuse") / "data", per_class=8, junk=False)
    run = data.parent / "run"
    args = ["-q", "train", str(data), "--out", str(run), "--img-size", "16", "--epochs", "1", "--model", "softmax"]
    assert main(args) == 0
    return run / "best.safetensors"


def png(colour=(210, 60, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((20, 20, 3), colour, np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def part(name: str, body: bytes, filename: str | None = "a.png") -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return b"--" + BOUNDARY + f"\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + body + b"\r\n"


END = b"--" + BOUNDARY + b"--\r\n"

MALFORMED = {
    "missing boundary": (part("file", png()) + END, "multipart/form-data"),
    "other boundary": (part("file", png()).replace(BOUNDARY, b"other") + END, MULTIPART),
    "bytes, not parts": (b"\x00\xff" * 500, MULTIPART),
    "part without a name": (b"--" + BOUNDARY + b"\r\nX-Foo: bar\r\n\r\n" + png() + b"\r\n" + END, MULTIPART),
    "two files": (part("file", png()) * 2 + END, MULTIPART),
    "a thousand fields": (b"".join(part(f"f{i}", b"v", None) for i in range(1000)) + END, MULTIPART),
    "unterminated": (part("file", png())[:-2], MULTIPART),
    "no parts": (END, MULTIPART),
    "a file under another name": (part("image", png()) + END, MULTIPART),
}


@pytest.fixture(scope="module")
def client(checkpoint):
    with TestClient(create_app(checkpoint, max_upload_mb=1, runtime="torch")) as c:
        yield c


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_multipart_is_a_json_400(client, case):
    body, content_type = MALFORMED[case]
    response = client.post("/predict", content=body, headers={"content-type": content_type})
    assert response.status_code == 400
    assert response.json()["error"]


@pytest.mark.slow
def test_a_burst_of_bad_requests_leaves_good_ones_served(client):
    bad = [
        ({"content": b"hello"}, "image/png", 415),
        ({"content": png()[:50]}, "image/png", 400),  # a truncated PNG
        ({"content": b"x" * 1_100_000}, "image/png", 413),
        ({"content": png()}, "text/plain", 415),
        ({"content": b""}, "image/png", 400),
    ] + [({"content": body}, content_type, 400) for body, content_type in MALFORMED.values()]
    for round_ in range(20):
        for kwargs, content_type, status in bad:
            assert client.post("/predict", headers={"content-type": content_type}, **kwargs).status_code == status
        good = client.post("/predict", content=png(), headers={"content-type": "image/png"})
        assert good.status_code == 200 and good.json()["predictions"][0]["label"] == "猫", round_


def test_a_stalled_body_is_answered_408(checkpoint):
    """A body that stops arriving (the client never sends the rest) ends with 408 after the
    body timeout; the test's stream waits on an event that is never set."""
    app = create_app(checkpoint, runtime="torch", body_timeout=0.2)

    async def run() -> httpx.Response:
        never = asyncio.Event()

        async def stalled():
            yield png()[:30]
            await never.wait()

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await c.post("/predict", content=stalled(), headers={"content-type": "image/png"})

    response = asyncio.run(run())
    assert response.status_code == 408
    assert "did not arrive within 0.2 s" in response.json()["error"]
    assert response.headers["connection"] == "close"


# --- a real server: slowloris, stalled bodies, connection limit ------------------------------


class Server:
    """uvicorn in a thread, configured as `imgcls serve` is, with short timeouts."""

    def __init__(self, app, **limits):
        settings = {**SERVER_LIMITS, **limits}
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="warning", http=header_timeout_protocol(0.3), **settings
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        while not self.server.started:
            self.thread.join(0.01)
            assert self.thread.is_alive(), "server did not start"
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"127.0.0.1:{port}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


def _connect(address: str) -> socket.socket:
    host, port = address.split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)  # a failsafe, never reached when all is well
    return sock


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _good(address: str) -> int:
    response = httpx.post(f"http://{address}/predict", content=png(), headers={"content-type": "image/png"})
    return response.status_code


@pytest.fixture(scope="module")
def app(checkpoint):
    return create_app(checkpoint, runtime="torch", body_timeout=0.3)


def test_slow_headers_are_cut_off_and_good_clients_served(app):
    with Server(app) as address:
        slow = [_connect(address) for _ in range(5)]
        for sock in slow:
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")  # and then nothing more
        assert _good(address) == 200  # meanwhile
        for sock in slow:
            assert _read_all(sock) == b""  # closed by the server, no response
            sock.close()
        assert _good(address) == 200


def test_slow_header_after_a_kept_alive_request_is_cut_off(app):
    with Server(app) as address:
        sock = _connect(address)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while not first.endswith(b'{"status":"ok"}'):  # head and body may come in two packets
            chunk = sock.recv(65536)
            assert chunk, first
            first += chunk
        assert first.startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /health HTTP/1.1\r\n")  # the next request's head never completes
        assert _read_all(sock) == b""
        sock.close()


def test_stalled_body_gets_408_and_the_connection_closed(app):
    with Server(app) as address:
        sock = _connect(address)
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 5000\r\n\r\n")
        sock.sendall(png()[:40])
        reply = _read_all(sock)
        sock.close()
        assert reply.startswith(b"HTTP/1.1 408") and b"did not arrive" in reply
        assert _good(address) == 200


def test_a_client_still_sending_an_oversized_body_reads_its_413(checkpoint):
    """The server answers 413 from Content-Length before the body is read, then drops the
    rest as it comes instead of resetting the connection under the sending client."""
    small = create_app(checkpoint, runtime="torch", max_upload_mb=0.1)
    with Server(small) as address, httpx.Client(base_url=f"http://{address}") as client:
        for _ in range(3):
            response = client.post("/predict", content=b"\0" * 2_000_000, headers={"content-type": "image/png"})
            assert response.status_code == 413 and "0.1 MB" in response.json()["error"]
            assert client.post("/predict", content=png(), headers={"content-type": "image/png"}).status_code == 200


def test_more_connections_than_the_limit_get_503_not_memory(checkpoint):
    patient = create_app(checkpoint, runtime="torch", body_timeout=30)  # the held bodies never time out
    server = Server(patient, limit_concurrency=4)
    with server as address:
        held = [_connect(address) for _ in range(3)]  # uvicorn counts the asking connection too
        for sock in held:
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 9\r\n\r\n")
        deadline = time.monotonic() + 30
        while len(server.server.server_state.tasks) < 3 and time.monotonic() < deadline:
            server.thread.join(0.01)  # until all three requests are being served
        assert _good(address) == 503
        for sock in held:
            sock.close()


def test_content_length_with_chunked_is_refused_and_the_connection_closed(app):
    """RFC 9112 section 6.1: a request with both may be an attempt to smuggle a second request
    past a proxy; it is answered 400 and its connection closed, so the smuggled GET is never served."""
    smuggled = b"0\r\n\r\nGET /info HTTP/1.1\r\nHost: x\r\n\r\n"
    head = (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n" % len(smuggled)
    )
    with Server(app) as address:
        sock = _connect(address)
        sock.sendall(head + smuggled)
        reply = _read_all(sock)
        sock.close()
        assert reply.startswith(b"HTTP/1.1 400") and b"Transfer-Encoding" in reply
        assert reply.count(b"HTTP/1.1 ") == 1 and b'"classes"' not in reply
        assert _good(address) == 200


def test_a_client_sending_connection_close_with_an_oversized_body_reads_its_413(checkpoint):
    """Issue 19, item 11: with `Connection: close` the server closed at once after its 413, and
    the body still arriving made the system reset the connection under the client (20 of 20)."""
    small = create_app(checkpoint, runtime="torch", max_upload_mb=0.1)
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nConnection: close\r\n"
    head += b"Content-Length: 4000000\r\n\r\n"
    with Server(small) as address:
        for _ in range(5):
            sock = _connect(address)
            try:
                sock.sendall(head)
                for _ in range(40):  # keeps sending after the answer, as a simple client does
                    sock.sendall(b"\0" * 100_000)
                reply = _read_all(sock)
            except (BrokenPipeError, ConnectionResetError) as err:
                pytest.fail(f"the connection was reset instead of answered: {err!r}")
            finally:
                sock.close()
            assert reply.startswith(b"HTTP/1.1 413") and b"0.1 MB" in reply
        assert _good(address) == 200
