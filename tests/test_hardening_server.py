"""Attacks on `imgcls serve` (issue 19): memory from small uploads that decode large (item 4)."""

from __future__ import annotations

import asyncio
import struct
import threading
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from imgcls.cli.main import main
from imgcls.inference.predictor import Predictor
from imgcls.serve import memory
from imgcls.serve.app import create_app
from tests.helpers import make_class_folders


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    data = make_class_folders(tmp_path_factory.mktemp("hostile-serve") / "data", per_class=8, junk=False)
    run = data.parent / "run"
    args = ["-q", "train", str(data), "--out", str(run), "--img-size", "16", "--epochs", "1", "--model", "softmax"]
    assert main(args) == 0
    return run / "best.safetensors"


def large_png(side: int) -> bytes:
    """A real side x side black RGB PNG, compressed row by row: a couple of hundred kB that
    decode to side * side * 4 bytes in Pillow."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    squeeze, row, parts = zlib.compressobj(9), b"\0" * (1 + 3 * side), []
    parts = [squeeze.compress(row) for _ in range(side)] + [squeeze.flush()]
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def test_a_small_upload_of_7999_squared_pixels_is_refused_by_default(checkpoint):
    """186 kB that decoded to ~330 MB under training's 64 M-pixel limit: the server's own limit is lower."""
    body = large_png(7999)
    assert len(body) < 1_000_000
    with TestClient(create_app(checkpoint, max_upload_mb=1)) as c:
        assert c.get("/info").json()["max_pixels"] == memory.SERVE_MAX_PIXELS
        response = c.post("/predict", content=body, headers={"content-type": "image/png"})
    assert response.status_code == 413 and "pixels" in response.json()["error"]


def test_decodes_in_flight_are_bounded_by_the_budget_and_the_rest_get_503(checkpoint, monkeypatch):
    predictor = Predictor.from_checkpoint(checkpoint)
    running, most, lock = [0], [0], threading.Lock()
    decode = predictor.decode

    def slow_decode(*args, **kwargs):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.3)
        with lock:
            running[0] -= 1
        return decode(*args, **kwargs)

    monkeypatch.setattr(predictor, "decode", slow_decode)
    monkeypatch.setattr(memory, "SLOT_WAIT_SECONDS", 0.5)
    # A budget of two decodes at the pixel limit.
    budget = 2 * 1_000_000 * memory.PEAK_BYTES_PER_PIXEL / 2**20
    app = create_app(checkpoint, predictor=predictor, max_pixels=1_000_000, decode_budget_mb=budget)

    async def burst() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            body, headers = large_png(40), {"content-type": "image/png"}
            answers = await asyncio.gather(*(client.post("/predict", content=body, headers=headers) for _ in range(8)))
        return [a.status_code for a in answers]

    statuses = asyncio.run(burst())
    assert most[0] == 2  # never more than the budget allows at once
    assert statuses.count(200) >= 2 and set(statuses) <= {200, 503} and 503 in statuses


def test_any_failure_is_a_json_error_even_a_nan_answer(checkpoint):
    """Item 7: a model answering NaN made every /predict a plain-text 500 (NaN is not JSON)."""
    predictor = Predictor.from_checkpoint(checkpoint)
    predictor.run = lambda images: np.full((len(images), len(predictor.classes)), np.nan, dtype=np.float32)
    with TestClient(create_app(checkpoint, predictor=predictor), raise_server_exceptions=False) as c:
        response = c.post("/predict", content=large_png(20), headers={"content-type": "image/png"})
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json" and "error" in response.json()
