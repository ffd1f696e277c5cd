"""imgcls data check: inventory, unreadable files, duplicates, leakage, conflicting labels."""

from __future__ import annotations

import json
import shutil

import pytest

from imgcls.cli.main import main
from imgcls.doctor.check import check_dataset, problems


def test_clean_split_root_has_no_problems(split_root):
    report = check_dataset(split_root)
    assert set(report["splits"]) == {"train", "val", "test"}
    assert report["splits"]["val"]["images"] == 24
    assert report["splits"]["val"]["classes"] == {"bird": 8, "狗 dog": 8, "猫": 8}
    # train holds the junk files of the fixture: two unreadable images
    assert {item["path"].rsplit("/", 1)[-1] for item in report["unreadable"]} == {"broken.png", "empty.jpg"}
    assert report["leakage"] == [] and report["conflicting_labels"] == []


@pytest.mark.slow
def test_copies_across_splits_and_classes_are_found(split_root, capsys):
    source = next((split_root / "train" / "bird").glob("*.png"))
    shutil.copy(source, split_root / "test" / "bird" / "copy.png")  # leakage, same label
    shutil.copy(source, split_root / "train" / "猫" / "copy.png")  # conflict, same split
    report = check_dataset(split_root)
    assert len(report["exact_duplicates"]) == 1
    group = report["exact_duplicates"][0]
    assert len(group) == 3 and {r["split"] for r in group} == {"train", "test"}
    assert report["leakage"] == [group] and report["conflicting_labels"] == [group]
    assert any("leakage" in line for line in problems(report))

    assert main(["-q", "data", "check", str(split_root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["leakage"] == [group]
    assert main(["-q", "data", "check", str(split_root)]) == 0
    assert "leak:" in capsys.readouterr().out
