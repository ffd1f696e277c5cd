"""The HTTP server and its web page (the [serve] extra: FastAPI, uvicorn, python-multipart)."""

from imgcls.extras import require

for _module in ("fastapi", "uvicorn", "python_multipart"):
    require(_module, "serve")
