"""Predictor: a checkpoint file in, top-k labels with scores out.

Predictor.from_checkpoint(path): read metadata -> create the model it names -> load the
weights -> decode and normalise images exactly as in training -> probabilities -> top-k.
Predictor.from_onnx(path) does the same through ONNX Runtime from an exported file.
Never imports training code, so `imgcls predict` starts fast.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from imgcls import __version__
from imgcls import checkpoint as ckpt
from imgcls.data.preprocess import Preprocessing
from imgcls.data.sources import is_image_file, list_images
from imgcls.data.spill import cache_dir
from imgcls.device import choose_autocast, cpu_has_bf16, resolve_device
from imgcls.errors import ImgclsError
from imgcls.files import path_under
from imgcls.inference.batched import batched_logits, is_multilabel, prepare_for_inference, to_probabilities
from imgcls.models.registry import is_classic
from imgcls.progress import progress_bar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    path: str
    labels: tuple[tuple[str, float], ...] = ()  # (label, score), best first
    error: str | None = None
    selected: tuple[str, ...] | None = None  # multi-label: the labels at or above their threshold

    def to_json(self) -> dict:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        if self.selected is not None:
            items = [{"label": lab, "score": score, "selected": lab in self.selected} for lab, score in self.labels]
            return {"path": self.path, "predictions": items}
        return {"path": self.path, "predictions": [{"label": lab, "score": score} for lab, score in self.labels]}

    def to_text(self) -> str:
        if self.error is not None:
            return f"{self.path}: error: {self.error}"
        if self.selected is not None:
            chosen = [(lab, score) for lab, score in self.labels if lab in self.selected]
            if not chosen:
                best, score = self.labels[0]
                return f"{self.path}: no label above its threshold (highest: {best} {score:.1%})"
            return f"{self.path}: " + ", ".join(f"{lab} {score:.1%}" for lab, score in chosen)
        return f"{self.path}: " + ", ".join(f"{lab} {score:.1%}" for lab, score in self.labels)


class PredictionSinks:
    """Where predictions go besides the terminal: a CSV file (path, top-k labels and scores,
    error) and/or class folders that receive a copy of each image (sorting a photo folder)."""

    def __init__(self, csv_path: str | None, copy_to: str | None, *, topk: int):
        self.copy_to = Path(copy_to) if copy_to else None
        self.topk = topk
        self.csv_file = self.writer = None
        if csv_path:
            self.csv_file = open(csv_path, "w", newline="", encoding="utf-8", errors="backslashreplace")
            self.writer = csv.writer(self.csv_file)
            ranks = [f"{name}_{i}" for i in range(1, topk + 1) for name in ("label", "score")]
            self.writer.writerow(["path", *ranks, "error"])

    def add(self, prediction: Prediction, source: Path) -> None:
        if self.writer is not None:
            ranked = prediction.labels[: self.topk]  # a multi-label prediction lists every class
            cells = [cell for label, score in ranked for cell in (label, f"{score:.6f}")]
            cells += [""] * (2 * self.topk - len(cells))  # errors and models with fewer classes than k
            self.writer.writerow([prediction.path, *cells, prediction.error or ""])
        if self.copy_to is not None and prediction.error is None:
            folder = path_under(self.copy_to, prediction.labels[0][0])  # a class name is never a path
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, _free_name(folder, source.name))

    def __enter__(self) -> PredictionSinks:
        return self

    def __exit__(self, *exc) -> None:
        if self.csv_file is not None:
            self.csv_file.close()


def _free_name(folder: Path, name: str) -> Path:
    """folder/name, or folder/stem-2.ext, ... when images from different folders share a name."""
    target, stem, suffix, n = folder / name, Path(name).stem, Path(name).suffix, 1
    while target.exists():
        n += 1
        target = folder / f"{stem}-{n}{suffix}"
    return target


def expand_paths(arguments: Sequence[str]) -> list[tuple[str, Path]]:
    """(shown path, file) pairs: files as given, folders searched recursively for images,
    globs expanded. A path that does not exist is kept so its error is reported in order."""
    found: list[tuple[str, Path]] = []
    for arg in arguments:
        path = Path(arg)
        if path.is_dir():
            found += [(os.path.join(arg, str(p.relative_to(path))), p) for p in list_images(path)]
        elif path.exists():
            found.append((arg, path))
        elif any(c in arg for c in "*?["):
            matches = [
                m for m in sorted(glob.glob(arg, recursive=True)) if Path(m).is_file() and is_image_file(Path(m))
            ]
            found += [(m, Path(m)) for m in matches] or [(arg, path)]  # no match: reported as missing
        else:
            found.append((arg, path))
    return found


@dataclass
class Predictor:
    """A model behind one function: (N, H, W, C) uint8 images -> (N, K) probabilities."""

    run: Callable[[np.ndarray], np.ndarray]
    classes: tuple[str, ...]
    preprocessing: Preprocessing
    metadata: dict
    batch_size: int = 256  # images per call of `run`
    runtime: str = "torch"  # what runs the model: torch, onnxruntime, numpy (the classic baseline)

    @classmethod
    def from_file(cls, path: str | Path, runtime: str = "torch") -> Predictor:
        """A checkpoint (.safetensors) or an exported model (.onnx), told apart by its suffix."""
        if str(path).lower().endswith(".onnx"):
            return cls.from_onnx(path)
        return cls.from_checkpoint(path, runtime=runtime)

    @classmethod
    def from_checkpoint(cls, path: str | Path, runtime: str = "torch") -> Predictor:
        """runtime "onnx" converts the network to ONNX in memory and runs it in ONNX Runtime,
        1.7-4.5x faster than PyTorch eager here (benchmarks/inference_speed.py); a network
        the exporter cannot convert, or whose conversion disagrees, stays on PyTorch. The
        converted graph is kept in imgcls's cache folder under the checkpoint's hash, so the next
        call on the same checkpoint loads it instead of building and converting the network.
        "torch": PyTorch on the CPU in float32; "torch-bf16": under bfloat16 autocast; "cuda":
        on the GPU; "fastest": see `fastest_on_cpu`."""
        if runtime == "fastest":
            return cls.fastest_on_cpu(path)
        meta = ckpt.read_metadata(Path(path))
        if is_classic(meta.get("model", {}).get("name", "")):
            from imgcls.models.classic import ClassicModel

            tensors, _ = ckpt.load_checkpoint(Path(path))
            model = ClassicModel.from_tensors(meta["model"]["name"], meta["model"].get("kwargs", {}), tensors)
            # The classic baseline works on pixels itself; large calls let it spread HOG over processes.
            pre = Preprocessing.from_dict(meta["preprocess"])
            return cls(model.predict_proba, tuple(meta["classes"]), pre, meta, batch_size=8192, runtime="numpy")
        cached = onnx_cache_path(Path(path)) if runtime == "onnx" else None
        if cached is not None and cached.is_file():
            try:
                predictor = cls.from_onnx(cached)
                os.utime(cached)  # recently used: kept when older graphs are pruned
                return predictor
            except (ImgclsError, OSError) as err:  # damaged or pruned meanwhile: convert again
                log.info("%s: not using the cached ONNX graph (%s)", path, err)
        network, pre, meta = ckpt.load_model(path)
        if cached is not None:
            converted = _onnx_run(network, pre, meta, path)
            if converted is not None:
                run, graph = converted
                _keep_in_cache(cached, graph)
                return cls(run, tuple(meta["classes"]), pre, meta, runtime="onnxruntime")
        # runtime "cuda": PyTorch on the GPU, under the autocast its training would choose
        # (bfloat16 from Ampere on, else float16); "torch": the CPU in float32.
        device = resolve_device("cuda") if runtime == "cuda" else torch.device("cpu")
        dtype = choose_autocast("auto", device) if device.type == "cuda" else None
        if runtime == "torch-bf16":
            dtype = torch.bfloat16
        network = prepare_for_inference(network).to(device)
        multilabel = is_multilabel(meta)

        def run(images: np.ndarray) -> np.ndarray:
            pixels = torch.from_numpy(np.ascontiguousarray(images))
            logits = batched_logits(network, pixels, pre, batch_size=len(images), device=device, autocast_dtype=dtype)
            return to_probabilities(logits, multilabel).numpy()

        name = "torch-cuda" if device.type == "cuda" else "torch-bf16" if dtype is not None else "torch"
        return cls(run, tuple(meta["classes"]), pre, meta, runtime=name)

    @classmethod
    def fastest_on_cpu(cls, path: str | Path) -> Predictor:
        """ONNX Runtime in float32, or, on a CPU that computes bfloat16 itself, PyTorch under
        bfloat16 autocast where that is faster for this checkpoint.

        Which one wins depends on the network: on 2 cores with AVX512-BF16, at 224 px, PyTorch
        bfloat16 ran resnet18's dense convolutions 1.6x faster than ONNX Runtime float32 (91
        against 57 images a second), while ONNX Runtime stayed ahead on the depthwise
        mobilenetv3_large_100 (233 against 204). So both are timed once per checkpoint and CPU,
        on a few random images, and the verdict is kept beside the cached ONNX graph; bfloat16
        must win by BF16_MARGIN. Its scores differ from `imgcls evaluate`'s float32 ones by up to
        ~1e-2 (top-1 agreed on every image measured); --runtime onnx or torch keeps float32."""
        onnx = cls.from_checkpoint(path, runtime="onnx")
        if onnx.runtime != "onnxruntime" or not cpu_has_bf16():
            return onnx
        verdicts = onnx_cache_path(Path(path)).with_suffix(".fastest.json")
        cpu = cpu_kind()
        try:
            known = json.loads(verdicts.read_text(encoding="utf-8")).get(cpu)
        except (OSError, ValueError, AttributeError):
            known = None
        if known == onnx.runtime:
            return onnx
        bf16 = cls.from_checkpoint(path, runtime="torch-bf16")
        if known is None:
            from imgcls.inference.onnx_graph import random_images

            images = random_images(onnx.preprocessing, count=RACE_IMAGES)
            seconds = {p.runtime: race_seconds(p, images) for p in (onnx, bf16)}
            clearly = seconds[onnx.runtime] >= BF16_MARGIN * seconds[bf16.runtime]
            known = bf16.runtime if clearly else onnx.runtime
            timed = ", ".join(f"{name} {secs:.2f} s" for name, secs in seconds.items())
            log.info("%s: %s is the faster on this CPU (%d images: %s)", path, known, RACE_IMAGES, timed)
            with contextlib.suppress(OSError):  # a read-only cache only means timing again next time
                verdicts.write_text(json.dumps({cpu: known}), encoding="utf-8")
        return bf16 if known == bf16.runtime else onnx

    @classmethod
    def from_onnx(cls, path: str | Path, threads: int = 0) -> Predictor:
        from imgcls.inference.onnx_runtime import load_onnx

        run, pre, meta = load_onnx(path, threads)
        return cls(run, tuple(meta["classes"]), pre, meta, runtime="onnxruntime")

    def decode(self, source: Path | bytes, name: str | None = None, max_pixels: int | None = None) -> np.ndarray:
        """Pixels as the model takes them; `max_pixels` may only lower the model's own limit."""
        return self.preprocessing.decode(source, name=name, max_pixels=max_pixels)

    def probabilities(self, images: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """(N, K) class probabilities of (N, H, W, C) uint8 images already decoded by `decode`."""
        step = batch_size or self.batch_size
        if len(images) == 0:
            return np.empty((0, len(self.classes)), dtype=np.float32)
        return np.concatenate([self.run(images[i : i + step]) for i in range(0, len(images), step)])

    def top_k(self, probs: np.ndarray, k: int) -> tuple[tuple[str, float], ...]:
        order = np.argsort(-probs, kind="stable")[: max(1, min(k, len(self.classes)))]
        return tuple((self.classes[i], float(probs[i])) for i in order)

    @property
    def multilabel(self) -> bool:
        return is_multilabel(self.metadata)

    def thresholds(self, override: float | None = None) -> np.ndarray:
        """Multi-label: each class's threshold (chosen on validation, stored in the checkpoint),
        or one threshold for all when the user gives it."""
        if override is not None:
            return np.full(len(self.classes), float(override))
        stored = self.metadata.get("thresholds") or {}
        return np.asarray(stored.get("per_class") or [stored.get("default", 0.5)] * len(self.classes), dtype=float)

    def prediction(self, name: str, probs: np.ndarray, topk: int, threshold: float | None = None) -> Prediction:
        """Top-k labels; for a multi-label model every label, with those above threshold selected."""
        if not self.multilabel:
            return Prediction(name, self.top_k(probs, topk))
        chosen = tuple(c for c, p, t in zip(self.classes, probs, self.thresholds(threshold), strict=True) if p >= t)
        return Prediction(name, self.top_k(probs, len(self.classes)), selected=chosen)

    def predict_paths(
        self, paths: Sequence[tuple[str, Path]], *, topk: int = 5, batch_size: int = 256, threshold: float | None = None
    ) -> Iterator[Prediction]:
        """Predictions in input order; an unreadable file yields an error entry, the rest go on."""

        def load(item: tuple[str, Path]) -> np.ndarray | str:
            shown, path = item
            try:
                return self.decode(path, name=shown)
            except ImgclsError as err:
                return str(err)

        # Pillow releases the GIL while decoding, so threads decode the next chunk while the
        # model runs on this one (ONNX Runtime and PyTorch release it too).
        chunks = [paths[start : start + batch_size] for start in range(0, len(paths), batch_size)]
        bar = progress_bar(total=len(paths), desc="predict", unit="img")
        with bar, ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
            pending = [pool.submit(load, item) for item in chunks[0]] if chunks else []
            for index, chunk in enumerate(chunks):
                decoded = [future.result() for future in pending]
                ahead = chunks[index + 1] if index + 1 < len(chunks) else []
                pending = [pool.submit(load, item) for item in ahead]
                good = [i for i, d in enumerate(decoded) if not isinstance(d, str)]
                probs = self.probabilities(np.stack([decoded[i] for i in good])) if good else np.empty((0, 0))
                row = dict(zip(good, range(len(good)), strict=True))
                for i, (shown, _) in enumerate(chunk):
                    if i in row:
                        yield self.prediction(shown, probs[row[i]], topk, threshold)
                    else:
                        yield Prediction(shown, error=_strip_name(decoded[i], shown))
                bar.update(len(chunk))


RACE_IMAGES = 16  # one forward within the CPU pixel budget at 224 px
# PyTorch bfloat16 is kept only when it wins clearly: each call builds the network from the
# checkpoint (2.2 s for mobilenetv3_large_100, where the cached ONNX graph loads in 0.1 s) and
# its scores are approximate. MobileNetV3's 1.1x lead on 16 images turned into 9.6 s against
# 6.6 s for 1,000 photos; resnet18's 1.6x into ~16 s against 19.9 s (AVX512-BF16).
BF16_MARGIN = 1.25


def race_seconds(predictor: Predictor, images: np.ndarray) -> float:
    """The faster of two timed calls, after one that builds the kernels for this shape."""
    predictor.probabilities(images)
    times = []
    for _ in range(2):
        start = time.perf_counter()
        predictor.probabilities(images)
        times.append(time.perf_counter() - start)
    return min(times)


def cpu_kind() -> str:
    """What decides the race on this machine: the CPU's vector instructions and AMX."""
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return f"{torch.backends.cpu.get_cpu_capability()} amx={amx}"


def _onnx_run(network: nn.Module, pre: Preprocessing, meta: dict, path: str | Path) -> tuple[Callable, bytes] | None:
    """ONNX Runtime's probability function for `network` and the serialized graph, or None
    (logged) where it cannot be."""
    from imgcls.inference.onnx_graph import PARITY_TOLERANCE, max_difference, random_images, to_onnx_bytes
    from imgcls.inference.onnx_runtime import probability_function, session

    try:
        graph = to_onnx_bytes(network, pre, meta, pixels=False)
        run = probability_function(session(graph), pre)
    except ImgclsError as err:
        log.warning("%s: running on PyTorch (%s)", path, err)
        return None
    difference = max_difference(network, pre, run, random_images(pre, count=8), multilabel=is_multilabel(meta))
    if not difference < PARITY_TOLERANCE:
        log.warning("%s: running on PyTorch (ONNX Runtime differs by %.1e)", path, difference)
        return None
    return run, graph


# Converting a network to ONNX and checking it took 8 s of a 224-px EfficientNet-Lite0's
# `imgcls predict` on a 2-core CPU (building the network from the checkpoint a few more), so
# the converted graph is kept; the last ONNX_CACHE_KEEP used stay, the older are removed.
ONNX_CACHE_KEEP = 8


def onnx_cache_path(checkpoint: Path) -> Path:
    """Where the ONNX graph of exactly this checkpoint is kept: named by the hash of its bytes
    and of the imgcls and torch versions that convert it ($IMGCLS_CACHE_DIR or the user's cache
    folder, .../imgcls/onnx/)."""
    digest = hashlib.sha256(f"imgcls {__version__} torch {torch.__version__}\n".encode())
    with open(checkpoint, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return cache_dir() / "onnx" / f"{digest.hexdigest()[:32]}.onnx"


def _keep_in_cache(target: Path, graph: bytes) -> None:
    """Write the graph whole or not at all (another process may read it meanwhile); a cache
    that cannot be written only costs the conversion next time."""
    partial = target.with_name(f"{target.stem}.{os.getpid()}.partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial.write_bytes(graph)
        os.replace(partial, target)
        kept = sorted(target.parent.glob("*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in kept[ONNX_CACHE_KEEP:]:
            old.unlink(missing_ok=True)
            old.with_suffix(".fastest.json").unlink(missing_ok=True)  # its runtime race, fastest_on_cpu
    except OSError as err:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        log.info("cannot keep the ONNX graph in %s (%s)", target.parent, err)


def _strip_name(message: str, name: str) -> str:
    """Errors name their file; in a per-file result the path is already there."""
    return message.removeprefix(f"{name}: ")
