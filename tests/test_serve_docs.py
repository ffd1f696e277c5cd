"""The server describes itself: /openapi.json declares /predict's upload, /docs works offline
(Swagger UI from the fastapi-offline package), and without that package /docs is off and the
page says so."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from imgcls import checkpoint as ckpt
from imgcls.data.preprocess import Preprocessing
from imgcls.models import create_model
from imgcls.serve.app import create_app
from tests.helpers import png

CLASSES = ["ant", "bee", "cicada"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained keras-cnn checkpoint: the API's shape does not depend on training."""
    torch.manual_seed(0)
    model = create_model("keras-cnn", num_classes=3, in_chans=3, img_size=16)
    pre = Preprocessing(img_size=16, channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)
    meta = {"task": "single-label", "model": {"name": "keras-cnn", "kwargs": {}}, "classes": CLASSES}
    path = tmp_path_factory.mktemp("docs") / "best.safetensors"
    ckpt.save_checkpoint(path, ckpt.model_tensors(model), {**meta, "preprocess": pre.to_dict()})
    return path


@pytest.fixture(scope="module")
def client(checkpoint) -> TestClient:
    with TestClient(create_app(checkpoint, runtime="torch")) as c:
        yield c


def test_schema_declares_the_multipart_file_and_the_raw_body(client):
    body = client.get("/openapi.json").json()["paths"]["/predict"]["post"]["requestBody"]
    assert body["required"] is True
    form = body["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["file"]
    assert form["properties"]["file"]["type"] == "string" and form["properties"]["file"]["format"] == "binary"
    assert body["content"]["image/*"]["schema"]["format"] == "binary"


def test_a_client_built_from_the_schema_alone_gets_predictions(client):
    """What a generated client does: take the upload field and the media types from the schema."""
    operation = client.get("/openapi.json").json()["paths"]["/predict"]["post"]
    content = operation["requestBody"]["content"]
    (field,) = content["multipart/form-data"]["schema"]["required"]
    answers = [
        client.post("/predict", files={field: ("x.png", png(), "image/png")}),
        client.post("/predict", content=png(), headers={"content-type": "image/png"}),
    ]
    item = operation["responses"]["200"]["content"]["application/json"]["schema"]["properties"]["predictions"]["items"]
    for answer in answers:
        assert answer.status_code == 200
        predictions = answer.json()["predictions"]
        assert {p["label"] for p in predictions} == set(CLASSES)
        assert all(set(item["required"]) <= p.keys() <= item["properties"].keys() for p in predictions)
    assert answers[0].json() == answers[1].json()  # the same image either way
    for status in ("400", "413", "415", "422"):  # every error is {"error": "..."}, as documented
        assert "error" in operation["responses"][status]["content"]["application/json"]["schema"]["properties"]
    invalid = client.post("/predict?topk=0", content=png(), headers={"content-type": "image/png"})
    assert invalid.status_code == 422 and set(invalid.json()) == {"error"}


def test_docs_load_swagger_ui_from_the_server_itself(client):
    page = client.get("/docs")
    assert page.status_code == 200
    assets = [part.split('"')[0].split("'")[0] for part in page.text.split('="')[1:] if part.startswith("/")]
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets) and any(a.endswith(".css") for a in assets)
    assert "http://" not in page.text and "https://" not in page.text  # no CDN
    for asset in assets:
        response = client.get(asset)
        assert response.status_code == 200 and len(response.content) > 1000, asset
    assert client.get("/info").json()["docs"] == "docs"
    assert client.get("/redoc").status_code == 200


def test_without_the_package_docs_are_off_and_the_page_says_so(checkpoint, monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi_offline", None)  # import fails as if not installed
    with TestClient(create_app(checkpoint, runtime="torch")) as c:
        assert c.get("/docs").status_code == 404
        assert c.get("/info").json()["docs"] is None
        assert "/predict" in c.get("/openapi.json").json()["paths"]
        page = c.get("/").text
        assert "fastapi-offline" in page and "imgcls[serve]" in page  # what to install, shown when docs is null
