"""CLIP models through open_clip; and CLIP's image tower as a backbone.

Weights come from a file the user names (`--clip-weights FILE`), or by name (`--clip-weights
ViT-B-32/laion2b_s34b_b79k`, or the tag alone) from the Hugging Face cache, fetched into it on
first use as timm's weights are (imgcls.models.pretrained; `imgcls weights get clip:MODEL/TAG`
fetches ahead). `.safetensors` files are preferred; torch files are read with
`weights_only=True` (open_clip's default), which refuses pickled objects.

`--clip-model` is an open_clip architecture name (ViT-B-32, ViT-B-32-quickgelu for OpenAI's
original weights, ...) or a JSON file holding an open_clip model config (embed_dim,
vision_cfg, text_cfg), which is how the tests build tiny random CLIPs.

As a backbone (`imgcls train --model clip:ViT-B-32 --clip-weights FILE --freeze-backbone`),
the checkpoint keeps only the linear head plus the CLIP weights' path and sha256; the
backbone is loaded again from that file (and its hash checked) when the checkpoint is loaded.
With `clip_copy: true` in the model's kwargs the backbone's tensors are copied into the
checkpoint instead, and the file is no longer needed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from imgcls.errors import CheckpointError, ConfigError
from imgcls.extras import require
from imgcls.files import sha256_file
from imgcls.models.hub import hub_cache, offline

log = logging.getLogger(__name__)

CLIP_PREFIX = "clip:"
DEFAULT_CLIP_MODEL = "ViT-B-32"
GET_WEIGHTS_HINT = (
    'Get the weights on a machine with internet, e.g. `python -c "import open_clip; '
    "open_clip.create_model('ViT-B-32', pretrained='laion2b_s34b_b79k')\"` (fills the Hugging Face cache, "
    "~/.cache/huggingface/hub, which you can copy over), or download open_clip_model.safetensors from the "
    "model's Hugging Face page (e.g. laion/CLIP-ViT-B-32-laion2B-s34B-b79K) and pass it with --clip-weights FILE."
)


def architecture_name(clip_model: str) -> str:
    """The open_clip name of an architecture; a JSON config file is registered under its stem."""
    open_clip = require("open_clip", "zeroshot")

    path = Path(clip_model)
    if path.suffix == ".json":
        if not path.is_file():
            raise ConfigError(f"CLIP model config {path} does not exist.")
        open_clip.add_model_config(path)
        return path.stem
    if clip_model not in open_clip.list_models():
        import difflib

        close = difflib.get_close_matches(clip_model, open_clip.list_models(), n=5, cutoff=0.6)
        hint = f" Close matches: {', '.join(close)}." if close else ""
        raise ConfigError(f"unknown CLIP model {clip_model!r}.{hint} open_clip.list_models() lists them.")
    return clip_model


def _hub_weights(arch: str, tag: str | None, *, download: bool) -> tuple[Path, dict] | None:
    """A weights file of `arch` (of `tag`, or of any tag) from the Hugging Face cache; with
    `download`, fetched into it first (with huggingface_hub's progress bar) when missing."""
    import open_clip
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    cache = hub_cache()
    tags = [tag] if tag else open_clip.list_pretrained_tags_by_model(arch)
    for name in tags:
        cfg = open_clip.get_pretrained_cfg(arch, name)
        repo = (cfg or {}).get("hf_hub", "").strip("/")
        if not repo:
            continue
        for filename in (HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME):
            found = try_to_load_from_cache(repo, filename, cache_dir=cache)  # looks at local files only
            if isinstance(found, str):
                log.info("CLIP weights %s (%s) from the Hugging Face cache", name, repo)
                return Path(found), cfg
        if download and tag:
            for filename in (HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME):
                try:
                    return Path(hf_hub_download(repo, filename, cache_dir=cache)), cfg
                except EntryNotFoundError:
                    continue
                except LocalEntryNotFoundError:  # no network
                    return None
    return None


def split_weights_name(arch: str, weights: str | None) -> str | None:
    """The open_clip pretrained tag of `--clip-weights TAG` or `--clip-weights MODEL/TAG`."""
    path_like = weights and (weights.count("/") != 1 or weights.startswith(".") or Path(weights).suffix)
    if not weights or path_like:
        return weights  # a tag alone, or a file that is not there (refused by the caller)
    named, _, tag = weights.rpartition("/")
    if named != arch:
        raise ConfigError(f"--clip-weights {weights} are {named} weights; the model is {arch}.")
    return tag


def resolve_weights(arch: str, weights: str | None) -> tuple[Path, bool]:
    """(weights file, quick_gelu) for `--clip-weights`: a file; or an open_clip pretrained tag
    (TAG or MODEL/TAG), taken from the Hugging Face cache or fetched into it; or None for any
    cached tag of the architecture."""
    import open_clip

    if weights and Path(weights).is_file():
        return Path(weights), False
    tag = split_weights_name(arch, weights)
    if tag and tag not in open_clip.list_pretrained_tags_by_model(arch):
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(arch)[:6])
        raise CheckpointError(
            f"CLIP weights {weights} do not exist (neither a file nor a pretrained tag of {arch}"
            + (f"; its tags: {tags}" if tags else "")
            + "). "
            + GET_WEIGHTS_HINT
        )
    found = _hub_weights(arch, tag, download=not offline())
    if found is None:
        what = f"the {tag!r} weights of {arch} are not" if tag else f"no pretrained {arch} weights are"
        fetch = f"imgcls weights get clip:{arch}/{tag or 'TAG'}"
        raise CheckpointError(
            f"{what} in the Hugging Face cache ({hub_cache()}) and it cannot be reached: run `{fetch}` "
            "on a machine with a network and copy the cache here, or give --clip-weights FILE."
        )
    path, cfg = found
    return path, bool(cfg.get("quick_gelu", False))


def fetch_clip(name: str) -> Path:
    """`imgcls weights get clip:MODEL/TAG`: the weights file, fetched into the cache if needed."""
    arch, _, tag = name.removeprefix(CLIP_PREFIX).partition("/")
    if not tag:
        raise ConfigError(f"{name}: name the weights as clip:MODEL/TAG, e.g. clip:ViT-B-32/laion2b_s34b_b79k.")
    return resolve_weights(architecture_name(arch), f"{arch}/{tag}")[0]


def load_clip(clip_model: str, weights: str | Path | None, *, image_size: int | None = None, random: bool = False):
    """(open_clip model in eval mode, architecture name, weights file or None).

    `random` builds the architecture without weights (only for a backbone whose tensors
    come from an imgcls checkpoint). `image_size` resizes ViT position embeddings."""
    import open_clip

    arch = architecture_name(clip_model)
    extra = {"force_image_size": image_size} if image_size else {}
    if random:
        model = open_clip.create_model(arch, pretrained=None, pretrained_text=False, **extra)
        return model.eval(), arch, None
    path, quick_gelu = resolve_weights(arch, str(weights) if weights else None)
    try:
        model = open_clip.create_model(
            arch,
            pretrained=str(path),
            pretrained_text=False,
            require_pretrained=True,
            force_quick_gelu=quick_gelu,
            **extra,
        )
    except (RuntimeError, KeyError, ValueError, OSError) as err:
        raise CheckpointError(
            f"{path} cannot be loaded as {arch} weights ({type(err).__name__}: {str(err)[:300]}). Is it the same "
            "architecture (--clip-model)? OpenAI's original weights need the -quickgelu variant "
            "(e.g. ViT-B-32-quickgelu)."
        ) from None
    return model.eval(), arch, path


def _adapt_channels(visual: nn.Module, in_chans: int) -> None:
    """Grey inputs: sum the first convolution's RGB filters (timm's adapt_input_conv)."""
    if in_chans == 3:
        return
    conv = getattr(visual, "conv1", None)
    if not isinstance(conv, nn.Conv2d):
        raise ConfigError(f"this CLIP image tower only takes 3 channels; got {in_chans}. Set data.channels=3.")
    from timm.models import adapt_input_conv

    new = nn.Conv2d(
        in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None
    )
    with torch.no_grad():
        new.weight.copy_(adapt_input_conv(in_chans, conv.weight))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    visual.conv1 = new


class ClipBackbone(nn.Module):
    """CLIP's image tower + a linear head, with timm's get_classifier/reset_classifier/forward_features."""

    def __init__(self, visual: nn.Module, embed_dim: int, num_classes: int, *, copy_backbone: bool):
        super().__init__()
        self.visual = visual
        self.num_features = embed_dim
        self.head = nn.Linear(embed_dim, num_classes)
        self.copy_backbone = copy_backbone
        self.loaded_fingerprint = fingerprint(visual)  # the backbone as read from the CLIP file
        self._register_state_dict_hook(_drop_backbone)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return features if pre_logits else self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.visual(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.head = nn.Linear(self.num_features, num_classes)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """A head-only state dict (the default checkpoint) keeps the backbone loaded from the CLIP file."""
        if not any(k.startswith("visual.") for k in state_dict):
            return self.head.load_state_dict(
                {k.removeprefix("head."): v for k, v in state_dict.items()}, strict=strict, assign=assign
            )
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def fingerprint(module: nn.Module) -> list[float]:
    """Per-tensor float64 sums: cheap (one pass over the weights) and changed by any training step."""
    with torch.no_grad():
        return [float(p.double().sum()) for p in module.parameters()]


def _drop_backbone(module: ClipBackbone, state_dict: dict, prefix: str, local_metadata) -> None:
    """Checkpoints record the CLIP file's hash instead of copying its tensors, unless the backbone
    was asked to be copied or differs from the file (trained, unfrozen later, or averaged by EMA)."""
    if module.copy_backbone or fingerprint(module.visual) != module.loaded_fingerprint:
        return
    for key in [k for k in state_dict if k.startswith(prefix + "visual.")]:
        del state_dict[key]


def build_clip_backbone(
    clip_model: str,
    *,
    num_classes: int,
    in_chans: int,
    img_size: int,
    clip_weights: str | None = None,
    clip_sha256: str | None = None,
    clip_copy: bool = False,
    **kwargs,
) -> ClipBackbone:
    """The registry's builder for `clip:ARCH`. The weights file's sha256, when recorded, must match."""
    if kwargs:
        raise ConfigError(f"clip models take clip_weights, clip_sha256 and clip_copy; not {', '.join(kwargs)}.")
    if not clip_weights:
        # Weights found in a cache could differ later; a checkpoint must name and hash the file it was trained on.
        raise ConfigError(f"model clip:{clip_model} needs its weights file: imgcls train --clip-weights FILE.")
    path = Path(clip_weights)
    if clip_copy and not path.is_file():
        # The backbone's tensors are in the imgcls checkpoint that is being loaded.
        model, _, _ = load_clip(clip_model, None, image_size=img_size, random=True)
    else:
        if not path.is_file():
            raise CheckpointError(
                f"this CLIP backbone's weights {path} are missing; put the file back there, or retrain "
                "with --set model.kwargs.clip_copy=true to keep them in the checkpoint."
            )
        if clip_sha256 and sha256_file(path) != clip_sha256:
            raise CheckpointError(f"{path} is not the CLIP weights file this model was trained on (sha256 differs).")
        model, _, _ = load_clip(clip_model, path, image_size=img_size)
    visual = model.visual
    _adapt_channels(visual, in_chans)
    return ClipBackbone(visual, int(visual.output_dim), num_classes, copy_backbone=clip_copy)


def clip_model_kwargs(weights: str, *, copy: bool = False) -> dict:
    """model.kwargs for `imgcls train --clip-weights FILE`: the absolute path and its sha256."""
    path = Path(weights)
    if not path.is_file():
        raise CheckpointError(f"CLIP weights {path} do not exist. " + GET_WEIGHTS_HINT)
    kwargs = {"clip_weights": str(path.absolute()), "clip_sha256": sha256_file(path)}
    if copy:
        kwargs["clip_copy"] = True
    return kwargs
