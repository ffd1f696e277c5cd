"""Where training data can come from, and one process against two.

Data: the 20,000-image Fashion-MNIST PNG folder of train_speed.py (2,000 per class) and
its 10,000-image validation folder; the same 20,000 packed once into tar shards
(`imgcls data shard`, 50 MB shards) under benchmarks/.data/fm-20k-shards/.

(1) Decoding into the cache, in this process with the same worker count: images/s from the
    class folder and from the shards.
(2) Training from the in-memory cache: `imgcls train FOLDER --val VAL --model keras-cnn
    --img-size 28 --batch-size 128 --epochs 2 --set augment.translate=0` in one process and
    with `--devices 2` (two torchrun processes, the global batch split between them), timed
    whole and per epoch (history.csv). Both processes share the same 2 cores here, so this
    measures the overhead of DDP, not a speed-up; on a machine with more cores (or several
    machines) each process brings its own.
(3) Training from the shards (5 MB shards, 9 of them: enough for every reader to have its
    own): decoded into the cache first (`data.stream=never`), then streamed through the
    shuffle buffer with 1 and 2 reader processes, and streamed by 2 torchrun processes with
    one reader each; best-epoch images/s against training from the folder's cache in (2).

    .venv/bin/python benchmarks/distributed.py
"""

from __future__ import annotations

import csv
import time

from train_speed import fashion_folders
from transfer import DATA, train

from imgcls.data.cache import build_cache, cpu_count
from imgcls.data.resolve import resolve_training_data
from imgcls.data.shards import shard_sources, write_shards

ARGS = (
    "--model",
    "keras-cnn",
    "--img-size",
    "28",
    "--batch-size",
    "128",
    "--epochs",
    "2",
    "--set",
    "augment.translate=0",
)


def decode_rate(samples) -> float:
    start = time.perf_counter()
    cache = build_cache(samples, size=28, workers=cpu_count())
    return len(cache) / (time.perf_counter() - start)


def epoch_rate(run) -> float:
    with (run / "history.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return 20_000 / min(float(r["seconds"]) for r in rows)


def main() -> None:
    train_folder, val_folder = fashion_folders()
    shards = DATA / "fm-20k-shards"
    if not (shards / "index.json").is_file():
        write_shards(train_folder, shards, shard_bytes=50 * 2**20)
    folder_samples = resolve_training_data(train_folder, val_fraction=0.01, seed=0).train
    shard_samples = shard_sources(shards, None, val_fraction=0.01, seed=0).train
    rates = {"class folder": decode_rate(folder_samples), "tar shards": decode_rate(shard_samples)}
    rates["class folder (again)"] = decode_rate(folder_samples)  # the page cache is warm for both now
    for name, rate in rates.items():
        print(f"decode {name:22s} {rate:8,.0f} images/s ({len(folder_samples):,} images, {cpu_count()} workers)")
    runs = {}
    for devices in (1, 2):
        extra = ("--devices", "2") if devices == 2 else ()
        run, seconds = train(f"distributed-{devices}", train_folder, "--val", val_folder, *ARGS, *extra)
        runs[devices] = (seconds, epoch_rate(run))
        print(
            f"train from the cache, {devices} process(es): whole run {seconds:.1f} s, best epoch "
            f"{runs[devices][1]:,.0f} images/s"
        )
    print(
        f"two processes / one: whole run {runs[2][0] / runs[1][0]:.2f}x the time, "
        f"epoch speed {runs[2][1] / runs[1][1]:.2f}x"
    )
    small = DATA / "fm-20k-shards-5mb"
    if not (small / "index.json").is_file():
        write_shards(train_folder, small, shard_bytes=5 * 2**20)
    sources = {
        "shards -> cache": ("--set", "data.stream=never"),
        "streamed, 1 reader": ("--set", "data.stream=always", "--set", "data.decode_workers=1"),
        "streamed, 2 readers": ("--set", "data.stream=always", "--set", "data.decode_workers=2"),
        "streamed, 2 processes x 1 reader": (
            "--set",
            "data.stream=always",
            "--set",
            "data.decode_workers=1",
            "--devices",
            "2",
        ),
    }
    for name, extra in sources.items():
        slug = "".join(c if c.isalnum() else "-" for c in name)
        run, seconds = train(f"shards-{slug}", small, "--val", val_folder, *ARGS, *extra)
        rate = epoch_rate(run)
        print(
            f"train {name:34s} whole run {seconds:5.1f} s, best epoch {rate:7,.0f} images/s = "
            f"{rate / runs[1][1]:.2f}x the folder's cache"
        )


if __name__ == "__main__":
    main()
