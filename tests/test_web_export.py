"""`imgcls export --format web` in a real headless Chromium: the static folder classifies ten
dropped images with no server behind it but a static one, as `imgcls predict` does; and its
client.js is docs/deploy.md's browser client, word for word.

Needs Debian's chromium and chromium-driver (as tests/test_web_page.py) and npm, which the
export uses once to fetch onnxruntime-web into imgcls's cache folder (~/.cache/imgcls).
"""

from __future__ import annotations

import contextlib
import functools
import json
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from imgcls.cli.main import main
from tests.helpers import doc_block, make_class_folders, make_mixed_folder

WEB = Path(__file__).resolve().parents[1] / "imgcls" / "inference" / "web"


@contextlib.contextmanager
def static_server(folder: Path):
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:  # the test's output is its figures, not a request log
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("webexport")
    data = make_class_folders(root / "data", per_class=16, junk=False)
    args = ["-q", "train", str(data), "--out", str(root / "run"), "--img-size", "32", "--batch-size", "16"]
    assert main([*args, "--epochs", "1"]) == 0
    checkpoint = root / "run" / "best.safetensors"
    assert main(["-q", "export", str(checkpoint), "--format", "web", "--out", str(root / "site")]) == 0
    return checkpoint, root / "site"


def test_the_page_uses_the_documented_client():
    assert (WEB / "client.js").read_text(encoding="utf-8") == doc_block("js")


def test_the_folder_holds_everything_the_page_loads(site):
    _, folder = site
    names = {p.name for p in folder.iterdir()}
    assert {"index.html", "client.js", "model.onnx", "metadata.json", "ort.wasm.min.mjs"} <= names
    assert "ort-wasm-simd-threaded.wasm" in names and "node_modules" not in names
    metadata = json.loads((folder / "metadata.json").read_text(encoding="utf-8"))
    assert json.loads(metadata["classes"]) == ["bird", "狗 dog", "猫"]


def test_ten_dropped_images_get_imgcls_predict_labels(site, browser, tmp_path, capsys):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    checkpoint, folder = site
    mixed = make_mixed_folder(tmp_path / "mixed")
    # Ten of the awkward ones: large, EXIF-rotated and CMYK JPEGs, transparency, palette, grey, a strip.
    files = sorted(mixed.rglob("*"))
    chosen = [p for p in files if p.is_file() and p.name.split("-")[0] in {"01", "04", "05", "06", "07", "08", "09"}]
    chosen = chosen[::2][:10]
    assert len(chosen) == 10
    capsys.readouterr()
    assert main(["-q", "predict", str(checkpoint), *map(str, chosen), "--json", "--topk", "1"]) == 0
    expected = [json.loads(line)["predictions"][0] for line in capsys.readouterr().out.splitlines()]

    with static_server(folder) as url:
        browser.get(url)
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: b.find_element(By.ID, "status").get_attribute("data-ready") == "1")
        browser.find_element(By.ID, "files").send_keys("\n".join(map(str, chosen)))
        done = "#results li[data-label], #results li[data-error]"
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, done)) == 10)
        rows = browser.find_elements(By.CSS_SELECTOR, "#results li")
        got = [
            (r.get_attribute("data-name"), r.get_attribute("data-label"), r.get_attribute("data-score")) for r in rows
        ]
    assert [name for name, _, _ in got] == [p.name for p in chosen]
    assert [label for _, label, _ in got] == [e["label"] for e in expected]
    gaps = [abs(float(score) - e["score"]) for (_, _, score), e in zip(got, expected, strict=True)]
    print(f"browser vs imgcls predict: top-1 10/10, largest top-1 score gap {max(gaps):.4f}")
    assert max(gaps) <= 5e-2  # as the Python client: JPEG draft decoding and browser decoders
