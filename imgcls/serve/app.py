"""The HTTP server: POST an image, get its top-k labels; a small web page at /.

The model is loaded once. Each request's image is decoded in a worker thread, and a
micro-batcher gathers the decoded images of concurrent requests into one model call
(up to 32 images, waiting at most 5 ms for company), so many clients share the cores
instead of fighting over them with one model call each.

Limits: a request body over --max-upload-mb is answered 413 from its Content-Length, or as
soon as the streamed bytes pass the limit, before the body is read whole; an image over the
pixel limit is 413; a body that is not an image 415; a broken image 400; a model that fails
500 (and the next request is served). Every error is JSON: {"error": "..."}.
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
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from imgcls.errors import DataError, NotAnImageError, TooManyPixelsError
from imgcls.predict import Predictor

log = logging.getLogger(__name__)

MAX_BATCH = 32
MAX_WAIT_SECONDS = 0.005


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware refusing request bodies over `limit` bytes, before they are read whole."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(scope, receive, send)
        seen, started = 0, False

        async def counting_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope, receive, send):
        megabytes = self.limit / 1e6
        await error(413, f"request body over the limit of {megabytes:g} MB (--max-upload-mb).")(scope, receive, send)


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


def create_app(
    model_path: str | Path,
    *,
    max_upload_mb: float = 10.0,
    topk: int = 5,
    max_pixels: int | None = None,
    predictor: Predictor | None = None,
    runtime: str = "onnx",
    gallery: str | Path | None = None,
    admin_token: str | None = None,
) -> FastAPI:
    """The FastAPI app serving one checkpoint or ONNX file (a checkpoint on `runtime`)."""
    predictor = predictor or Predictor.from_file(model_path, runtime=runtime)
    pre = predictor.preprocessing
    pixel_limit = min(max_pixels or pre.max_pixels, pre.max_pixels)
    batcher = MicroBatcher(predictor)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        await batcher.close()

    app = FastAPI(title="imgcls", lifespan=lifespan, version=predictor.metadata.get("imgcls_version", ""),
                  description=f"Image classifier {predictor.metadata['model']['name']} served by imgcls.")  # fmt: skip
    app.add_middleware(BodyLimit, limit=int(max_upload_mb * 1e6))
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
        "topk": topk,
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

    @app.post("/predict")
    async def predict(request: Request, topk: int = Query(topk, ge=1, le=1000)):
        """One image as multipart field `file`, or as the raw body with an image/* content type."""
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == "multipart/form-data":
            form = await request.form()
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                return error(400, "send the image as the multipart form field 'file'.")
            data, name = await upload.read(), upload.filename or "upload"
        elif content_type.startswith("image/") or content_type == "application/octet-stream":
            data, name = await request.body(), "upload"
        else:
            return error(415, f"content type {content_type or 'none'!r}: send an image/* body or a multipart 'file'.")
        if not data:
            return error(400, "the request holds no image (0 bytes).")
        try:
            image = await run_in_threadpool(predictor.decode, data, name, pixel_limit)
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
        labels = predictor.top_k(probs, topk)
        return {"predictions": [{"label": label, "score": score} for label, score in labels]}

    if gallery is not None:  # recognition and search by embeddings (imgcls.retrieval)
        from imgcls.serve.retrieval_routes import retrieval_router

        checkpoint = None if info["format"] == "onnx" else model_path  # an ONNX file cannot embed: the gallery's own
        app.include_router(retrieval_router(gallery, checkpoint=checkpoint, admin_token=admin_token,
                                            max_pixels=pixel_limit))  # fmt: skip
    return app


def serve(model_path: str, *, host: str, port: int, max_upload_mb: float, topk: int, runtime: str = "onnx",
          gallery: str | None = None, admin_token: str | None = None) -> None:  # fmt: skip
    import uvicorn

    app = create_app(model_path, max_upload_mb=max_upload_mb, topk=topk, runtime=runtime, gallery=gallery,
                     admin_token=admin_token)  # fmt: skip
    log.info("serving %s on http://%s:%d (web page at /, API docs at /docs)", model_path, host, port)
    uvicorn.run(app, host=host, port=port, log_level="warning")
