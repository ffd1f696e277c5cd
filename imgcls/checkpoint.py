"""One .safetensors file per checkpoint: tensors plus JSON metadata, written atomically.

safetensors holds only arrays and strings, so loading a checkpoint can never run code
(a pickled .pt file can). The metadata rebuilds the model and its preprocessing, so a
predictor needs nothing but the file. safetensors has no checksum of its own, so the
metadata carries a SHA-256 of the rest of the metadata and the tensor bytes: a file damaged
or edited after saving is refused on loading instead of predicting with changed weights or
classes (hashing costs 0.13 s per 100 MB).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from imgcls import __version__
from imgcls.data.preprocess import Preprocessing
from imgcls.data.sources import check_class_names
from imgcls.errors import CheckpointError, DataError
from imgcls.files import atomic_write_bytes

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
METADATA_KEY = "imgcls"
MODEL_PREFIX = "model."
OPTIM_PREFIX = "optim."
DIGEST_KEY = "sha256"

T = TypeVar("T")


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], metadata: dict) -> None:
    from safetensors.torch import save

    meta = {"schema": SCHEMA_VERSION, "imgcls_version": __version__, **metadata}
    # Cloning separates tensors that share storage (tied weights), which safetensors refuses.
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    # The tensor bytes do not depend on the metadata: serialise once to hash them, then again
    # with the hash in the header.
    meta[DIGEST_KEY] = _digest(meta, _data_view(save(flat, metadata={METADATA_KEY: json.dumps(meta)})))
    try:
        atomic_write_bytes(Path(path), save(flat, metadata={METADATA_KEY: json.dumps(meta)}))
    except OSError as err:
        raise CheckpointError(
            f"cannot write checkpoint {path}: {err.strerror or err}. The previous file is intact."
        ) from None


def _data_view(blob: bytes) -> memoryview:
    """A safetensors file's tensor bytes: all that follows its 8-byte header size and header."""
    (header,) = struct.unpack("<Q", blob[:8])
    return memoryview(blob)[8 + header :]


def _meta_hash(meta: dict):
    """A SHA-256 started with the metadata: all but the digest itself, as canonical JSON (of
    the metadata as it reads back, so that tuples, integer keys and the like hash alike)."""
    rest = json.loads(json.dumps({k: v for k, v in meta.items() if k != DIGEST_KEY}))
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode("utf-8"))


def _digest(meta: dict, data: bytes | memoryview) -> str:
    """SHA-256 of the metadata and the tensor bytes."""
    digest = _meta_hash(meta)
    digest.update(data)
    return digest.hexdigest()


def _verify(path: Path, meta: dict) -> None:
    digest = _meta_hash(meta)
    with open(path, "rb") as f:
        (header,) = struct.unpack("<Q", f.read(8))
        f.seek(8 + header)
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != meta[DIGEST_KEY]:
        raise CheckpointError(
            f"{path}: its contents do not match the checksum saved with them; the file was damaged or edited "
            "after it was written. Use another copy of it (or the run's last.safetensors), or train again."
        )


def read_metadata(path: Path) -> dict:
    """The JSON metadata of a checkpoint, checked for schema compatibility."""
    return load_checkpoint(path, tensors=False)[1]


def load_checkpoint(path: Path, *, tensors: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist.")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
            loaded = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path} is not a readable imgcls checkpoint (damaged or truncated?): {err}") from None
    if raw is None:
        raise CheckpointError(
            f"{path} is a safetensors file without imgcls metadata; use --pretrained to load bare weights."
        )
    try:
        meta = json.loads(raw)
    except RecursionError:
        raise CheckpointError(f"{path}: its metadata is nested too deeply; the file was edited.") from None
    except json.JSONDecodeError as err:
        raise CheckpointError(
            f"{path}: its metadata is not valid JSON ({err}); the file was edited or damaged."
        ) from None
    schema = meta.get("schema") if isinstance(meta, dict) else None
    if not isinstance(schema, int) or isinstance(schema, bool):
        raise CheckpointError(f"{path}: metadata has no schema version; not an imgcls checkpoint.")
    if schema > SCHEMA_VERSION:
        raise CheckpointError(
            f"{path} was written by imgcls {meta.get('imgcls_version', '?')} (checkpoint schema {schema}); "
            f"this imgcls {__version__} reads schema {SCHEMA_VERSION} and older. Upgrade imgcls to load it."
        )
    if "classes" in meta:
        check_classes(path, meta["classes"])
    if tensors and DIGEST_KEY in meta:  # files written before checksums were added carry none
        _verify(path, meta)
    return loaded, meta


def check_classes(path: Path | str, classes: object) -> None:
    """A checkpoint's class names: a non-empty list of safe folder names (they become folders
    in `predict --copy-to`; the checksum cannot vouch for them, anyone can recompute it)."""
    if not isinstance(classes, list) or not classes:
        raise CheckpointError(f"{path}: its metadata's classes must be a non-empty list of names; the file was edited.")
    try:
        check_class_names(classes, str(path))
    except DataError as err:
        raise CheckpointError(str(err)) from None


def split_prefix(tensors: Mapping[str, T], prefix: str) -> dict[str, T]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a weights-only checkpoint (best.safetensors) stores: the model's own
    state_dict names, no prefix, so timm, torchvision or a bare `load_state_dict` take the file."""
    return dict(model.state_dict())


def read_model_tensors(tensors: Mapping[str, T], model_names: Iterable[str]) -> dict[str, T]:
    """The model's tensors (or any per-tensor values, e.g. shapes) from a checkpoint of either
    form: under the model's own names (best.safetensors), or under `model.` (last.safetensors,
    and best.safetensors of earlier imgcls). `model_names` are the model's state_dict names:
    they tell the forms apart when the model's own names start with `model.` too."""
    names = set(model_names)
    own_names = bool(names) and names <= tensors.keys()
    if own_names or not any(k.startswith(MODEL_PREFIX) for k in tensors):
        return dict(tensors)
    return split_prefix(tensors, MODEL_PREFIX)


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer's state as flat tensors plus JSON-ready hyper-parameters."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{OPTIM_PREFIX}{index}.{key}"] = value
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], saved: dict) -> None:
    state: dict[int, dict] = {}
    for name, value in split_prefix(tensors, OPTIM_PREFIX).items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    for name, value in saved.get("scalars", {}).items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})


def load_model(path: str | Path) -> tuple[nn.Module, Preprocessing, dict]:
    """An imgcls checkpoint's model in eval mode, with its preprocessing and metadata."""
    from imgcls.models import create_model

    meta = read_metadata(Path(path))
    try:
        pre = Preprocessing.from_dict(meta["preprocess"])
        spec = meta["model"]
        build = functools.partial(
            create_model,
            spec["name"],
            num_classes=len(meta["classes"]),
            in_chans=pre.channels,
            img_size=pre.img_size,
            **spec.get("kwargs", {}),
        )
        _check_shapes(path, build)  # before anything is allocated: the metadata may be hostile
        tensors, meta = load_checkpoint(Path(path))
        model = build()
        weights = read_model_tensors(tensors, model.state_dict())
        model.load_state_dict(weights)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: metadata or weights do not rebuild the model ({err}).") from None
    check_finite_weights(path, weights)
    return model.eval(), pre, meta


def _check_shapes(path: Path | str, build) -> None:
    """Build the model on PyTorch's meta device (shapes, no memory) and compare its weights'
    shapes with those in the file's header: metadata asking for a wider or larger model than
    the weights it came with is refused before it can allocate gigabytes."""
    from safetensors import safe_open

    try:
        with torch.device("meta"):
            skeleton = build()
    except Exception as err:  # noqa: BLE001 - models that read values or load files as they are built (CLIP)
        log.debug("cannot check %s's shapes on the meta device (%s); building it directly", path, err)
        return
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    with safe_open(str(path), framework="pt") as f:
        saved = read_model_tensors({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}, expected)
    if expected != saved:
        differ = sorted(k for k in expected.keys() | saved.keys() if expected.get(k) != saved.get(k))
        first = differ[0]
        raise CheckpointError(
            f"{path}: the model its metadata describes and the weights it holds do not match "
            f"({len(differ)} tensor(s), e.g. {first}: metadata {expected.get(first)}, file {saved.get(first)}); "
            "the file was edited or damaged."
        )


def check_finite_weights(path: Path | str, weights: dict[str, torch.Tensor]) -> None:
    """A model whose weights hold NaN or infinity answers NaN for every image: refused at load."""
    bad = [name for name, t in weights.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise CheckpointError(
            f"{path}: weights not finite (NaN or infinite) in {len(bad)} tensor(s), e.g. {bad[0]}; "
            "the training that wrote it diverged. Train again with a lower optim.lr."
        )
