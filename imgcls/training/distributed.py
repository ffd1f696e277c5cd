"""Training on several processes with PyTorch's own engine: torchrun starts the processes and
sets RANK / WORLD_SIZE / LOCAL_RANK; imgcls joins the process group (gloo on CPU, nccl on
CUDA), wraps the model in DistributedDataParallel, gives each process its share of every
global batch, and lets rank 0 alone write files and log epochs.

Every process draws the same epoch permutation (the generator is seeded from the seed and
the epoch), so the shares need no DistributedSampler: process r takes rows r, r+W, r+2W, ...
of each global batch of `train.batch_size` images. DDP averages gradients over the processes,
which is the gradient of the global batch's mean loss.
"""

from __future__ import annotations

import datetime
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence

import torch
from torch import nn

from imgcls.errors import ConfigError

log = logging.getLogger(__name__)

# A process that waits this long for the others (one died, or hangs) fails instead of hanging;
# torchrun then stops the rest, and `--resume` continues from the last saved epoch.
TIMEOUT = datetime.timedelta(minutes=10)


def world_size() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_environment(device: torch.device) -> None:
    """Join the process group torchrun set up; quiet the logs of every process but rank 0."""
    if not launched_by_torchrun() or torch.distributed.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)  # cuda:LOCAL_RANK (imgcls.device.resolve_device)
        torch.distributed.init_process_group(backend, timeout=TIMEOUT, device_id=device)  # binds NCCL to it
    else:
        torch.distributed.init_process_group(backend, timeout=TIMEOUT)
    if not is_main():
        logging.getLogger("imgcls").setLevel(logging.WARNING)
    log.info("process group: %d processes (%s)", world_size(), backend)


def shutdown() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def wrap(model: nn.Module, *, sync_bn: bool, device: torch.device) -> nn.Module | None:
    """DistributedDataParallel around the model when there are several processes, else None."""
    if world_size() == 1:
        if sync_bn:
            log.warning("train.sync_bn has no effect in a single process")
        return None
    if sync_bn:
        if device.type != "cuda":
            raise ConfigError("train.sync_bn: PyTorch's SyncBatchNorm works on CUDA only; leave it off on CPU.")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index or 0] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def shard_batches(batches: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """This process's rows of each global batch (all of them in a single process)."""
    world = world_size()
    if world == 1:
        return list(batches)
    r = rank()
    # Every process must take every step (DDP syncs each backward): a last batch with fewer
    # images than processes is left out by all of them alike.
    return [b[r::world] for b in batches if len(b) >= world]


def _collective_device() -> torch.device:
    """Where collectives take their tensors: nccl reduces GPU tensors only, gloo CPU tensors."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sums(*values: float) -> tuple[float, ...]:
    """Sums over the processes (train loss and correct counts), so every rank reports the same."""
    if world_size() == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    torch.distributed.all_reduce(tensor)
    return tuple(tensor.tolist())


def my_rows(total: int) -> slice:
    """This process's share of `total` rows to evaluate: rows r, r+W, r+2W, ..."""
    return slice(rank(), total, world_size())


def gather_rows(local: torch.Tensor, total: int) -> torch.Tensor:
    """Every process's `my_rows` results put back in row order, on every process (on the CPU),
    so all ranks see the same validation scores and take the same decisions (best epoch,
    early stopping, plateau schedule)."""
    world = world_size()
    if world == 1:
        return local
    per = -(-total // world)  # all_gather wants equal sizes: pad the shorter shares
    padded = torch.zeros((per, *local.shape[1:]), dtype=local.dtype, device=_collective_device())
    padded[: len(local)] = local.to(padded.device)
    parts = [torch.empty_like(padded) for _ in range(world)]
    torch.distributed.all_gather(parts, padded)
    rows = torch.empty((total, *local.shape[1:]), dtype=local.dtype)
    for r, part in enumerate(parts):
        rows[r::world] = part[: len(range(r, total, world))].cpu()
    return rows


def merge_lists(items: list[dict], key: str) -> list[dict]:
    """Every process's items, each `key` once, in rank order (a collective: all ranks call it)."""
    if world_size() == 1:
        return items
    lists: list[list[dict] | None] = [None] * world_size()
    torch.distributed.all_gather_object(lists, items)
    merged: dict = {}
    for part in lists:
        for item in part:
            merged.setdefault(item[key], item)  # the first process to list it
    return list(merged.values())


def barrier() -> None:
    if world_size() > 1:
        torch.distributed.barrier()


def launch(devices: int, argv: Sequence[str]) -> int:
    """`imgcls train --devices N ...`: start N processes on this machine through torchrun."""
    if devices < 1:
        raise ConfigError("--devices must be 1 or more.")
    torchrun = shutil.which("torchrun")
    command = [torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"]
    command += ["--standalone", f"--nproc-per-node={devices}", "-m", "imgcls", *argv]
    log.info("starting %d processes: %s", devices, " ".join(command))
    return subprocess.call(command)
