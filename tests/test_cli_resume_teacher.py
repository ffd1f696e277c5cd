"""Small frictions: --resume after the up arrow, and a teacher's input size taken by default."""

from __future__ import annotations

from imgcls.cli.main import main
from imgcls.config import load_config

FAST = ["--img-size", "24", "--batch-size", "16", "--set", "train.threads=1"]


def test_resume_accepts_the_command_that_started_the_run_and_names_what_differs(class_folders, tmp_path, capsys):
    run = tmp_path / "run"
    command = ["-q", "train", str(class_folders), *FAST, "--epochs", "1", "--out", str(run)]
    assert main(command) == 0
    assert main([*command, "--resume"]) == 0  # the same options again: fine
    capsys.readouterr()
    changed = [arg if arg != "24" else "28" for arg in command]
    assert main([*changed, "--epochs", "3", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "data.img_size 28 differs from the run's 24" in err and "train.epochs 3 differs from the run's 1" in err


def test_a_student_takes_the_teachers_input_size_unless_told(class_folders, tmp_path):
    teacher = tmp_path / "teacher"
    common = ["-q", "train", str(class_folders), "--batch-size", "16", "--epochs", "1", "--set", "train.threads=1"]
    assert main([*common, "--img-size", "40", "--out", str(teacher)]) == 0
    student = tmp_path / "student"
    assert main([*common, "--teacher", str(teacher / "best.safetensors"), "--out", str(student)]) == 0
    config = load_config(student / "config.yaml")
    assert config.data.img_size == 40 and config.data.channels == "3"
