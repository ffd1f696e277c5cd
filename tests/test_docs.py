"""The documentation cannot drift from the code: configuration.md is what config_docs writes,
the README's Python example runs, and every link between the documents leads to a file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from imgcls.config_docs import COMMAND, render
from tests.helpers import make_class_folders, write_png

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"


def test_configuration_doc_is_generated_from_config_py():
    written = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    if written != render():
        pytest.fail(f"docs/configuration.md differs from imgcls/config.py; regenerate it: `{COMMAND}` (or make docs)")


def test_readme_is_a_front_door():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 150
    assert "<!-- photos-quickstart -->" in text and "<!-- /photos-quickstart -->" in text


@pytest.mark.slow
def test_readme_python_example_runs(tmp_path, monkeypatch):
    text = README.read_text(encoding="utf-8")
    block = re.search(r"<!-- api-example -->\n```python\n(.*?)```\n<!-- /api-example -->", text, re.S)
    assert block, "the README's Python example is marked <!-- api-example --> ... <!-- /api-example -->"
    code = block.group(1)
    assert len(code.strip().splitlines()) <= 12
    make_class_folders(tmp_path / "photos", per_class=8, junk=False)
    write_png(tmp_path / "new.jpg", (210, 60, 40))
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "runs" / "api" / "best.safetensors").is_file()


def test_links_between_documents_lead_to_files():
    broken = []
    for doc in [README, *sorted((ROOT / "docs").rglob("*.md")), ROOT / "benchmarks" / "RESULTS.md"]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text(encoding="utf-8")):
            if "://" not in target and not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert broken == []
