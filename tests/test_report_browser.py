"""The report in a real headless Chromium: it renders every section, its pictures load, its
table sorts, and it loads nothing from the network.

Needs Debian's chromium and chromium-driver (`.ci/run` installs them and sets
IMGCLS_REQUIRE_BROWSER=1, so in CI a missing browser fails instead of skipping).
"""

from __future__ import annotations

import pytest

from imgcls.cli.main import main
from tests.helpers import make_class_folders, require_browser

pytestmark = pytest.mark.slow  # a real browser

require_browser()

SECTIONS = (
    "summary",
    "curves",
    "confusion",
    "pairs",
    "per-class",
    "roc",
    "pr",
    "calibration",
    "coverage",
    "mistakes",
    "confident",
    "explanations",
    "skipped",
)


@pytest.fixture(scope="module")
def report_url(tmp_path_factory) -> str:
    data = make_class_folders(tmp_path_factory.mktemp("report") / "data", per_class=16, junk=True)
    run = data.parent / "run"
    args = ["-q", "train", str(data), "--out", str(run), "--img-size", "32", "--batch-size", "8", "--epochs", "2"]
    assert main(args) == 0
    return (run / "report.html").as_uri()


def test_report_renders_every_section_offline(report_url, browser):
    from selenium.webdriver.common.by import By

    browser.get(report_url)
    assert browser.title == "imgcls report"
    for key in SECTIONS:
        section = browser.find_element(By.ID, key)
        assert section.is_displayed(), key
        assert section.find_element(By.TAG_NAME, "h2").text, key
    broken = browser.execute_script(
        "return Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).length"
    )
    assert broken == 0
    assert browser.execute_script("return document.images.length") >= 10
    fetched = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert [url for url in fetched if not url.startswith("data:")] == []
    assert "猫" in browser.find_element(By.ID, "per-class").text  # a Chinese class name, as text


def test_per_class_table_sorts_on_click(report_url, browser):
    from selenium.webdriver.common.by import By

    browser.get(report_url)
    table = browser.find_element(By.CSS_SELECTOR, "#per-class table")
    support = [th.text for th in table.find_elements(By.TAG_NAME, "th")].index("support")
    header = table.find_elements(By.TAG_NAME, "th")[0]
    header.click()  # by class name, ascending
    names = [row.find_elements(By.TAG_NAME, "td")[0].text for row in table.find_elements(By.CSS_SELECTOR, "tbody tr")]
    assert names == sorted(names, key=str.lower)
    header.click()
    names_desc = [r.find_elements(By.TAG_NAME, "td")[0].text for r in table.find_elements(By.CSS_SELECTOR, "tbody tr")]
    assert names_desc == names[::-1]
    table.find_elements(By.TAG_NAME, "th")[support].click()
    values = [
        float(r.find_elements(By.TAG_NAME, "td")[support].text.replace(",", ""))
        for r in table.find_elements(By.CSS_SELECTOR, "tbody tr")
    ]
    assert values == sorted(values)
