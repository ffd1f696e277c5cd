"""The server's web page in a real headless Chromium: choose an image, see its predicted label.

Needs Debian's chromium and chromium-driver (`.ci/run` installs them and sets
IMGCLS_REQUIRE_BROWSER=1, so in CI a missing browser fails instead of skipping).
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from PIL import Image

from imgcls.cli.main import main
from imgcls.serve.app import create_app
from tests.helpers import (
    CLASS_COLOURS,
    COLOURS,
    free_port,
    make_class_folders,
    mosaic,
    png,
    require_browser,
    train_keras_cnn,
    write_csv,
)

pytestmark = pytest.mark.slow  # a real browser

require_browser()


@contextlib.contextmanager
def serving(checkpoint: Path):
    """The app of `checkpoint` on a real uvicorn server in a thread; yields its URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(checkpoint), port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    data = make_class_folders(tmp_path_factory.mktemp("web") / "data", per_class=16, junk=False)
    with serving(train_keras_cnn(data, data.parent / "run", batch_size=16)) as url:
        yield url


@pytest.mark.parametrize("name", sorted(CLASS_COLOURS))
def test_upload_shows_the_predicted_label(server_url, browser, tmp_path: Path, name):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    image = tmp_path / "photo.png"
    image.write_bytes(png(CLASS_COLOURS[name]))
    browser.get(server_url)
    wait = WebDriverWait(browser, 20)
    wait.until(ec.text_to_be_present_in_element((By.ID, "model"), "3 classes"))
    browser.find_element(By.ID, "file").send_keys(str(image))
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#results .prediction")))
    rows = browser.find_elements(By.CSS_SELECTOR, "#results .prediction")
    assert len(rows) == 3
    assert rows[0].find_element(By.CLASS_NAME, "label").text == name
    assert rows[0].find_element(By.CLASS_NAME, "pct").text.endswith("%")
    assert browser.find_element(By.ID, "preview").get_attribute("hidden") is None
    assert browser.find_element(By.ID, "error").text == ""


def test_multi_label_page_marks_the_selected_labels(browser, tmp_path: Path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    rng = np.random.default_rng(1)
    rows = []
    for i in range(60):
        present = [n for n in COLOURS if rng.random() < 0.5]
        cells = [COLOURS[n] for n in present] + [None] * (4 - len(present))
        Image.fromarray(mosaic(cells, rng)).save(tmp_path / f"{i}.png")
        rows.append((f"{i}.png", ";".join(present)))
    write_csv(tmp_path / "m.csv", rows)
    args = [
        "-q",
        "train",
        str(tmp_path / "m.csv"),
        "--out",
        str(tmp_path / "run"),
        "--img-size",
        "16",
        "--batch-size",
        "8",
        "--epochs",
        "2",
        "--model",
        "keras-cnn",
    ]
    assert main(args) == 0
    with serving(tmp_path / "run" / "best.safetensors") as url:
        browser.get(url)
        wait = WebDriverWait(browser, 20)
        wait.until(ec.text_to_be_present_in_element((By.ID, "model"), "3 classes"))
        browser.find_element(By.ID, "file").send_keys(str(tmp_path / "0.png"))
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#results .prediction")))
        rows = browser.find_elements(By.CSS_SELECTOR, "#results .prediction")
        assert len(rows) == 3  # every label of a multi-label model
        marks = [("selected" in r.get_attribute("class")) or ("unselected" in r.get_attribute("class")) for r in rows]
        assert all(marks)


# The page's boxes, top to bottom; none may overlap another (the upload box used to be an
# inline label whose padding spilled over the model line and the preview).
BOXES = ("h1", "#model", "#drop", "#preview", "#results", "#api")


def _rectangles(browser) -> dict[str, dict]:
    script = "return arguments[0].map((s) => { const r = document.querySelector(s).getBoundingClientRect(); "
    script += "return {top: r.top, bottom: r.bottom, left: r.left, right: r.right}; });"
    return dict(zip(BOXES, browser.execute_script(script, list(BOXES)), strict=True))


def _overlap(a: dict, b: dict) -> bool:
    return a["top"] < b["bottom"] and b["top"] < a["bottom"] and a["left"] < b["right"] and b["left"] < a["right"]


@pytest.mark.parametrize(("width", "height"), [(1280, 900), (375, 740)], ids=["desktop", "phone"])
def test_layout_keeps_boxes_apart_and_scales_a_small_image_up(server_url, browser, tmp_path: Path, width, height):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    image = tmp_path / "small.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28, 3), dtype=np.uint8)).save(image)
    browser.set_window_size(width, height)
    browser.get(server_url)
    wait = WebDriverWait(browser, 20)
    wait.until(ec.text_to_be_present_in_element((By.ID, "model"), "3 classes"))
    browser.find_element(By.ID, "file").send_keys(str(image))
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#results .prediction")))
    preview = browser.find_element(By.ID, "preview")
    wait.until(lambda _: browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", preview))
    shot = tmp_path / f"page-{width}.png"
    assert browser.save_screenshot(str(shot)) and Image.open(shot).size[0] > 0

    boxes = _rectangles(browser)
    for box in BOXES:
        assert boxes[box]["bottom"] > boxes[box]["top"], f"{box} is not shown"
    overlapping = [(a, b) for i, a in enumerate(BOXES) for b in BOXES[i + 1 :] if _overlap(boxes[a], boxes[b])]
    assert not overlapping, f"boxes overlap: {overlapping} ({boxes})"
    viewport = browser.execute_script("return document.documentElement.clientWidth")
    assert browser.execute_script("return document.documentElement.scrollWidth") <= viewport  # no sideways scroll
    assert all(boxes[box]["right"] <= viewport for box in BOXES)
    # The 28 px image is drawn several times larger, with sharp pixels.
    drawn = browser.execute_script(
        "const p = arguments[0]; return Math.min(p.clientWidth / p.naturalWidth, p.clientHeight / p.naturalHeight);",
        preview,
    )
    assert drawn >= 4
    assert preview.value_of_css_property("image-rendering") == "pixelated"


def test_api_docs_work_offline_and_offer_a_file_field(server_url, browser):
    """/docs is Swagger UI served by the app itself (the browser here has no internet), and
    "Try it out" on /predict offers the file field the schema declares."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.set_window_size(1280, 900)
    browser.get(server_url)
    wait = WebDriverWait(browser, 20)
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#api a[href='docs']")))
    browser.get(server_url + "docs")
    operation = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#operations-default-predict_predict_post")))
    operation.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
    wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, ".try-out__btn"))).click()
    field = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "input[type='file']")))
    assert field.is_displayed()
    scripts = [s.get_attribute("src") for s in browser.find_elements(By.TAG_NAME, "script") if s.get_attribute("src")]
    assert scripts and all(src.startswith(server_url) for src in scripts)  # nothing from elsewhere
