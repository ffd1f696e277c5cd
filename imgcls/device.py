"""Where training runs and in what arithmetic: CPU or CUDA, float32, bfloat16 or float16.

The training loop is written once for both devices. Batches are drawn and augmented on the
CPU (the epoch's generator lives there, so a run draws the same images and augmentations
on either device), then moved with `to_device`: on CUDA through pinned memory with a
non-blocking copy, so the copy overlaps the previous step's kernels; on the CPU it is the
tensor itself. Mixed precision is PyTorch's autocast, and float16 adds its GradScaler
(loss scaling keeps small gradients from underflowing). On the CPU the same GradScaler
path runs with `--precision fp16`, which is how CI exercises the CUDA code without a GPU.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os

import torch

from imgcls.errors import ConfigError

log = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def resolve_device(name: str = "auto") -> torch.device:
    """auto: CUDA when PyTorch sees a GPU, else the CPU. Under torchrun each process takes
    the GPU of its LOCAL_RANK (`cuda` or `auto`), or the one GPU it is shown (schedulers that
    give each process its own CUDA_VISIBLE_DEVICES); `cuda:N` names one GPU, one process."""
    name = name.strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name != "cuda" and not name.startswith("cuda:"):
        raise ConfigError(f"device {name!r}: choose auto, cpu, cuda or cuda:N.")
    if not torch.cuda.is_available():
        raise ConfigError(
            f"device {name!r}: PyTorch sees no CUDA GPU here (this torch build: "
            f"{torch.__version__}, CUDA {torch.version.cuda or 'none'}). Use the CPU (train --device cpu; "
            "predict, evaluate, serve --runtime torch or onnx), or a machine with a GPU and a CUDA build of torch."
        )
    count, processes = torch.cuda.device_count(), int(os.environ.get("WORLD_SIZE", "1"))
    if name == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local < count:
            return torch.device("cuda", local)
        if count == 1:
            return torch.device("cuda", 0)
        raise ConfigError(
            f"process {local} of this machine has no GPU of its own: there are {count}. "
            f"Start at most {count} processes a machine (--devices / --nproc-per-node)."
        )
    if processes > 1:
        raise ConfigError(
            f"device {name!r} would put all {processes} processes on one GPU; use "
            "--device cuda, and each process takes the GPU of its local rank."
        )
    index = name.removeprefix("cuda:")
    if not index.isdigit() or int(index) >= count:
        raise ConfigError(f"device {name!r}: this machine has GPUs cuda:0 to cuda:{count - 1}.")
    return torch.device("cuda", int(index))


# oneDNN's instruction-set limits (ONEDNN_MAX_CPU_ISA, which runs a CPU as an older one) that
# leave out bfloat16 arithmetic: under them its bfloat16 convolutions are emulated, and slow.
ONEDNN_ISAS_WITHOUT_BF16 = frozenset(
    {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}
)


def cpu_has_bf16() -> bool:
    """True on CPUs with native bfloat16 arithmetic (AVX512-BF16 or AMX), unless oneDNN is
    limited to an instruction set without it."""
    limit = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or ""
    if limit.strip().upper() in ONEDNN_ISAS_WITHOUT_BF16:
        return False
    cpu = torch.backends.cpu.get_cpu_capability()
    if cpu not in ("AVX512", "AVX512_BF16", "AMX"):
        return False
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(check is not None and check() for check in checks)


def choose_autocast(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `train.precision` on a device (None = float32).

    auto: bfloat16 on CPUs that have it (2-15x faster convolutions here, see the performance
    notes); on CUDA bfloat16 where the GPU has it (Ampere and later: no loss scaling needed),
    else float16 with loss scaling."""
    if precision != "auto":
        return DTYPES[precision]
    if device.type == "cuda":
        # Compute capability 8 (Ampere) and later have bfloat16 tensor cores; earlier GPUs
        # only emulate it (which torch.cuda.is_bf16_supported() counts as support).
        major, _ = torch.cuda.get_device_capability(device)
        return torch.bfloat16 if major >= 8 else torch.float16
    return torch.bfloat16 if cpu_has_bf16() else None


def autocast(dtype: torch.dtype | None, device: torch.device):
    """Autocast to dtype when asked, else nothing."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def grad_scaler(dtype: torch.dtype | None, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for float16 (its 5 exponent bits underflow small gradients); a disabled
    scaler, which passes every call through, otherwise."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor on `device`. On CUDA it is pinned and copied without blocking, so the host
    goes on preparing the next batch instead of waiting for the copy (a copy from pageable
    memory makes the host wait for the GPU's queue); PyTorch's pinned allocator caches the
    page-locked blocks and keeps each one until its copy is done."""
    if device.type == "cpu" or batch.device == device:
        return batch
    return batch.pin_memory().to(device, non_blocking=True)


@functools.lru_cache(maxsize=64)
def constant(values: tuple[float, ...], device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A small constant tensor (normalisation scales and shifts), made once per device: each
    new one on a GPU would be a copy that makes the host wait."""
    with torch.inference_mode(False):  # usable both inside and outside inference mode
        return to_device(torch.tensor(values, dtype=dtype), device)


def rng_states(device: torch.device) -> dict[str, torch.Tensor]:
    """The global RNG states that dropout draws from: the CPU's, and the GPU's on CUDA."""
    states = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def set_rng_states(states: dict[str, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(states["torch"])
    if device.type != "cuda":
        return
    if states.get("cuda") is None:  # saved by a run on the CPU, resumed on a GPU
        log.warning("the saved epoch has no GPU random state: its dropout draws will differ from an uninterrupted run")
        return
    torch.cuda.set_rng_state(states["cuda"], device)
