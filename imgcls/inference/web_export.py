"""`imgcls export --format web`: a static folder that classifies dropped images in the browser.

The folder holds the model exported --with-preprocessing, its plain metadata as JSON (the
onnxruntime-web API does not show an ONNX file's metadata), the page and docs/deploy.md's
browser client, and onnxruntime-web's WebAssembly build. onnxruntime-web comes from its npm
package at a pinned version, fetched once with `npm pack` into imgcls's cache folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from importlib import resources
from pathlib import Path

from imgcls.errors import ConfigError
from imgcls.inference.export import ExportResult, export_onnx

ORT_WEB_VERSION = "1.31.1"
# The WebAssembly-only build: its module, the loader it imports, and the binary.
ORT_WEB_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
PAGE_FILES = ("index.html", "client.js")


def cache_dir() -> Path:
    return Path(os.environ.get("IMGCLS_CACHE_DIR") or Path.home() / ".cache" / "imgcls")


def ort_web_dist() -> Path:
    """onnxruntime-web's dist/ folder in the cache, fetched with npm the first time."""
    package = cache_dir() / f"onnxruntime-web-{ORT_WEB_VERSION}"
    dist = package / "package" / "dist"
    if all((dist / name).is_file() for name in ORT_WEB_FILES):
        return dist
    npm = shutil.which("npm")
    if npm is None:
        raise ConfigError(
            f"--format web needs onnxruntime-web {ORT_WEB_VERSION} from npm: install npm, "
            f"or unpack the package's tarball into {package} (as package/dist/...)."
        )
    package.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=package.parent, prefix=".ort-web-") as tmp:
        command = [npm, "pack", f"onnxruntime-web@{ORT_WEB_VERSION}", "--pack-destination", tmp, "--silent"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        tarballs = list(Path(tmp).glob("*.tgz"))
        if done.returncode != 0 or not tarballs:
            reason = (done.stderr.strip().splitlines() or ["no tarball"])[-1]
            raise ConfigError(f"npm could not fetch onnxruntime-web {ORT_WEB_VERSION}: {reason}")
        # Only the files the page loads, and the licence, out of the 35 MB package.
        wanted = {f"package/dist/{name}" for name in ORT_WEB_FILES} | {"package/LICENSE", "package/package.json"}
        unpacked = Path(tmp) / "unpacked"
        with tarfile.open(tarballs[0]) as tar:
            tar.extractall(unpacked, members=[m for m in tar.getmembers() if m.name in wanted], filter="data")
        shutil.rmtree(package, ignore_errors=True)
        unpacked.rename(package)  # whole or not at all: a half-fetched package is never used
    return dist


def export_web(checkpoint: Path, out: Path, *, check: list[str] | None = None) -> ExportResult:
    """Write the static folder `out`; the model is checked as `export --with-preprocessing` is."""
    import onnx

    dist = ort_web_dist()  # first: without onnxruntime-web there is no page to write
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; --format web writes a folder.")
    out.mkdir(parents=True, exist_ok=True)
    result = export_onnx(checkpoint, out / "model.onnx", pixels=True, check=check)
    props = {p.key: p.value for p in onnx.load(str(result.path), load_external_data=False).metadata_props}
    (out / "metadata.json").write_text(json.dumps(props, ensure_ascii=False, indent=1), encoding="utf-8")
    for name in ORT_WEB_FILES:
        shutil.copyfile(dist / name, out / name)
    page = resources.files("imgcls.inference").joinpath("web")
    for name in PAGE_FILES:
        (out / name).write_text(page.joinpath(name).read_text(encoding="utf-8"), encoding="utf-8")
    return result
