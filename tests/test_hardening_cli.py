"""Bad input on the command line gets one line and exit code 2, never a traceback (issue 19,
items 10 and 13): a table of the invocations the attack run found, each made on the spot."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from imgcls import checkpoint as ckpt
from imgcls.cli.main import main
from imgcls.cli.output import print_text
from tests.helpers import make_class_folders


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    data = make_class_folders(root / "data", per_class=6, junk=False)
    run = root / "run"
    args = ["-q", "train", str(data), "--out", str(run), "--img-size", "16", "--epochs", "1", "--model", "softmax"]
    assert main(args) == 0
    gallery = root / "gallery"
    assert main(["-q", "gallery", "build", str(run / "best.safetensors"), str(data), "--out", str(gallery)]) == 0
    (root / "empty").mkdir()
    (root / "a-file").write_text("not a folder")
    (root / "nul.jsonl").write_text('{"path": "a\\u0000.png", "labels": ["c"]}\n{"path": "b.png", "labels": ["d"]}\n')
    (root / "huge.csv").write_text("path,labels\n" + "a.png," + "x" * 200_000 + "\n")
    image = next(data.rglob("*.png"))
    return {"root": root, "data": data, "checkpoint": run / "best.safetensors", "image": image, "gallery": gallery}


def _nested_metadata(source: Path, target: Path) -> Path:
    """The checkpoint's safetensors header with metadata nested 100,000 levels deep."""
    blob = source.read_bytes()
    (size,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + size])
    header["__metadata__"][ckpt.METADATA_KEY] = "[" * 100_000 + "]" * 100_000
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    target.write_bytes(struct.pack("<Q", len(text)) + text + blob[8 + size :])
    return target


def _onnx_with_fewer_classes(checkpoint: Path, root: Path) -> Path:
    import onnx

    exported = root / "model.onnx"
    if not exported.exists():
        assert main(["-q", "export", str(checkpoint), "--out", str(exported)]) == 0
    model = onnx.load(str(exported))
    prop = next(p for p in model.metadata_props if p.key == ckpt.METADATA_KEY)
    meta = json.loads(prop.value)
    meta["classes"] = meta["classes"][:-1]
    prop.value = json.dumps(meta)
    target = root / "fewer.onnx"
    onnx.save(model, str(target))
    return target


CASES = {
    "predict --topk 0": lambda w: ["predict", str(w["checkpoint"]), str(w["image"]), "--topk", "0"],
    "train --devices -2": lambda w: ["train", str(w["data"]), "--devices", "-2", "--out", str(w["root"] / "r1")],
    "search --k -1": lambda w: ["search", str(w["gallery"]), str(w["image"]), "--k", "-1"],
    "serve --port 99999": lambda w: ["serve", str(w["checkpoint"]), "--port", "99999"],
    "lr-find --steps 0": lambda w: ["lr-find", str(w["data"]), "--steps", "0", "--out", str(w["root"] / "lr.png")],
    "lr-find --out a .txt plot": lambda w: ["lr-find", str(w["data"]), "--out", str(w["root"] / "lr.txt")],
    "data check EMPTY --fail-on all": lambda w: ["data", "check", str(w["root"] / "empty"), "--fail-on", "all"],
    "train --out under a file": lambda w: ["train", str(w["data"]), "--out", str(w["root"] / "a-file" / "run")],
    "train on a manifest with a NUL byte": lambda w: [
        "train",
        str(w["root"] / "nul.jsonl"),
        "--out",
        str(w["root"] / "r2"),
    ],
    "train on a manifest with a huge field": lambda w: [
        "train",
        str(w["root"] / "huge.csv"),
        "--out",
        str(w["root"] / "r3"),
    ],
    "evaluate --out under a file": lambda w: [
        "evaluate",
        str(w["checkpoint"]),
        str(w["data"]),
        "--out",
        str(w["root"] / "a-file" / "eval"),
    ],
    "predict --out under a file": lambda w: [
        "predict",
        str(w["checkpoint"]),
        str(w["image"]),
        "--out",
        str(w["root"] / "a-file" / "p.csv"),
    ],
    "predict with an ONNX file naming fewer classes than it outputs": lambda w: [
        "predict",
        str(_onnx_with_fewer_classes(w["checkpoint"], w["root"])),
        str(w["image"]),
    ],
    "predict with deeply nested metadata": lambda w: [
        "predict",
        str(_nested_metadata(w["checkpoint"], w["root"] / "nested.safetensors")),
        str(w["image"]),
    ],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_invocations_exit_2_with_one_line(world, case, capsys):
    try:
        code = main(["-q", *CASES[case](world)])
    except SystemExit as stop:  # argparse's usage errors
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_terminal_escapes_in_names_are_printed_escaped(capsys):
    print_text("photo-\x1b[2J\x1b]0;owned\x07.png: cat 99%")
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\\x1b[2J" in out


def test_lr_find_plot_named_without_a_suffix_is_written_where_it_says(world, tmp_path, capsys):
    args = ["lr-find", str(world["data"]), "--model", "softmax", "--img-size", "16", "--steps", "5"]
    assert main([*args, "--out", str(tmp_path / "lr")]) == 0
    said = capsys.readouterr().out.split("plot: ")[1].strip()
    assert said == str(tmp_path / "lr.png") and Path(said).read_bytes().startswith(b"\x89PNG")
