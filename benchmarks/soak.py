"""Soak: `imgcls serve` under a bounded stream of mixed good and bad requests on loopback.

Trains a tiny model (three colour classes, 32 px, `keras-cnn`, 2 epochs; a few seconds),
starts `imgcls serve` on it as its own process (default runtime, --max-upload-mb 1),
then sends N requests (default 10,000), C at a time (default 16), from one asyncio client:
about half good images (PNG/JPEG, multipart or raw body) and half bad ones, each with the
status it must get: not an image (415), a truncated PNG (400), malformed multipart (400),
a body over the limit (413), a decompression-bomb header (413), an empty body (400), the
wrong content type (415), a multipart without the `file` field (400). Meanwhile a few
slowloris clients keep opening connections and sending half a request line; the server must
close each of them (imgcls.serve.limits).

Prints: requests/s, "errors" (any answer other than the expected status, or a transport
error), latency percentiles p50/p95/p99 of good and of bad requests, the slowloris
connections opened and closed by the server, and the server's resident memory after
warm-up, half-way and at the end (it must not grow with the number of requests).

Then --big-rounds rounds of C simultaneous uploads of the largest image the server takes (a
one-colour PNG at its max_pixels, a few hundred kB): the server's RSS before, at its peak
(sampled every 10 ms) and 5 s after (the decode budget of imgcls.serve.memory must hold).

    .venv/bin/python benchmarks/soak.py [--requests 10000] [--concurrency 16] [--big-rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import math
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from serve_load import free_port, rss_mb

from imgcls.cli.main import main as imgcls_main

COLOURS = {"red": (210, 60, 40), "blue": (40, 70, 200), "green": (60, 190, 70)}


def make_data(root: Path, per_class: int = 40) -> Path:
    rng = np.random.default_rng(0)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            noise = rng.integers(-50, 50, (36, 36, 3))
            Image.fromarray(np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def encode(colour: tuple[int, int, int], fmt: str, size: int = 48) -> bytes:
    rng = np.random.default_rng(sum(colour) + size)
    pixels = np.clip(np.array(colour) + rng.integers(-40, 40, (size, size, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()


def bomb_png(side: int = 30_000) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    head = chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + head + chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + chunk(b"IEND", b"")


def multipart(field: str, data: bytes, filename: str = "x.png", boundary: str = "soakboundary") -> tuple[bytes, str]:
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def request_kinds(limit_bytes: int) -> list[tuple[str, bytes, str, int]]:
    """(kind, body, content type, expected status); good kinds first."""
    good = []
    for name, colour in COLOURS.items():
        png, jpeg = encode(colour, "PNG"), encode(colour, "JPEG")
        good += [(f"good-{name}-raw-png", png, "image/png", 200), (f"good-{name}-raw-jpeg", jpeg, "image/jpeg", 200)]
        body, ctype = multipart("file", png)
        good.append((f"good-{name}-multipart", body, ctype, 200))
    png = encode(COLOURS["red"], "PNG")
    broken_multipart = multipart("file", png)[0].replace(b"--soakboundary--", b"")[:-40]
    bad = [
        ("not-an-image", b"hello, I am text" * 20, "image/png", 415),
        ("truncated-png", png[: len(png) // 2], "image/png", 400),
        ("malformed-multipart", broken_multipart[: len(broken_multipart) // 2], multipart("file", b"")[1], 400),
        ("multipart-no-boundary", multipart("file", png)[0], "multipart/form-data", 400),
        ("over-the-limit", b"\0" * (limit_bytes + 1000), "image/png", 413),
        ("bomb", bomb_png(), "image/png", 413),
        ("empty", b"", "image/png", 400),
        ("wrong-type", png, "text/plain", 415),
        ("no-file-field", *multipart("picture", png), 400),
    ]
    return good + bad


async def soak(url: str, kinds: list, requests: int, concurrency: int, on_half) -> dict:
    rng = random.Random(0)
    good = [k for k in kinds if k[3] == 200]
    bad = [k for k in kinds if k[3] != 200]
    plan = [rng.choice(good if rng.random() < 0.5 else bad) for _ in range(requests)]
    latencies: dict[str, list[float]] = {"good": [], "bad": []}
    errors: list[str] = []
    cursor = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal cursor
        while cursor < len(plan):
            i, cursor = cursor, cursor + 1
            if i == len(plan) // 2:
                on_half()
            kind, body, ctype, expected = plan[i]
            start = time.perf_counter()
            try:
                response = await client.post(url, content=body, headers={"content-type": ctype})
                status = response.status_code
                ok = status == expected and (status != 200 or response.json()["predictions"][0]["label"] in kind)
                ok = ok and (status == 200 or "error" in response.json())
            except httpx.HTTPError as err:
                status, ok = type(err).__name__, False
            latencies["good" if expected == 200 else "bad"].append(time.perf_counter() - start)
            if not ok:
                errors.append(f"{kind}: got {status}, expected {expected}")

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    return {"latencies": latencies, "errors": errors, "seconds": seconds}


async def slowloris(host: str, port: int, stop: asyncio.Event, sockets: int) -> tuple[int, int]:
    """Keep `sockets` connections sending half a request line; count those the server closed."""
    opened = closed = 0

    async def one() -> None:
        nonlocal opened, closed
        while not stop.is_set():
            reader, writer = await asyncio.open_connection(host, port)
            opened += 1
            writer.write(b"POST /predict HTTP/1.1\r\nHost: soak\r\n")
            await writer.drain()
            while not stop.is_set():
                try:
                    got = await asyncio.wait_for(reader.read(1024), 0.5)
                except TimeoutError:
                    continue  # still open: wait on, or stop
                except ConnectionError:
                    got = b""
                if not got:  # closed by the server
                    closed += 1
                    break
            writer.close()

    async def until_stop() -> None:
        await asyncio.gather(*(one() for _ in range(sockets)))

    await until_stop()
    return opened, closed


def percentiles(values: list[float]) -> str:
    if not values:
        return "-"
    p50, p95, p99 = np.percentile(np.array(values) * 1000, [50, 95, 99])
    return f"{p50:.1f} / {p95:.1f} / {p99:.1f}"


def largest_png(max_pixels: int) -> bytes:
    """The largest image the server takes (a square at its pixel limit), one colour: a PNG of a
    few hundred kB that decodes to hundreds of MB, the costliest upload under --max-upload-mb."""
    side = math.isqrt(max_pixels)
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (200, 100, 50)).save(buffer, "PNG")
    return buffer.getvalue()


async def largest_uploads(url: str, body: bytes, concurrency: int, rounds: int, server_pid: int) -> dict:
    """`concurrency` simultaneous uploads of `body`, `rounds` times: the server's RSS before, its
    peak (sampled every 10 ms), and 5 s after the last round; the statuses answered."""
    before, peak, statuses, done = rss_mb(server_pid), 0.0, [], asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_mb(server_pid))
            await asyncio.sleep(0.01)

    sampler = asyncio.create_task(sample())
    headers = {"content-type": "image/png"}
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=concurrency)) as client:
        for _ in range(rounds):
            answers = await asyncio.gather(
                *(client.post(url, content=body, headers=headers) for _ in range(concurrency)), return_exceptions=True
            )
            statuses += [a.status_code if isinstance(a, httpx.Response) else type(a).__name__ for a in answers]
    done.set()
    await sampler
    await asyncio.sleep(5)
    return {"before": before, "peak": peak, "after": rss_mb(server_pid), "statuses": statuses}


def start_server(checkpoint: Path, port: int, limit_mb: float) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "imgcls",
        "-q",
        "serve",
        str(checkpoint),
        "--port",
        str(port),
        "--max-upload-mb",
        str(limit_mb),
    ]
    server = subprocess.Popen(cmd)
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or server.poll() is not None:
            server.kill()
            raise SystemExit("soak: the server did not start")
        time.sleep(0.2)


async def run(url: str, host: str, port: int, kinds, args, server_pid: int) -> tuple[dict, tuple[int, int], list]:
    rss = [rss_mb(server_pid)]
    stop = asyncio.Event()
    loris = asyncio.create_task(slowloris(host, port, stop, args.slowloris))
    result = await soak(url, kinds, args.requests, args.concurrency, lambda: rss.append(rss_mb(server_pid)))
    stop.set()
    counts = await loris
    rss.append(rss_mb(server_pid))
    return result, counts, rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--slowloris", type=int, default=4, help="connections kept sending half a request")
    parser.add_argument("--big-rounds", type=int, default=3, help="rounds of C simultaneous largest uploads")
    args = parser.parse_args()
    limit_mb = 1.0
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(Path(tmp) / "data")
        run_dir = Path(tmp) / "run"
        train = [
            "-q",
            "train",
            str(data),
            "--out",
            str(run_dir),
            "--img-size",
            "32",
            "--epochs",
            "2",
            "--batch-size",
            "16",
        ]
        if imgcls_main(train) != 0:
            raise SystemExit("soak: training the tiny model failed")
        port = free_port()
        server = start_server(run_dir / "best.safetensors", port, limit_mb)
        try:
            url = f"http://127.0.0.1:{port}/predict"
            kinds = request_kinds(int(limit_mb * 1e6))
            warm = argparse.Namespace(requests=200, concurrency=args.concurrency, slowloris=0)
            asyncio.run(run(url, "127.0.0.1", port, kinds, warm, server.pid))  # warm-up: caches, threads
            result, (opened, closed), rss = asyncio.run(run(url, "127.0.0.1", port, kinds, args, server.pid))
            pixels = httpx.get(f"http://127.0.0.1:{port}/info").json()["max_pixels"]
            big = asyncio.run(largest_uploads(url, largest_png(pixels), args.concurrency, args.big_rounds, server.pid))
        finally:
            server.terminate()
            server.wait(10)
    lat, errors = result["latencies"], result["errors"]
    print(
        f"{args.requests} requests ({len(lat['good'])} good, {len(lat['bad'])} bad), {args.concurrency} at a "
        f"time, {args.slowloris} slowloris connections; load {os.getloadavg()[0]:.1f}"
    )
    print(f"requests/s            {args.requests / result['seconds']:.0f}")
    print(f"errors                {len(errors)}")
    for line in sorted(set(errors))[:10]:
        print(f"    {line} (x{errors.count(line)})")
    print(f"good p50/p95/p99 ms   {percentiles(lat['good'])}")
    print(f"bad  p50/p95/p99 ms   {percentiles(lat['bad'])}")
    print(f"slowloris             {opened} opened, {closed} closed by the server")
    print(f"server RSS MB         {rss[0]:.0f} after warm-up, {rss[1]:.0f} half-way, {rss[2]:.0f} at the end")
    side = math.isqrt(pixels)
    answered = ", ".join(f"{n} x {s}" for s, n in sorted(Counter(map(str, big["statuses"])).items()))
    print(
        f"largest uploads       {args.concurrency} at a time x {args.big_rounds} ({side}x{side} PNG, "
        f"{len(largest_png(pixels)) / 1e3:.0f} kB): answered {answered}; server RSS MB {big['before']:.0f} before, "
        f"{big['peak']:.0f} peak, {big['after']:.0f} 5 s after"
    )
    print(
        f"summary: soak {args.requests} x {args.concurrency}: {len(errors)} errors, "
        f"p99 good {percentiles(lat['good']).split(' / ')[2]} ms, RSS {rss[0]:.0f} -> {rss[2]:.0f} MB"
    )
    if errors:
        sys.exit("soak: some requests did not get the answer they should")


if __name__ == "__main__":
    main()
