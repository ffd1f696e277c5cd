"""`--log tensorboard`: event files a user opens with `tensorboard --logdir RUN_DIR`."""

from __future__ import annotations

import json

import pytest

from imgcls.cli.main import main
from imgcls.errors import MissingExtraError


def _events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: dict[str, list] = {}
    for events in sorted(folder.rglob("events.out.tfevents.*")):  # add_scalars writes one folder per curve
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0, "images": 0})
        accumulator.Reload()
        name = events.parent.relative_to(folder).as_posix()
        for tag in accumulator.Tags()["scalars"]:
            tags.setdefault(f"{tag}@{name}", []).extend(e.value for e in accumulator.Scalars(tag))
        for tag in accumulator.Tags()["images"]:
            tags.setdefault(tag, []).extend(accumulator.Images(tag))
    return tags


@pytest.mark.slow
def test_tensorboard_logs_steps_epochs_images_and_the_confusion_matrix(class_folders, tmp_path):
    run = tmp_path / "run"
    args = ["-q", "train", str(class_folders), "--out", str(run), "--model", "lenet", "--img-size", "24"]
    assert main([*args, "--epochs", "2", "--batch-size", "2", "--log", "tensorboard"]) == 0
    tags = _events(run / "tensorboard")
    steps = tags["step/train_loss@."]
    assert len(steps) >= 2 and len(tags["step/lr@."]) == len(steps)  # every 20 steps: 28 steps an epoch, 2 epochs
    history = [line.split(",") for line in (run / "history.csv").read_text().splitlines()[1:]]
    val_loss = tags["epoch/loss@epoch_loss_val"]
    assert val_loss == pytest.approx([float(row[3]) for row in history], abs=1e-6)
    assert len(tags["epoch/acc@epoch_acc_train"]) == 2 and len(tags["epoch/images_per_second@."]) == 2
    assert len(tags["val/predictions"]) == 2  # a grid of predicted images each epoch
    assert len(tags["final/confusion_matrix"]) == 1
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert tags["final/accuracy@."] == pytest.approx([metrics["accuracy"]])


def test_without_tensorboard_the_run_names_the_extra(class_folders, tmp_path, monkeypatch, capsys):
    import imgcls.training.tracking as tracking

    def missing(module, extra):
        raise MissingExtraError(f"needs tensorboard: pip install 'imgcls[{extra}]'")

    monkeypatch.setattr(tracking, "require", missing)
    run = tmp_path / "run"
    code = main(["train", str(class_folders), "--out", str(run), "--model", "lenet", "--log", "tensorboard"])
    err = capsys.readouterr().err
    assert code == 2 and "imgcls[track]" in err and "Traceback" not in err
    assert not (run / "best.safetensors").exists()
