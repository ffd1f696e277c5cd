"""Retrieval through the command line (in-process) and the server's gallery routes."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from imgcls.cli.main import main
from imgcls.retrieval.gallery import Gallery, GalleryError
from imgcls.serve.app import create_app
from tests.helpers import CLASS_COLOURS, make_class_folders, tiny_model

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """The shared tiny model (trained on the two animal classes; birds kept aside to enrol),
    held-out images of all three classes, and a gallery of the two known classes."""
    model = dict(tiny_model())
    root = tmp_path_factory.mktemp("retrieval-cli")
    model["held"] = make_class_folders(root / "held", per_class=4, seed=7, junk=False)
    model["gallery"] = root / "gallery"
    args = ["-q", "gallery", "build", str(model["checkpoint"]), str(model["known"]), "--out", str(model["gallery"])]
    assert main(args) == 0
    return model


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_embed_writes_npy_and_paths(setup, tmp_path, capsys):
    out = tmp_path / "emb.npy"
    assert main(["-q", "embed", str(setup["checkpoint"]), str(setup["birds"]), "--out", str(out)]) == 0
    vectors = np.load(out, allow_pickle=False)
    sidecar = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert vectors.shape == (12, sidecar["dim"]) and len(sidecar["paths"]) == 12
    assert sidecar["paths"][0].startswith(str(setup["birds"]))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_enrol_recognize_search_calibrate_remove(setup, tmp_path, capsys):
    gallery = tmp_path / "gallery"
    args = ["-q", "gallery", "build", str(setup["checkpoint"]), str(setup["known"]), "--out", str(gallery)]
    assert main(args) == 0
    birds = sorted(str(p) for p in setup["birds"].iterdir())[:5]
    assert main(["-q", "gallery", "add", str(gallery), "--label", "bird", *birds]) == 0
    capsys.readouterr()
    assert main(["-q", "gallery", "info", str(gallery), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["labels"] == {"bird": 5, "狗 dog": 12, "猫": 12} and info["threshold"] is None

    held = setup["held"]
    queries = [str(held / name / "000.png") for name in sorted(CLASS_COLOURS)]
    assert main(["-q", "recognize", str(gallery), *queries, "--json", "--topk", "2"]) == 0
    answers = _json_lines(capsys.readouterr().out)
    assert [a["label"] for a in answers] == sorted(CLASS_COLOURS)  # the enrolled birds are recognised too
    assert all(len(a["candidates"]) == 2 and -1 <= a["similarity"] <= 1 for a in answers)

    assert main(["-q", "search", str(gallery), queries[0], "--k", "4", "--json"]) == 0
    (result,) = _json_lines(capsys.readouterr().out)
    assert [m["label"] for m in result["matches"]] == ["bird"] * 4
    scores = [m["similarity"] for m in result["matches"]]
    assert scores == sorted(scores, reverse=True) and all(Path(m["path"]).is_file() for m in result["matches"])

    assert main(["-q", "gallery", "calibrate", str(gallery), str(held), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["known_images"] == 12 and stats["unknown_images"] == 0
    assert Gallery.load(gallery).threshold == pytest.approx(stats["threshold"])

    assert main(["-q", "gallery", "remove", str(gallery), "--label", "bird"]) == 0
    assert "bird" not in Gallery.load(gallery).counts()
    capsys.readouterr()
    assert main(["-q", "gallery", "remove", str(gallery), "--label", "bird"]) == 2
    assert "no label 'bird'" in capsys.readouterr().err


def test_unenrolled_class_is_unknown_after_calibration(setup, tmp_path, capsys):
    gallery = setup["gallery"]
    # held/ has bird images, which the gallery never enrolled: the calibration's unknowns.
    assert main(["-q", "gallery", "calibrate", str(gallery), str(setup["held"]), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["unknown_images"] == 4 and stats["known_images"] == 8
    assert main(["-q", "recognize", str(gallery), str(setup["birds"]), "--json"]) == 0
    labels = [a["label"] for a in _json_lines(capsys.readouterr().out)]
    assert labels.count("unknown") >= 10  # calibrated on other birds; these 12 were never seen


def test_cluster_writes_csv_sheets_and_scores(setup, tmp_path, capsys):
    out = tmp_path / "clusters"
    args = ["-q", "cluster", str(setup["held"]), "--checkpoint", str(setup["checkpoint"]), "--k", "3"]
    assert main([*args, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    rows = list(csv.DictReader(open(out / "clusters.csv", encoding="utf-8")))
    assert len(rows) == 12 and {r["folder"] for r in rows} == set(CLASS_COLOURS)
    assert len({r["cluster"] for r in rows}) == 3
    assert sorted(p.name for p in out.glob("cluster-*.png")) == [
        "cluster-000.png",
        "cluster-001.png",
        "cluster-002.png",
    ]
    assert "purity" in text and "NMI" in text


def _png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((30, 30, 3), colour, np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_server_recognizes_searches_and_protects_enrolment(setup, tmp_path):
    import shutil

    gallery = shutil.copytree(setup["gallery"], tmp_path / "gallery")
    bird = _png(CLASS_COLOURS["bird"])
    with TestClient(create_app(setup["checkpoint"], gallery=gallery, admin_token=TOKEN, runtime="torch")) as client:
        answer = client.post("/recognize?topk=2", files={"file": ("cat.png", _png(CLASS_COLOURS["猫"]), "image/png")})
        assert answer.status_code == 200 and answer.json()["candidates"][0]["label"] == "猫"
        found = client.post("/search?k=3", content=bird, headers={"content-type": "image/png"})
        assert found.status_code == 200 and len(found.json()["matches"]) == 3
        names = {Path(p).name for p in json.loads((gallery / "items.json").read_text(encoding="utf-8"))["paths"]}
        for match in found.json()["matches"]:  # a file's name, not where the server keeps it
            assert "/" not in match["name"] and match["name"] in names and "path" not in match

        files = [("file", (f"b{i}.png", bird, "image/png")) for i in range(2)]
        assert client.post("/gallery/bird", files=files).status_code == 401
        wrong = client.post("/gallery/bird", files=files, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        info = client.get("/gallery").json()
        assert info["labels"] == {"狗 dog": 12, "猫": 12} and info["enrolment"] == "token"
        assert info["model"]["checkpoint"] == "best.safetensors"  # the name, not where the server keeps it
        done = client.post("/gallery/bird", files=files, headers={"Authorization": f"Bearer {TOKEN}"})
        assert done.status_code == 200 and done.json() == {"label": "bird", "enrolled": 2, "images": 26}
        answer = client.post("/recognize", content=bird, headers={"content-type": "image/png"})
        assert answer.json()["label"] == "bird"
        assert client.post("/search", content=b"not an image", headers={"content-type": "image/png"}).status_code == 415
    assert Gallery.load(gallery).counts()["bird"] == 2  # enrolment was saved
    assert all(Path(p).is_file() for p in Gallery.load(gallery).paths[-2:])

    with TestClient(create_app(setup["checkpoint"], gallery=gallery, runtime="torch")) as client:
        refused = client.post("/gallery/bird", files=files, headers={"Authorization": f"Bearer {TOKEN}"})
        assert refused.status_code == 403 and "read-only" in refused.json()["error"]


def test_server_refuses_a_gallery_of_another_model(setup, tmp_path):
    from imgcls import checkpoint as ckpt

    tensors, meta = ckpt.load_checkpoint(setup["checkpoint"])
    tensors = {k: v + 0.01 if v.is_floating_point() else v for k, v in tensors.items()}  # retrained, say
    other = tmp_path / "other.safetensors"
    ckpt.save_checkpoint(other, tensors, {k: v for k, v in meta.items() if k not in ("schema", "imgcls_version")})
    with pytest.raises(GalleryError, match="was built with checkpoint"):
        create_app(other, gallery=setup["gallery"], runtime="torch")


def test_server_answers_409_for_an_empty_gallery(setup, tmp_path):
    import shutil

    folder = shutil.copytree(setup["gallery"], tmp_path / "gallery")
    gallery = Gallery.load(folder)
    for label in list(gallery.counts()):
        gallery.remove(label)
    gallery.save(folder)
    with TestClient(create_app(setup["checkpoint"], gallery=folder, runtime="torch")) as client:
        for route in ("/recognize", "/search"):
            response = client.post(route, content=_png((0, 0, 0)), headers={"content-type": "image/png"})
            assert response.status_code == 409 and "empty" in response.json()["error"]


def test_cli_and_server_enrolling_into_one_gallery_lose_nothing(setup, tmp_path):
    """Issue 19, item 6: `gallery add` from the command line while `serve --gallery` holds the same
    gallery; the server's next enrolment used to rewrite the gallery from its memory."""
    import shutil

    gallery = shutil.copytree(setup["gallery"], tmp_path / "gallery")
    bird, auth = _png(CLASS_COLOURS["bird"]), {"Authorization": f"Bearer {TOKEN}", "content-type": "image/png"}
    birds = sorted(str(p) for p in Path(setup["birds"]).iterdir())
    with TestClient(create_app(setup["checkpoint"], gallery=gallery, admin_token=TOKEN, runtime="torch")) as client:
        assert (
            client.post("/gallery/bird", content=bird, headers={**auth, "content-type": "image/png"}).status_code == 200
        )
        assert main(["-q", "gallery", "add", str(gallery), "--label", "cli-bird", *birds[:3]]) == 0
        again = client.post("/gallery/owl", content=bird, headers=auth)
        assert again.status_code == 200 and again.json()["images"] == 24 + 1 + 3 + 1
        assert client.get("/gallery").json()["labels"]["cli-bird"] == 3  # the server sees the CLI's images too
    counts = Gallery.load(gallery).counts()
    assert (counts["bird"], counts["cli-bird"], counts["owl"]) == (1, 3, 1)
    stale = Gallery.load(gallery)
    assert main(["-q", "gallery", "add", str(gallery), "--label", "late", birds[3]]) == 0
    with pytest.raises(GalleryError, match="changed"):
        stale.save(gallery)  # a writer holding an older copy is refused, not allowed to overwrite


def test_gallery_routes_have_the_limits_and_error_format_of_predict(setup, tmp_path):
    """Issue 19, item 12: one error format ({"error"}) and the same limits for every route."""
    import shutil

    gallery = shutil.copytree(setup["gallery"], tmp_path / "gallery")
    bird, auth = _png(CLASS_COLOURS["bird"]), {"Authorization": f"Bearer {TOKEN}", "content-type": "image/png"}
    with TestClient(create_app(setup["checkpoint"], gallery=gallery, admin_token=TOKEN, runtime="torch")) as client:
        for bad in ["a\0b", "a\r\nSet-Cookie: x", "x" * 8000, "a/b", "\x1b[2J"]:
            answer = client.post(f"/gallery/{quote(bad, safe='')}", content=bird, headers=auth)
            assert answer.status_code == 400 and "label" in answer.json()["error"], bad
        for url in ["/search?k=0", "/recognize?topk=-1", "/predict?topk=0"]:
            answer = client.post(url, content=bird, headers={"content-type": "image/png"})
            assert answer.status_code == 422 and set(answer.json()) == {"error"}, url
        assert set(client.get("/no-such-route").json()) == {"error"}
        fields = b"".join(b'--B\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nx\r\n' % i for i in range(1000))
        many = client.post(
            "/search", content=fields + b"--B--\r\n", headers={"content-type": "multipart/form-data; boundary=B"}
        )
        assert many.status_code == 400 and "multipart" in many.json()["error"]
    assert set(Gallery.load(gallery).counts()) == {"狗 dog", "猫"}  # nothing was enrolled
