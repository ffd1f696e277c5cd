"""The HTTP server through FastAPI's test client: every status it promises, batching, ONNX."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from imgcls.inference.predictor import Predictor
from imgcls.serve.app import create_app
from tests.helpers import CLASS_COLOURS, make_class_folders, png, train_keras_cnn


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    data = make_class_folders(tmp_path_factory.mktemp("serve") / "data", per_class=16, junk=False)
    return train_keras_cnn(data, data.parent / "run", batch_size=16)


@pytest.fixture(scope="module")
def client(checkpoint) -> TestClient:
    with TestClient(create_app(checkpoint, max_upload_mb=0.05)) as c:  # 50 kB: easy to exceed in a test
        yield c


def test_health_info_and_page(client):
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/info").json()
    assert info["classes"] == sorted(CLASS_COLOURS) and info["input_size"] == 32 and info["format"] == "checkpoint"
    assert info["runtime"] == "onnxruntime"  # a checkpoint is served through ONNX Runtime by default
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'type="file"' in page.text and "predict" in page.text
    assert "/predict" in client.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize("name", sorted(CLASS_COLOURS))
def test_multipart_upload_predicts_the_class(client, name):
    response = client.post("/predict?topk=2", files={"file": ("x.png", png(CLASS_COLOURS[name]), "image/png")})
    assert response.status_code == 200
    predictions = response.json()["predictions"]
    assert len(predictions) == 2 and predictions[0]["label"] == name
    scores = [p["score"] for p in predictions]
    assert scores == sorted(scores, reverse=True) and 0 <= scores[1] <= scores[0] <= 1


def test_raw_image_body_and_default_topk(client):
    response = client.post("/predict", content=png(mode="L"), headers={"content-type": "image/png"})
    assert response.status_code == 200
    predictions = response.json()["predictions"]
    assert len(predictions) == 3  # default 5, but the model has three classes
    assert abs(sum(p["score"] for p in predictions) - 1) < 1e-4


@pytest.mark.parametrize(
    ("body", "content_type", "status", "words"),
    [
        (b"hello", "text/plain", 415, "content type"),
        (b"hello", "image/png", 415, "not an image"),
        (png()[:60], "image/png", 400, "cannot decode"),
        (b"", "image/png", 400, "no image"),
        (b"\0" * 60_000, "image/png", 413, "over the limit"),
    ],
)
def test_bad_requests_get_clear_json_errors(client, body, content_type, status, words):
    response = client.post("/predict", content=body, headers={"content-type": content_type})
    assert response.status_code == status
    assert words in response.json()["error"]


def test_a_streamed_body_over_the_limit_is_cut_off(client):
    """Raw ASGI, as a server hands over a chunked upload: no Content-Length, 100 chunks of
    10 kB. The app must answer 413 after reading just past its 50 kB limit."""
    received, sent = [], []
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/predict",
        "raw_path": b"/predict",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"test"), (b"content-type", b"image/png"), (b"transfer-encoding", b"chunked")],
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
    }

    async def receive():
        received.append(1)
        return {"type": "http.request", "body": b"\0" * 10_000, "more_body": len(received) < 100}

    async def send(message):
        sent.append(message)

    asyncio.run(client.app(scope, receive, send))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 413
    assert len(received) <= 6  # 50 kB / 10 kB, plus the chunk that crossed the limit


def test_multipart_without_the_file_field(client):
    response = client.post("/predict", data={"other": "x"}, files={"picture": ("x.png", png(), "image/png")})
    assert response.status_code == 400 and "'file'" in response.json()["error"]


def test_pixel_limit(checkpoint):
    with TestClient(create_app(checkpoint, max_pixels=1000)) as c:
        response = c.post("/predict", content=png(size=(40, 30)), headers={"content-type": "image/png"})
        assert response.status_code == 413 and "pixels" in response.json()["error"]
        assert c.post("/predict", content=png(size=(30, 30)), headers={"content-type": "image/png"}).status_code == 200


def test_concurrent_requests_share_model_calls(checkpoint):
    predictor = Predictor.from_checkpoint(checkpoint)
    calls = []
    run = predictor.run

    def counting_run(images):
        calls.append(len(images))
        return run(images)

    predictor.run = counting_run
    app = create_app(checkpoint, predictor=predictor)
    colours = list(CLASS_COLOURS.items())

    async def many() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            requests = [
                c.post("/predict", content=png(colours[i % 3][1]), headers={"content-type": "image/png"})
                for i in range(24)
            ]
            return await asyncio.gather(*requests)

    responses = asyncio.run(many())
    assert all(r.status_code == 200 for r in responses)
    # Every answer is its own image's, not a neighbour's from the same batch.
    assert [r.json()["predictions"][0]["label"] for r in responses] == [colours[i % 3][0] for i in range(24)]
    assert sum(calls) == 24 and len(calls) < 24  # batched


def test_serves_an_onnx_export_the_same_way(checkpoint, tmp_path, client):
    from imgcls.inference.export import export_onnx

    model = tmp_path / "model.onnx"
    export_onnx(checkpoint, model, pixels=True)
    with TestClient(create_app(model)) as c:
        assert c.get("/info").json()["format"] == "onnx"
        image = png(CLASS_COLOURS["bird"])
        got = c.post("/predict", content=image, headers={"content-type": "image/png"}).json()["predictions"]
    want = client.post("/predict", content=image, headers={"content-type": "image/png"}).json()["predictions"]
    assert [p["label"] for p in got] == [p["label"] for p in want]
    assert max(abs(p["score"] - q["score"]) for p, q in zip(got, want, strict=True)) < 1e-4


def test_a_network_onnx_cannot_take_is_served_by_pytorch(checkpoint, monkeypatch, caplog, tmp_path):
    import imgcls.inference.onnx_graph
    from imgcls.errors import ExportError

    monkeypatch.setenv("IMGCLS_CACHE_DIR", str(tmp_path))  # no graph converted by an earlier test

    def refuse(*args, **kwargs):
        raise ExportError("model 'keras-cnn' cannot be exported to ONNX: unsupported operator")

    monkeypatch.setattr(imgcls.inference.onnx_graph, "to_onnx_bytes", refuse)
    with TestClient(create_app(checkpoint)) as c:
        assert c.get("/info").json()["runtime"] == "torch"
        response = c.post("/predict", content=png(CLASS_COLOURS["bird"]), headers={"content-type": "image/png"})
        assert response.status_code == 200 and response.json()["predictions"][0]["label"] == "bird"
    assert "running on PyTorch" in caplog.text and "unsupported operator" in caplog.text


def test_a_failing_model_answers_500_and_the_server_goes_on(checkpoint):
    predictor = Predictor.from_checkpoint(checkpoint)
    run, calls = predictor.run, []

    def flaky(images):
        calls.append(len(images))
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        return run(images)

    predictor.run = flaky
    with TestClient(create_app(checkpoint, predictor=predictor)) as c:
        first = c.post("/predict", content=png(), headers={"content-type": "image/png"})
        assert first.status_code == 500 and "RuntimeError" in first.json()["error"]
        second = c.post("/predict", content=png(CLASS_COLOURS["bird"]), headers={"content-type": "image/png"})
        assert second.status_code == 200 and second.json()["predictions"][0]["label"] == "bird"
