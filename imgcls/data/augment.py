"""Training augmentation: fast batch ops, per-image torchvision transforms, label mixing.

Three stages, in the order a training step applies them:

1. `augment_batch`: random shifts and flips of a whole (N, H, W, C) uint8 batch in one
   indexing operation, with parameters drawn per image from the epoch's generator. Written
   by hand because torchvision.transforms.v2 draws one set of parameters per call:
   per-image randomness through it means a Python loop over images, the per-sample cost
   that makes the usual pipeline slow on CPU.
2. `build_per_image_transform` + `apply_per_image`: the torchvision.transforms.v2 ops that
   have no cheap batch form (rotation, shear, zoom, colour, crops, AutoAugment family,
   erasing), run image by image. Only built when one of them is switched on.
3. `mix_batch`: Mixup, CutMix and RICAP on the normalised model input, with soft targets.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from imgcls.config import AugmentConfig
from imgcls.device import to_device
from imgcls.workers import cpu_count

# --- 1. batch shifts and flips -----------------------------------------------------------


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Mirror out-of-range pixel indices back inside [0, size) (reflect padding, no edge repeat)."""
    if size == 1:
        return torch.zeros_like(index)
    period = 2 * (size - 1)
    index = index.remainder(period)
    return torch.where(index >= size, period - index, index)


def augment_batch(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Randomly shift and flip each image of an (N, H, W, C) uint8 batch; same shape and dtype.

    Shifts go up to `translate * min(H, W)` pixels each way; shifted-in pixels mirror the
    image (`fill="reflect"`) or are 0 (`fill="constant"`). Flips happen with probability 1/2
    per image and direction. Cutout then zeroes a square of side `cutout * min(H, W)` at a
    random centre (it may hang over the border). Every draw comes from `generator`, in the
    order shifts, hflip, vflip, cutout.
    """
    n, height, width, _ = images.shape
    max_shift = round(config.translate * min(height, width))
    if max_shift == 0 and not config.hflip and not config.vflip:
        return cutout(images, config.cutout, generator)
    rows = torch.arange(height).expand(n, height)
    cols = torch.arange(width).expand(n, width)
    inside = None  # (N, H, W, 1) mask of pixels that come from inside the image (constant fill)
    if max_shift:
        shifts = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=generator)
        rows, cols = rows + shifts[:, :1], cols + shifts[:, 1:]
        if config.fill == "constant":
            row_in, col_in = (rows >= 0) & (rows < height), (cols >= 0) & (cols < width)
            inside = (row_in[:, :, None] & col_in[:, None, :])[..., None]
            rows, cols = rows.clamp(0, height - 1), cols.clamp(0, width - 1)
        else:
            rows, cols = _reflect(rows, height), _reflect(cols, width)
    # Flipping the source index maps inside to inside, so the mask stays aligned with the output.
    if config.hflip:
        flip = torch.rand(n, 1, generator=generator) < 0.5
        cols = torch.where(flip, width - 1 - cols, cols)
    if config.vflip:
        flip = torch.rand(n, 1, generator=generator) < 0.5
        rows = torch.where(flip, height - 1 - rows, rows)
    batch_index = torch.arange(n)[:, None, None]
    out = images[batch_index, rows[:, :, None], cols[:, None, :]]
    return cutout(out if inside is None else out * inside.to(out.dtype), config.cutout, generator)


def cutout(images: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Cutout (DeVries & Taylor 2017) on a whole (N, H, W, C) batch: one zeroed square per
    image, centre drawn uniformly over the image. Written as a batch op because torchvision's
    RandomErasing draws one rectangle per call, i.e. a Python loop over images."""
    n, height, width, _ = images.shape
    side = round(fraction * min(height, width))
    if side == 0:
        return images
    centre = torch.stack(
        [torch.randint(0, height, (n,), generator=generator), torch.randint(0, width, (n,), generator=generator)], 1
    )
    top, left = centre[:, :1] - side // 2, centre[:, 1:] - side // 2
    row_in = (torch.arange(height) >= top) & (torch.arange(height) < top + side)  # (N, H)
    col_in = (torch.arange(width) >= left) & (torch.arange(width) < left + side)  # (N, W)
    keep = ~(row_in[:, :, None] & col_in[:, None, :])
    return images * keep[..., None].to(images.dtype)


# --- 2. per-image torchvision transforms ----------------------------------------------------

# torchvision's classes by name; imported only when a run uses them, because importing
# torchvision takes about a second of every short run's start-up (measured: 0.96 s of 17 s).
_AUTO_AUGMENT = {
    "randaugment": "RandAugment",
    "trivialaugment": "TrivialAugmentWide",
    "autoaugment": "AutoAugment",  # ImageNet policy
}


def build_per_image_transform(config: AugmentConfig, img_size: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """A torchvision.transforms.v2 pipeline for one (C, H, W) uint8 image, or None when all its ops are off.

    In order: RandomResizedCrop(img_size, scale=(random_resized_crop, 1)); RandomAffine with
    rotation, shear and zoom; ColorJitter (brightness, contrast, saturation; torchvision leaves
    1-channel images unchanged by saturation, as PIL does); RandAugment / TrivialAugmentWide /
    AutoAugment; RandomErasing(p=random_erasing) last. The output keeps the input's size.

    Pixels that the affine moves in from outside are 0 (black): torchvision's affine offers
    only constant fill, not the reflection `augment_batch` uses by default.
    """
    if not (
        config.random_resized_crop > 0
        or config.rotation > 0
        or config.shear > 0
        or config.zoom > 0
        or config.brightness > 0
        or config.contrast > 0
        or config.saturation > 0
        or config.auto_augment != "none"
        or config.random_erasing > 0
    ):
        return None
    from torchvision.transforms import v2

    ops: list[Callable] = []
    if config.random_resized_crop > 0:
        ops.append(v2.RandomResizedCrop(img_size, scale=(config.random_resized_crop, 1.0), antialias=True))
    if config.rotation > 0 or config.shear > 0 or config.zoom > 0:
        scale = (1.0 - config.zoom, 1.0 + config.zoom) if config.zoom > 0 else None
        shear = config.shear if config.shear > 0 else None
        ops.append(v2.RandomAffine(degrees=config.rotation, shear=shear, scale=scale, fill=0))
    if config.brightness > 0 or config.contrast > 0 or config.saturation > 0:
        strengths = {"brightness": config.brightness, "contrast": config.contrast, "saturation": config.saturation}
        ops.append(v2.ColorJitter(**{name: value or None for name, value in strengths.items()}))
    if config.auto_augment != "none":
        ops.append(getattr(v2, _AUTO_AUGMENT[config.auto_augment])())
    if config.random_erasing > 0:
        ops.append(v2.RandomErasing(p=config.random_erasing, value=0))
    return v2.Compose(ops)


def apply_per_image(images: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
    """Apply `transform` to each image of an (N, H, W, C) uint8 batch; returns (N, H, W, C) uint8.

    A Python loop, one call per image, because torchvision draws one set of parameters per
    call. torchvision.transforms.v2 draws those parameters from torch's global RNG, not from
    a generator we could pass; the trainer seeds that RNG per epoch (torch.manual_seed of
    seed and epoch), so runs and resumed runs still repeat exactly on CPU.

    The loop runs with one torch thread (restored afterwards): on one small image, thread
    start-up costs more than it saves. Measured on 256 x 28 x 28 x 1 with rotation + zoom:
    1 thread 1,800 img/s, 2 threads 36-700 img/s (RandAugment: 3,200 vs 55-60).
    """
    if transform is None or len(images) == 0:
        return images
    chw = images.permute(0, 3, 1, 2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        crop = _lone_random_resized_crop(transform)
        if crop is not None:
            out = _random_resized_crops(crop, chw)
        else:
            out = torch.stack([transform(image) for image in chw])
    finally:
        torch.set_num_threads(threads)
    return out.permute(0, 2, 3, 1).contiguous()


def _lone_random_resized_crop(transform: Callable) -> Callable | None:
    """The RandomResizedCrop when it is the transform's only op (the finetune recipe's case)."""
    ops = getattr(transform, "transforms", None)
    if not ops or len(ops) != 1 or type(ops[0]).__name__ != "RandomResizedCrop":
        return None
    return ops[0]


def _random_resized_crops(crop, chw: torch.Tensor) -> torch.Tensor:
    """The crop of each image, its parameters drawn image by image from the global RNG exactly
    as calling the transform draws them (so the crops are the same), the resampling then spread
    over one thread per core (torch releases the GIL): one image at a time left all but one
    core idle. 16 crops of 258 px to 224 px on a shared 2-core CPU: 230 ms in the loop, 185 ms
    in threads (medians of 5, interleaved)."""
    params = [crop.make_params([image]) for image in chw]
    with ThreadPoolExecutor(cpu_count()) as pool:
        return torch.stack(list(pool.map(crop.transform, chw, params)))


# --- 3. label mixing ---------------------------------------------------------------------
# Written by hand: torchvision.transforms.v2.MixUp/CutMix draw lambda from
# torch.distributions.Beta and boxes from the global RNG (no generator argument), pair each
# image with its neighbour (roll by one) rather than a random partner, and have no RICAP.
# Beta draws come from a numpy Generator seeded from `generator`, so every draw of a batch
# follows from the epoch's generator alone.


def mixing_enabled(config: AugmentConfig) -> bool:
    """Whether any of Mixup, CutMix or RICAP can mix a batch."""
    return config.mix_prob > 0 and (config.mixup > 0 or config.cutmix > 0 or config.ricap > 0)


def _beta(alpha: float, generator: torch.Generator, size: int | None = None) -> np.ndarray | float:
    seed = int(torch.randint(2**31, (1,), generator=generator))
    return np.random.default_rng(seed).beta(alpha, alpha, size)


def _randint(high: int, generator: torch.Generator) -> int:
    """A uniform integer in [0, high); high >= 1."""
    return int(torch.randint(high, (1,), generator=generator))


def _mixup(x, one_hot, alpha, generator):
    lam = float(_beta(alpha, generator))
    perm = to_device(torch.randperm(len(x), generator=generator), x.device)
    return lam * x + (1.0 - lam) * x[perm], lam * one_hot + (1.0 - lam) * one_hot[perm]


def _cutmix(x, one_hot, alpha, generator):
    """One box per batch with area share about 1 - lam, centred uniformly and clipped to the
    image; lam is then corrected to the share of pixels actually kept (Yun et al. 2019)."""
    height, width = x.shape[-2:]
    lam = float(_beta(alpha, generator))
    perm = to_device(torch.randperm(len(x), generator=generator), x.device)
    cut = (1.0 - lam) ** 0.5
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy, cx = _randint(height, generator), _randint(width, generator)
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h - cut_h // 2, height)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w - cut_w // 2, width)
    out = x.clone()
    out[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
    lam = 1.0 - (y1 - y0) * (x1 - x0) / (height * width)
    return out, lam * one_hot + (1.0 - lam) * one_hot[perm]


def _ricap(x, one_hot, beta, generator):
    """RICAP (Takahashi et al. 2018): a boundary point (w, h), drawn from Beta(beta, beta) per
    batch, splits the canvas into four patches; each is a random crop of the same size from
    a shuffled batch, and each label weighs by its patch's area."""
    height, width = x.shape[-2:]
    bw, bh = _beta(beta, generator, size=2)
    w, h = round(width * float(bw)), round(height * float(bh))
    out = torch.empty_like(x)
    targets = torch.zeros_like(one_hot)
    corners = [(0, 0, w, h), (w, 0, width - w, h), (0, h, w, height - h), (w, h, width - w, height - h)]
    for left, top, pw, ph in corners:
        perm = to_device(torch.randperm(len(x), generator=generator), x.device)
        sx, sy = _randint(width - pw + 1, generator), _randint(height - ph + 1, generator)
        out[..., top : top + ph, left : left + pw] = x[perm][..., sy : sy + ph, sx : sx + pw]
        targets += (pw * ph / (width * height)) * one_hot[perm]
    return out, targets


_MIXERS = {"mixup": _mixup, "cutmix": _cutmix, "ricap": _ricap}


def mix_batch(
    x: torch.Tensor, targets: torch.Tensor, num_classes: int, config: AugmentConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix a batch of (N, C, H, W) float model input; returns (x, (N, num_classes) float32 soft targets).

    With probability mix_prob the batch is mixed by one of the enabled methods (mixup,
    cutmix, ricap), chosen uniformly; otherwise x comes back unchanged with one-hot targets.
    Every draw comes from `generator`. Each row of the soft targets sums to 1.
    """
    # Multi-label targets (N, K) mix as they are: a mixed image holds a share of each one's labels.
    if targets.ndim == 2:
        one_hot = targets.to(torch.float32)
    else:
        one_hot = torch.nn.functional.one_hot(targets.long(), num_classes).to(torch.float32)
    if not mixing_enabled(config) or len(x) == 0:
        return x, one_hot
    if float(torch.rand(1, generator=generator)) >= config.mix_prob:
        return x, one_hot
    enabled = [name for name in _MIXERS if getattr(config, name) > 0]
    name = enabled[_randint(len(enabled), generator)]
    return _MIXERS[name](x, one_hot, getattr(config, name), generator)
