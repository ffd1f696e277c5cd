"""imgcls data check --fail-on / --html / --fix-plan and imgcls data apply: exit codes, the page, the plan
is applied only by apply, with a backup and an undo."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgcls.cli.main import main
from tests.helpers import CLASS_COLOURS, make_class_folders


def listing(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    """train/test of three colour classes with one of each problem: a corrupt file, a leaked copy,
    an identical file under two classes, and a red image filed as a dog."""
    root = tmp_path / "messy"
    make_class_folders(root / "train", per_class=24, seed=1, junk=False)
    make_class_folders(root / "test", per_class=8, seed=2, junk=False)
    (root / "train" / "bird" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    shutil.copy(root / "train" / "bird" / "000.png", root / "test" / "bird" / "leak.png")
    shutil.copy(root / "train" / "bird" / "007.png", root / "train" / "猫" / "twin.png")
    red = np.random.default_rng(9).integers(-50, 50, (40, 40, 3)) + np.array(CLASS_COLOURS["猫"])
    Image.fromarray(np.clip(red, 0, 255).astype(np.uint8)).save(root / "train" / "狗 dog" / "red.png")
    return root


@pytest.mark.slow
def test_fail_on_exit_codes(tmp_path, messy, capsys):
    clean = make_class_folders(tmp_path / "clean", per_class=10, junk=False)
    assert main(["-q", "data", "check", str(clean), "--fail-on", "all", "--no-label-errors"]) == 0
    assert "no problems found" in capsys.readouterr().out
    assert main(["-q", "data", "check", str(messy), "--fail-on", "imbalance,tiny", "--no-label-errors"]) == 0
    for kind in ("corrupt", "leakage", "conflict", "duplicate"):
        assert main(["-q", "data", "check", str(messy), "--fail-on", kind, "--no-label-errors"]) == 1, kind
    assert main(["-q", "data", "check", str(messy), "--fail-on", "leakag"]) == 2  # a typo is bad usage
    assert "unknown kind" in capsys.readouterr().err
    assert main(["-q", "data", "check", str(tmp_path / "missing")]) == 2


def test_label_error_end_to_end_with_json(messy, capsys):
    assert main(["-q", "data", "check", str(messy), "--json", "--fail-on", "label-error"]) == 1
    report = json.loads(capsys.readouterr().out)
    issues = {Path(i["path"]).name: i for i in report["label_errors"]["issues"]}
    assert "red.png" in issues
    assert (issues["red.png"]["given"], issues["red.png"]["suggested"]) == ("狗 dog", "猫")
    assert len(issues) <= 3  # the colour classes are easy: little else may be flagged
    assert report["findings"]["corrupt"] == 1 and report["findings"]["leakage"] == 1
    assert [Path(g[0]["path"]).name for g in report["conflicting_labels"]] == ["007.png"]


def test_html_is_self_contained_and_escaped(tmp_path, messy):
    hostile = messy / "train" / "<script>alert(1)</script>"
    hostile.mkdir(parents=True)  # "</script>" holds a slash: a folder inside a folder
    # A few copies of birds: too few for the label model (a whole second class of the same birds
    # would leave it unable to tell the two apart, too weak to judge any label).
    for path in sorted((messy / "train" / "bird").glob("*.png"))[:3]:
        shutil.copy(path, hostile / path.name)
    page = tmp_path / "report.html"
    assert main(["-q", "data", "check", str(messy), "--html", str(page)]) == 0
    text = page.read_text(encoding="utf-8")
    assert "<script>alert(1)</script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert len(re.findall(r'src="data:image/png;base64,', text)) >= 6  # leak and conflict groups, and more
    assert not re.search(r'(src|href)="(https?:)?//', text)  # nothing loaded from anywhere
    assert "broken.png" in text
    assert "suggested <b>猫</b>" in text  # the red image filed as a dog, with its thumbnail


def test_fix_plan_changes_nothing_until_apply_then_undo(tmp_path, messy, capsys):
    before = listing(messy)
    plan = tmp_path / "plan.csv"
    assert main(["-q", "data", "check", str(messy), "--fix-plan", str(plan)]) == 0
    assert "nothing was changed" in capsys.readouterr().out
    assert listing(messy) == before  # check never touches the data
    with plan.open(encoding="utf-8") as f:
        rows = {row["path"]: row for row in csv.DictReader(f)}
    assert rows["train/bird/broken.png"]["action"] == "drop"
    assert rows["test/bird/leak.png"]["action"] == "drop" and rows["test/bird/leak.png"]["kind"] == "leakage"
    assert rows["train/bird/007.png"]["kind"] == rows["train/猫/twin.png"]["kind"] == "conflict"
    assert rows["train/狗 dog/red.png"]["action"] == "relabel"
    assert rows["train/狗 dog/red.png"]["target"] == "train/猫/red.png"
    assert "train/bird/000.png" not in rows  # the training copy of the leak is kept
    rows["train/bird/007.png"]["action"] = "keep"  # the reviewer keeps one of the conflicting pair
    with plan.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(next(iter(rows.values()))))
        writer.writeheader()
        writer.writerows(rows.values())

    backup = tmp_path / "backup"
    assert main(["-q", "data", "apply", str(plan), "--backup", str(backup)]) == 0
    after = listing(messy)
    gone = {"train/bird/broken.png", "test/bird/leak.png", "train/猫/twin.png", "train/狗 dog/red.png"}
    assert set(before) - set(after) == gone
    assert set(after) - set(before) == {"train/猫/red.png"}
    assert after["train/猫/red.png"] == before["train/狗 dog/red.png"]
    assert "train/bird/007.png" in after  # kept by the reviewer
    saved = listing(backup)
    assert {"plan.csv", "undo.csv", "train/bird/broken.png", "test/bird/leak.png", "train/狗 dog/red.png"} <= set(saved)
    assert saved["test/bird/leak.png"] == before["test/bird/leak.png"]

    assert main(["-q", "data", "apply", str(plan)]) == 2  # files already moved: refused, nothing done
    assert "nothing was changed" in capsys.readouterr().err
    assert listing(messy) == after
    assert main(["-q", "data", "apply", "--undo", str(backup)]) == 0
    assert listing(messy) == before


def test_apply_refuses_a_target_outside_the_data(tmp_path, messy):
    plan = tmp_path / "plan.csv"
    plan.write_text(
        f"action,kind,path,target,reason,root\nrelabel,label-error,train/bird/000.png,../outside.png,test,{messy}\n",
        encoding="utf-8",
    )
    before = listing(messy)
    assert main(["-q", "data", "apply", str(plan)]) == 2
    assert listing(messy) == before and not (tmp_path / "outside.png").exists()
    assert main(["-q", "data", "apply"]) == 2  # neither a plan nor --undo
