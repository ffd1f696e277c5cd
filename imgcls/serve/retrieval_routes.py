"""The server's gallery routes: recognise, search, and (with an admin token) enrol.

  POST /recognize?topk=3     one image -> best enrolled label or "unknown", similarity, candidates
  POST /search?k=10          one image -> the most similar enrolled images
  GET  /gallery              labels, counts, model and threshold
  POST /gallery/{label}      enrol the image(s) of the request under label. Only when the server
                             was started with --admin-token, and only for a request carrying
                             "Authorization: Bearer TOKEN": 401 without it or with another token;
                             403 on a server started without a token (its gallery is read-only).
Images are sent as /predict takes them: multipart field `file` (enrolment takes several) or a
raw image/* body. Enrolled uploads are kept under the gallery's uploads/ folder, so search
results point at files. Errors are JSON {"error": "..."} with the statuses /predict uses, and
409 for a query to an empty gallery.
"""

from __future__ import annotations

import hmac
import logging
import threading
import uuid
from pathlib import Path

import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from imgcls.data.sources import IMAGE_EXTENSIONS, unsafe_name_reason
from imgcls.errors import DataError, NotAnImageError, TooManyPixelsError
from imgcls.retrieval.commands import open_gallery
from imgcls.retrieval.gallery import GalleryError, update_gallery
from imgcls.retrieval.recognize import recognize, search
from imgcls.serve.memory import DEFAULT_DECODE_BUDGET_MB, SERVE_MAX_PIXELS, DecodeSlots, ServerBusy

log = logging.getLogger(__name__)

MAX_ENROL_FILES = 64  # images per enrolment request


class _AnyText(Convertor):
    """A path parameter matching any text, '/' and line breaks included (Starlette's 'path' stops
    at a line break, which would make a label holding one a bare 404 instead of a clear 400)."""

    regex = r"[\s\S]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("anytext", _AnyText())


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _uploads(request: Request, many: bool) -> list[tuple[bytes, str]] | JSONResponse:
    """(bytes, name) of the request's image(s), or the error response to send."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        try:  # the limits of /predict: a form of thousands of parts costs memory for nothing
            form = await request.form(max_files=MAX_ENROL_FILES if many else 1, max_fields=16)
        except HTTPException as err:  # Starlette's answer to malformed multipart
            return _error(400, f"malformed multipart body: {err.detail}")
        files = [f for f in form.getlist("file") if isinstance(f, UploadFile)]
        if not files:
            return _error(400, "send the image as the multipart form field 'file'.")
        if len(files) > (MAX_ENROL_FILES if many else 1):
            return _error(400, f"send at most {MAX_ENROL_FILES if many else 1} image(s) per request.")
        found = [(await f.read(), f.filename or "upload") for f in files]
    elif content_type.startswith("image/") or content_type == "application/octet-stream":
        found = [(await request.body(), "upload")]
    else:
        return _error(415, f"content type {content_type or 'none'!r}: send an image/* body or a multipart 'file'.")
    if any(not data for data, _ in found):
        return _error(400, "the request holds an empty image (0 bytes).")
    return found


def _decode_error(err: DataError) -> JSONResponse:
    if isinstance(err, NotAnImageError):
        return _error(415, str(err))
    if isinstance(err, TooManyPixelsError):
        return _error(413, str(err))
    return _error(400, str(err))


def _stored_name(label_dir: Path, name: str) -> Path:
    suffix = Path(name).suffix.lower()
    return label_dir / f"{uuid.uuid4().hex}{suffix if suffix in IMAGE_EXTENSIONS else '.img'}"


def retrieval_router(
    gallery_dir: str | Path,
    *,
    checkpoint: str | Path | None = None,
    admin_token: str | None = None,
    max_pixels: int | None = None,
    topk: int = 3,
    slots: DecodeSlots | None = None,
) -> APIRouter:
    """Routes over the gallery in `gallery_dir`, embedded with `checkpoint` (which must be the
    gallery's model; None: the checkpoint the gallery names)."""
    folder = Path(gallery_dir)
    gallery, embedder = open_gallery(folder, checkpoint)
    lock = threading.Lock()  # enrolment changes the arrays queries read
    router = APIRouter()
    slots = slots or DecodeSlots(DEFAULT_DECODE_BUDGET_MB, max_pixels or SERVE_MAX_PIXELS)

    async def embed(request: Request, many: bool = False) -> tuple[np.ndarray, list[tuple[bytes, str]]] | JSONResponse:
        found = await _uploads(request, many)
        if isinstance(found, JSONResponse):
            return found
        try:
            pixels = []
            for data, name in found:
                async with slots.slot():  # the same decode budget as /predict
                    pixels.append(await run_in_threadpool(embedder.decode, data, name, max_pixels))
        except DataError as err:
            return _decode_error(err)
        except ServerBusy as err:
            return _error(503, str(err))
        return await run_in_threadpool(embedder.embed, np.stack(pixels)), found

    def locked(function, *args, **kwargs):
        with lock:
            return function(*args, **kwargs)

    @router.post("/recognize")
    async def recognize_image(request: Request, topk: int = Query(topk, ge=1, le=1000)):
        """The enrolled label most similar to one image, or "unknown" below the gallery's threshold."""
        embedded = await embed(request)
        if isinstance(embedded, JSONResponse):
            return embedded
        try:
            result = await run_in_threadpool(locked, recognize, gallery, embedded[0], ["upload"], topk=topk)
        except GalleryError as err:  # an empty gallery: nothing to compare with yet
            return _error(409, str(err))
        return {key: value for key, value in result[0].to_json().items() if key != "path"}

    @router.post("/search")
    async def search_image(request: Request, k: int = Query(10, ge=1, le=1000)):
        """The k enrolled images most similar to one image."""
        embedded = await embed(request)
        if isinstance(embedded, JSONResponse):
            return embedded
        try:
            result = await run_in_threadpool(locked, search, gallery, embedded[0], ["upload"], k=k)
        except GalleryError as err:
            return _error(409, str(err))
        # A file's name, never its folders: the server's paths are not the client's business.
        return {
            "matches": [
                {"name": Path(m.path).name, "label": m.label, "similarity": m.similarity} for m in result[0].matches
            ]
        }

    @router.get("/gallery")
    def gallery_info() -> dict:
        with lock:
            info = gallery.info()
        model = {
            **info["model"],
            "checkpoint": Path(info["model"].get("checkpoint", "")).name,
        }  # not the server's paths
        return {**info, "model": model, "enrolment": "token" if admin_token else "read-only"}

    @router.post("/gallery/{label:anytext}")  # any label reaches the check below, to be refused clearly
    async def enrol(label: str, request: Request):
        """Enrol the request's image(s) under `label` (bearer token of --admin-token)."""
        if not admin_token:
            return _error(403, "this server's gallery is read-only; start `imgcls serve` with --admin-token to enrol.")
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), admin_token.encode()):
            return _error(
                401,
                "enrolment needs the header 'Authorization: Bearer <admin token>'.",
                headers={"WWW-Authenticate": "Bearer"},
            )
        reason = unsafe_name_reason(label)  # a label is a class name: the same rule as everywhere
        if reason:
            return _error(400, f"the label {label[:80]!r} is refused: {reason}.")
        embedded = await embed(request, many=True)
        if isinstance(embedded, JSONResponse):
            return embedded
        vectors, found = embedded

        def store() -> int:
            label_dir = folder / "uploads" / uuid.uuid5(uuid.NAMESPACE_URL, label).hex
            label_dir.mkdir(parents=True, exist_ok=True)
            paths = []
            for data, name in found:
                target = _stored_name(label_dir, name)
                target.write_bytes(data)
                paths.append(str(target.absolute()))
            with lock:  # read the gallery again: `gallery add` may have written since (version stamp)
                fresh, _ = update_gallery(folder, lambda g: g.add(label, vectors, paths))
                gallery.adopt(fresh)
                return len(gallery)

        total = await run_in_threadpool(store)
        log.info("enrolled %d image(s) as %r over HTTP", len(found), label)
        return {"label": label.strip(), "enrolled": len(found), "images": total}

    return router
