"""The server's description of itself: /openapi.json with /predict's request body, and /docs
(Swagger UI) that works without internet.

FastAPI's own /docs page loads Swagger UI's script and stylesheet from a CDN, so on an offline
machine it is blank. fastapi-offline (in the `serve` extra) ships Swagger UI 5 and ReDoc in
its package and serves them from the app itself; without it /docs and /redoc are off and the
web page says how to get them (the schema at /openapi.json is there either way).

/predict reads its body itself (a multipart `file` or a raw image body, under the server's
limits), so FastAPI cannot infer the body from its signature: it is declared here, for
generated clients and for Swagger UI's "Try it out" file field.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI

log = logging.getLogger(__name__)

DOCS_STATIC = "/docs-static"  # where Swagger UI's and ReDoc's files are served from

_BINARY = {"type": "string", "format": "binary"}

PREDICT_OPENAPI = {
    "requestBody": {
        "required": True,
        "description": "One image: the multipart form field `file`, or the raw body with an image/* content type.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {**_BINARY, "description": "the image file (JPEG, PNG, WebP, ...)"}},
                }
            },
            "image/*": {"schema": _BINARY},
            "application/octet-stream": {"schema": _BINARY},
        },
    }
}

_ERROR = {"application/json": {"schema": {"type": "object", "properties": {"error": {"type": "string"}}}}}

PREDICT_RESPONSES = {
    200: {
        "description": "The top labels, best first (multi-label models: every label, with `selected`).",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "predictions": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["label", "score"],
                                "properties": {
                                    "label": {"type": "string"},
                                    "score": {"type": "number", "minimum": 0, "maximum": 1},
                                    "selected": {"type": "boolean"},
                                },
                            },
                        }
                    },
                }
            }
        },
    },
    400: {"description": "a broken image, an empty body or malformed multipart", "content": _ERROR},
    413: {"description": "a body over --max-upload-mb, or an image over the pixel limit", "content": _ERROR},
    415: {"description": "a body that is not an image", "content": _ERROR},
    # Declared so FastAPI does not add its own {"detail": [...]}: imgcls answers {"error": "..."}.
    422: {"description": "topk outside 1..1000", "content": _ERROR},
    500: {"description": "the model failed on this image", "content": _ERROR},
    503: {"description": "too many images being decoded at once; try again", "content": _ERROR},
}


def api_app(**kwargs) -> tuple[FastAPI, bool]:
    """The FastAPI app, and whether it serves /docs (Swagger UI from the installed package)."""
    try:
        from fastapi_offline import FastAPIOffline
    except ImportError:
        log.info("API docs off: /docs needs the fastapi-offline package (pip install 'imgcls[serve]')")
        return FastAPI(docs_url=None, redoc_url=None, **kwargs), False
    return FastAPIOffline(static_url=DOCS_STATIC, **kwargs), True
