"""The HTTP server: POST an image, get its top-k labels; a small web page at /.

The model is loaded once. Each request's image is decoded in a worker thread, and a
micro-batcher gathers the decoded images of concurrent requests into one model call
(up to 32 images, waiting at most 5 ms for company), so many clients share the cores
instead of fighting over them with one model call each.

Limits (imgcls.serve.limits): a request body over --max-upload-mb is answered 413 from its
Content-Length, or as soon as the streamed bytes pass the limit, before the body is read
whole; a body still arriving after 60 s is 408; request headers not complete after 10 s
close the connection; a 64th concurrent connection gets 503. Decoding holds a memory budget
(imgcls.serve.memory): at most a few decodes at once, the others wait or get 503. An image
over the pixel limit (--max-pixels, 16 M by default) is 413; a body that is not an image 415;
a broken image or malformed multipart 400; a model that fails 500 (and the next request is
served). Every error is JSON: {"error": "..."}.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from imgcls.errors import DataError, NotAnImageError, TooManyPixelsError
from imgcls.inference.predictor import Predictor
from imgcls.serve.api_docs import PREDICT_OPENAPI, PREDICT_RESPONSES, api_app
from imgcls.serve.limits import BODY_TIMEOUT_SECONDS, SERVER_LIMITS, BodyLimit, header_timeout_protocol
from imgcls.serve.memory import DEFAULT_DECODE_BUDGET_MB, SERVE_MAX_PIXELS, DecodeSlots, ServerBusy, tune_allocator

log = logging.getLogger(__name__)

MAX_BATCH = 32
MAX_WAIT_SECONDS = 0.005


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


@dataclass
class MicroBatcher:
    """Gathers images of concurrent requests into one model call."""

    predictor: Predictor
    queue: asyncio.Queue | None = None
    worker: asyncio.Task | None = None

    async def probabilities(self, image: np.ndarray) -> np.ndarray:
        if self.worker is None or self.worker.done():
            self.queue = asyncio.Queue()
            self.worker = asyncio.create_task(self._run())
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((image, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + MAX_WAIT_SECONDS
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), max(0.0, deadline - loop.time())))
                except TimeoutError:
                    break
            images = np.stack([image for image, _ in batch])
            try:
                probs = await run_in_threadpool(self.predictor.probabilities, images)
            except Exception as err:  # noqa: BLE001 - handed to each waiting request, never kills the worker
                for _, future in batch:
                    if not future.done():
                        future.set_exception(err)
                continue
            for (_, future), row in zip(batch, probs, strict=True):
                if not future.done():  # the client may have gone
                    future.set_result(row)

    async def close(self) -> None:
        if self.worker is not None:
            self.worker.cancel()


async def _read_image(request: Request) -> tuple[bytes, str] | JSONResponse:
    """(bytes, file name) of the one image a request carries, or the error response to send."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        try:  # one file and a few fields: a form of thousands of parts costs memory for nothing
            form = await request.form(max_files=1, max_fields=16)
        except HTTPException as err:  # Starlette's answer to malformed multipart
            return error(400, f"malformed multipart body: {err.detail}")
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            return error(400, "send the image as the multipart form field 'file'.")
        return await upload.read(), upload.filename or "upload"
    if content_type.startswith("image/") or content_type == "application/octet-stream":
        return await request.body(), "upload"
    return error(415, f"content type {content_type or 'none'!r}: send an image/* body or a multipart 'file'.")


def create_app(
    model_path: str | Path,
    *,
    max_upload_mb: float = 10.0,
    topk: int = 5,
    max_pixels: int | None = None,
    predictor: Predictor | None = None,
    runtime: str = "onnx",
    body_timeout: float | None = BODY_TIMEOUT_SECONDS,
    gallery: str | Path | None = None,
    admin_token: str | None = None,
    decode_budget_mb: float = DEFAULT_DECODE_BUDGET_MB,
) -> FastAPI:
    """The FastAPI app serving one checkpoint or ONNX file (a checkpoint on `runtime`).
    max_pixels: the largest image decoded (SERVE_MAX_PIXELS; never above the model's own limit)."""
    predictor = predictor or Predictor.from_file(model_path, runtime=runtime)
    pre = predictor.preprocessing
    pixel_limit = min(max_pixels or SERVE_MAX_PIXELS, pre.max_pixels)
    slots = DecodeSlots(decode_budget_mb, pixel_limit)
    batcher = MicroBatcher(predictor)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        await batcher.close()

    app, docs = api_app(
        title="imgcls",
        lifespan=lifespan,
        version=predictor.metadata.get("imgcls_version", ""),
        description=f"Image classifier {predictor.metadata['model']['name']} served by imgcls.",
    )
    app.add_middleware(BodyLimit, limit=int(max_upload_mb * 1e6), timeout=body_timeout)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
        # FastAPI answers {"detail": [...]}; every imgcls answer is {"error": "..."}.
        where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        return error(422, f"invalid request: {where}")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(err.detail)}, status_code=err.status_code, headers=err.headers)

    @app.exception_handler(Exception)
    async def any_failure(request: Request, err: Exception) -> JSONResponse:
        # Starlette's last resort is a plain-text 500; clients of this API parse JSON.
        log.error("%s %s failed: %s: %s", request.method, request.url.path, type(err).__name__, err)
        return error(500, f"the server failed on this request ({type(err).__name__}); see the server log.")

    info = {
        "model": predictor.metadata["model"]["name"],
        "file": Path(model_path).name,
        "format": "onnx" if str(model_path).lower().endswith(".onnx") else "checkpoint",
        "runtime": predictor.runtime,
        "classes": list(predictor.classes),
        "input_size": pre.img_size,
        "channels": pre.channels,
        "resize": pre.resize,
        "max_upload_mb": max_upload_mb,
        "max_pixels": pixel_limit,
        "decodes_at_once": slots.size,
        "topk": topk,
        "docs": "docs" if docs else None,  # the page links it, or says how to get it
    }

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return resources.files("imgcls.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/info")
    def model_info() -> dict:
        return info

    @app.post("/predict", openapi_extra=PREDICT_OPENAPI, responses=PREDICT_RESPONSES)
    async def predict(request: Request, topk: int = Query(topk, ge=1, le=1000)):
        """One image as multipart field `file`, or as the raw body with an image/* content type."""
        try:
            received = await _read_image(request)
        except ClientDisconnect:  # nobody is left to answer
            return error(400, "the client went away before sending the whole body.")
        if isinstance(received, JSONResponse):
            return received
        data, name = received
        if not data:
            return error(400, "the request holds no image (0 bytes).")
        try:
            async with slots.slot():  # bounded decodes in flight: the memory budget
                image = await run_in_threadpool(predictor.decode, data, name, pixel_limit)
        except ServerBusy as err:
            return error(503, str(err))
        except NotAnImageError as err:
            return error(415, str(err))
        except TooManyPixelsError as err:
            return error(413, str(err))
        except DataError as err:
            return error(400, str(err))
        try:
            probs = await batcher.probabilities(image)
        except Exception as err:  # noqa: BLE001 - a server answers every request; the log keeps the trace
            log.exception("model failed on %s", name)
            return error(500, f"the model failed on this image ({type(err).__name__}); see the server log.")
        return {"predictions": predictor.prediction(name, probs, topk).to_json()["predictions"]}

    if gallery is not None:  # recognition and search by embeddings (imgcls.retrieval)
        from imgcls.serve.retrieval_routes import retrieval_router

        checkpoint = None if info["format"] == "onnx" else model_path  # an ONNX file cannot embed: the gallery's own
        app.include_router(
            retrieval_router(
                gallery, checkpoint=checkpoint, admin_token=admin_token, max_pixels=pixel_limit, slots=slots
            )
        )
    return app


def serve(
    model_path: str,
    *,
    host: str,
    port: int,
    max_upload_mb: float,
    topk: int,
    runtime: str = "onnx",
    gallery: str | None = None,
    admin_token: str | None = None,
    max_pixels: int | None = None,
    decode_budget_mb: float = DEFAULT_DECODE_BUDGET_MB,
) -> None:
    import uvicorn

    tune_allocator()
    app = create_app(
        model_path,
        max_upload_mb=max_upload_mb,
        topk=topk,
        runtime=runtime,
        gallery=gallery,
        admin_token=admin_token,
        max_pixels=max_pixels,
        decode_budget_mb=decode_budget_mb,
    )
    log.info("serving %s on http://%s:%d (web page at /, API schema at /openapi.json)", model_path, host, port)
    uvicorn.run(app, host=host, port=port, log_level="warning", http=header_timeout_protocol(), **SERVER_LIMITS)
