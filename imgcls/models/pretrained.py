"""Starting weights by name: timm's pretrained tags, fetched once into the Hugging Face cache.

`--pretrained resnet18.a1_in1k` (or `imagenet`, the model's default tag) is fetched from the
Hugging Face Hub through huggingface_hub, with its progress bar, into the standard cache
(HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub), so every tool that knows that
cache shares it. Offline (no network, or HF_HUB_OFFLINE=1) the cache alone is used, and a
missing file stops the run before any image is decoded, naming what to fetch and where it goes.

Weights named so come with timm's pretrained config: the input size, mean/std, interpolation
and crop fraction they were trained with, which become the run's preprocessing unless the user
sets them (as timm's resolve_data_config does).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from imgcls.errors import CheckpointError, ConfigError
from imgcls.files import sha256_file
from imgcls.models.hub import hub_cache, offline
from imgcls.models.registry import timm_architecture

log = logging.getLogger(__name__)

DEFAULT_TAG = "imagenet"  # --pretrained imagenet: the model's default pretrained tag in timm
HUB_PREFIXES = ("hf-hub:", "timm/")
# timm's hub repositories hold safetensors; a few older ones only a torch file (read with
# weights_only=True, which refuses pickled objects).
HUB_FILES = ("model.safetensors", "pytorch_model.bin")
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


@dataclass(frozen=True)
class StartWeights:
    """Where a run's starting weights are on this machine and what they are."""

    file: Path
    source: str  # as recorded: "hf-hub:timm/resnet18.a1_in1k" or the file's absolute path
    sha256: str
    data_config: dict  # img_size, mean, std, interpolation, crop_pct the weights were trained with; {} if unknown

    def describe(self) -> dict:
        described = {"source": self.source, "sha256": self.sha256}
        return {**described, "data": self.data_config} if self.data_config else described


def is_weights_name(spec: str) -> bool:
    """A pretrained tag rather than a file: `imagenet`, `ARCH.TAG`, `timm/ARCH.TAG`, `hf-hub:timm/ARCH.TAG`."""
    if spec == DEFAULT_TAG or spec.startswith(HUB_PREFIXES):
        return True
    path = Path(spec)
    return not path.exists() and path.suffix.lower() not in WEIGHT_SUFFIXES and "/" not in spec and "\\" not in spec


def weights_name(spec: str, model_name: str | None) -> str:
    """The full timm name `ARCH.TAG` of a pretrained spec; `imagenet` takes the model's default tag."""
    import timm

    if spec == DEFAULT_TAG:
        arch = timm_architecture(model_name or "")
        if arch is None:
            raise ConfigError(f"--pretrained imagenet needs a timm model; {model_name!r} is one of imgcls's own.")
        cfg = timm.models.get_pretrained_cfg(arch)
        if cfg is None or not cfg.hf_hub_id:
            raise ConfigError(f"timm has no pretrained weights for {arch}. `imgcls weights list PATTERN` shows them.")
        return f"{arch}.{cfg.tag}"
    name = spec
    for prefix in HUB_PREFIXES:
        name = name.removeprefix(prefix)
    name = name.removeprefix("timm/")
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:  # an architecture timm knows, with a tag it does not
        cfg = None
    if cfg is None or not cfg.hf_hub_id:
        arch = name.split(".")[0]
        tags = timm.list_pretrained(f"{arch}.*")
        hint = f" Its tags: {', '.join(tags[:8])}." if tags else " `imgcls models PATTERN` lists the architectures."
        raise ConfigError(f"--pretrained {spec}: not a file, and timm knows no pretrained weights of that name.{hint}")
    arch = name.split(".")[0]
    model_arch = timm_architecture(model_name) if model_name else arch
    if model_arch != arch:
        raise ConfigError(f"--pretrained {spec} holds {arch} weights, not {model_name} ones; use --model {arch}.")
    return f"{arch}.{cfg.tag}"


def hub_repo(name: str) -> str:
    import timm

    return timm.models.get_pretrained_cfg(name).hf_hub_id


def data_config(name: str) -> dict:
    """The preprocessing timm's pretrained config gives weights `ARCH.TAG` (or an architecture's default)."""
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:
        cfg = None
    if cfg is None:
        return {}
    return {
        "img_size": int(cfg.input_size[-1]),
        "mean": [float(m) for m in cfg.mean],
        "std": [float(s) for s in cfg.std],
        "interpolation": "bicubic" if cfg.interpolation == "bicubic" else "bilinear",
        "crop_pct": float(cfg.crop_pct),
    }


def fetch(name: str) -> Path:
    """The local file of weights `ARCH.TAG`: from the cache, else downloaded into it (with a
    progress bar). Offline and not cached: one line naming what to fetch and where it goes."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    repo, cache = hub_repo(name), hub_cache()
    for filename in HUB_FILES:
        found = try_to_load_from_cache(repo, filename, cache_dir=cache)
        if isinstance(found, str):
            return Path(found)
    if offline():
        raise CheckpointError(_missing(name, cache, "this machine is offline (HF_HUB_OFFLINE)"))
    for filename in HUB_FILES:
        try:
            return Path(hf_hub_download(repo, filename, cache_dir=cache))
        except EntryNotFoundError:
            continue
        except LocalEntryNotFoundError:  # no network: huggingface_hub found neither hub nor cache
            raise CheckpointError(_missing(name, cache, "the Hugging Face Hub cannot be reached")) from None
        except (HfHubHTTPError, OSError) as err:
            raise CheckpointError(f"fetching {name} from {repo} failed: {err}") from None
    raise CheckpointError(f"{repo} holds none of {', '.join(HUB_FILES)}.")


def _missing(name: str, cache: Path, why: str) -> str:
    return (
        f"pretrained weights {name} are not in the Hugging Face cache ({cache}) and {why}: run "
        f"`imgcls weights get {name}` on a machine with a network, then copy {cache} here (or set HF_HUB_CACHE)."
    )


def resolve_start_weights(spec: str, model_name: str | None) -> StartWeights:
    """A --pretrained value as a local file with its source, hash and (for named weights, or a
    timm model's default) the preprocessing the weights were trained with."""
    if is_weights_name(spec):
        name = weights_name(spec, model_name)
        file = fetch(name)
        return StartWeights(file, f"hf-hub:{hub_repo(name)}", sha256_file(file), data_config(name))
    path = Path(spec)
    if not path.is_file():
        raise CheckpointError(f"pretrained weights {path} do not exist (neither a file nor a timm pretrained tag).")
    arch = timm_architecture(model_name) if model_name else None
    # A bare file for a timm architecture: assume the preprocessing of that architecture's
    # default ImageNet weights (an imgcls checkpoint carries its own, read by the caller).
    config = data_config(arch) if arch and path.suffix != ".safetensors" else {}
    return StartWeights(path.absolute(), str(path.absolute()), sha256_file(path), config)


def cached_weights() -> list[tuple[str, int, Path]]:
    """(repository, bytes, folder) of every model in the Hugging Face cache."""
    from huggingface_hub import scan_cache_dir

    cache = hub_cache()
    if not cache.is_dir():
        return []
    info = scan_cache_dir(cache)
    return sorted((r.repo_id, r.size_on_disk, Path(r.repo_path)) for r in info.repos if r.repo_type == "model")


def weights_config(spec: str, model_name: str) -> dict:
    """Config values that starting weights bring (a layer of imgcls.config.build_config): the
    preprocessing they were trained with, and their source and SHA-256 for the record.
    Fetches named weights now, so a missing file stops the run before any image is decoded."""
    start = resolve_start_weights(spec, model_name)
    log.info("starting weights %s: %s (sha256 %s)", spec, start.source, start.sha256[:16])
    return {
        "data": dict(start.data_config),
        "transfer": {"pretrained_source": start.source, "pretrained_sha256": start.sha256},
    }
