"""Server load: `imgcls serve` under a bounded loop of concurrent requests on loopback.

Starts `imgcls serve CHECKPOINT` as its own process, once with each runtime (ONNX Runtime,
the default, and PyTorch: the ratio is taken in the same run), waits for /health, then
sends N requests (default 2,000), C at a time (default 16), each a Fashion-MNIST test PNG
as a multipart upload, from one asyncio client in this process. Prints requests/s,
p50/p99 latency, errors (anything but 200 with predictions) and the server's resident
memory before and after the load.

    .venv/bin/python benchmarks/serve_load.py [--requests 2000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from predict_speed import find_checkpoint
from train_speed import fashion_folders

from imgcls.inference.predictor import expand_paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def load(url: str, images: list[bytes], requests: int, concurrency: int) -> tuple[list[float], int, float]:
    latencies, errors = [], 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        while not queue.empty():
            i = queue.get_nowait()
            start = time.perf_counter()
            response = await client.post(url, files={"file": (f"{i}.png", images[i % len(images)], "image/png")})
            latencies.append(time.perf_counter() - start)
            if response.status_code != 200 or not response.json().get("predictions"):
                errors += 1

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        return latencies, errors, time.perf_counter() - start


def run_server(checkpoint: Path, runtime: str, images: list[bytes], args) -> dict:
    port = free_port()
    cmd = [sys.executable, "-m", "imgcls", "-q", "serve", str(checkpoint), "--port", str(port), "--runtime", runtime]
    server = subprocess.Popen(cmd)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(f"serve_load: the {runtime} server did not start")
            time.sleep(0.2)
        served_by = httpx.get(f"{base}/info").json()["runtime"]
        asyncio.run(load(f"{base}/predict", images, 64, args.concurrency))  # warm-up
        before = rss_mb(server.pid)
        latencies, errors, seconds = asyncio.run(load(f"{base}/predict", images, args.requests, args.concurrency))
        after = rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(10)
    ms = np.array(latencies) * 1000
    p50, p99 = np.percentile(ms, [50, 99])
    return {
        "runtime": served_by,
        "rps": args.requests / seconds,
        "p50": p50,
        "p99": p99,
        "errors": errors,
        "rss_before": before,
        "rss_after": after,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    train, val = fashion_folders()
    checkpoint = find_checkpoint(train, val)
    images = [path.read_bytes() for _, path in expand_paths([str(val)])[:500]]
    print(
        f"{args.requests} requests, {args.concurrency} at a time, {len(images)} distinct PNGs, "
        f"checkpoint {checkpoint.name}, load {os.getloadavg()[0]:.1f}"
    )
    rows = [run_server(checkpoint, runtime, images, args) for runtime in ("onnx", "torch")]
    print(f"\n{'runtime':12s} {'req/s':>7s} {'p50 ms':>7s} {'p99 ms':>7s} {'errors':>6s} {'RSS MB before/after':>20s}")
    for r in rows:
        print(
            f"{r['runtime']:12s} {r['rps']:7.0f} {r['p50']:7.1f} {r['p99']:7.1f} {r['errors']:6d} "
            f"{r['rss_before']:9.0f} / {r['rss_after']:.0f}"
        )
    onnx, torch_row = rows
    print(f"load after {os.getloadavg()[0]:.1f}")
    print(
        f"summary: serve_load {args.requests} x {args.concurrency}: {onnx['runtime']} {onnx['rps']:.0f} req/s "
        f"(p99 {onnx['p99']:.0f} ms), torch {torch_row['rps']:.0f} req/s, {onnx['rps'] / torch_row['rps']:.2f}x; "
        f"errors {onnx['errors'] + torch_row['errors']}"
    )
    if onnx["errors"] or torch_row["errors"]:
        sys.exit("serve_load: some requests failed")


if __name__ == "__main__":
    main()
