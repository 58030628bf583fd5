"""The HTTP layer of ``s2mts2 serve`` (Starlette): the page, its static files and a JSON API.

Every error is JSON ``{"error": "one line"}``. Uploads are read from the request body into memory
with a size limit (no multipart parsing, no temporary files); the page sends one file per request.
Images are addressed by upload token or split position only, and the static files are a fixed set
read from the package at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from s2mts2.infer.serve.analysis import ONNX_NO_CAM, Analyst
from s2mts2.infer.serve.browse import SORTS, SplitView
from s2mts2.infer.serve.render import overlay_png, png_bytes
from s2mts2.infer.serve.uploads import Upload, UploadStore

STATIC_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "serve.js": "text/javascript; charset=utf-8",
    "serve.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; object-src 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
MAX_PER_PAGE = 100


@dataclass
class ServeState:
    """What the app serves: the model, its uploads, an optional split, and the limits."""

    model_name: str
    analyst: Analyst
    uploads: UploadStore
    max_file_bytes: int
    split: SplitView | None = None
    split_metrics: dict[str, Any] | None = None


class RequestError(Exception):
    """A request the API refuses: HTTP ``status`` and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=HEADERS)


def _json(doc: Any) -> JSONResponse:
    return JSONResponse(doc, headers=HEADERS)


def _png(data: bytes) -> Response:
    return Response(data, media_type="image/png", headers=HEADERS)


def _int(request: Request, name: str, default: int | None, low: int, high: int) -> int | None:
    """Query parameter ``name`` as an integer in low..high (empty: ``default``)."""
    text = request.query_params.get(name, "")
    if text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise RequestError(400, f"{name}: expected an integer, got {text[:40]!r}") from None
    if not low <= value <= high:
        raise RequestError(400, f"{name}: expected {low}..{high}, got {value}")
    return value


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


async def _read_body(request: Request, name: str, limit: int) -> bytes:
    """The request body, refused (413) as soon as it exceeds ``limit`` bytes."""
    too_large = RequestError(
        413,
        f"{name}: larger than the {_megabytes(limit)} limit per file (s2mts2 serve --max-file-mb)",
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _static_files() -> dict[str, bytes]:
    folder = resources.files("s2mts2.infer.serve") / "static"
    return {name: (folder / name).read_bytes() for name in STATIC_TYPES}


def create_app(state: ServeState, allowed_hosts: list[str] | None = None) -> Starlette:
    """The Starlette app serving ``state``; ``allowed_hosts`` guards against DNS rebinding."""
    static = _static_files()

    def split_view() -> SplitView:
        if state.split is None:
            raise RequestError(404, "no prepared split: start s2mts2 serve with --data DIR")
        return state.split

    async def page(request: Request) -> Response:
        name = request.path_params.get("name", "index.html")
        if name not in static:
            raise RequestError(404, f"no file {name[:40]!r}")
        return Response(static[name], media_type=STATIC_TYPES[name], headers=HEADERS)

    async def info(request: Request) -> Response:
        model = state.analyst.info
        split = state.split
        return _json(
            {
                "model": state.model_name,
                "task": model.task,
                "classes": model.classes,
                "size": model.size,
                "channels": model.channels,
                "cam": state.analyst.explains,
                "cam_reason": None if state.analyst.explains else ONNX_NO_CAM,
                "max_file_bytes": state.max_file_bytes,
                "max_files": state.uploads.max_files,
                "split": None if split is None else {"name": split.split, "images": len(split)},
            }
        )

    async def upload(request: Request) -> Response:
        name = request.query_params.get("name", "") or "image"
        data = await _read_body(request, name, state.max_file_bytes)
        card = await run_in_threadpool(state.uploads.add, name, data)
        return _json(card) if card["error"] is None else _error(422, f"{name}: {card['error']}")

    def _upload(request: Request) -> Upload:
        found = state.uploads.get(request.path_params["token"])
        if found is None:
            raise RequestError(404, "this upload is no longer held: drop the file again")
        return found

    async def upload_image(request: Request) -> Response:
        return _png(await run_in_threadpool(png_bytes, _upload(request).display))

    async def upload_cam(request: Request) -> Response:
        found = _upload(request)
        if not state.analyst.explains:
            raise RequestError(409, ONNX_NO_CAM)
        k = request.path_params["k"]
        if not 0 <= k < len(state.analyst.info.classes):
            raise RequestError(404, f"no class {k}")

        def render() -> bytes:
            return overlay_png(found.display, state.uploads.cam(found, k))

        return _png(await run_in_threadpool(render))

    async def split_page(request: Request) -> Response:
        view = split_view()
        sort = request.query_params.get("sort", "index")
        if sort not in SORTS:
            raise RequestError(400, f"sort: expected one of {', '.join(SORTS)}, got {sort[:40]!r}")
        k = len(view.data.table.classes) - 1
        flags = {
            f: request.query_params.get(f, "0") in ("1", "true") for f in ("desc", "wrong_first")
        }
        doc = view.query(
            sort=sort,
            descending=flags["desc"],
            true_class=_int(request, "true", None, 0, k),
            predicted_class=_int(request, "pred", None, 0, k),
            misclassified_first=flags["wrong_first"],
            page=_int(request, "page", 0, 0, 10**9),
            per_page=_int(request, "per_page", 24, 1, MAX_PER_PAGE),
        )
        return _json(doc)

    async def split_metrics(request: Request) -> Response:
        split_view()
        return _json(state.split_metrics)

    async def split_roc(request: Request) -> Response:
        return _png(await run_in_threadpool(split_view().roc_png))

    async def split_image(request: Request) -> Response:
        view = split_view()
        i = request.path_params["i"]
        if not 0 <= i < len(view):
            raise RequestError(404, f"no image {i} in the {view.split} split ({len(view)} images)")
        return _png(await run_in_threadpool(view.image_png, i))

    async def refused(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestError)
        return _error(exc.status, str(exc))

    async def not_found(request: Request, exc: Exception) -> Response:
        return _error(getattr(exc, "status_code", 404), getattr(exc, "detail", "not found"))

    routes = [
        Route("/", page),
        Route("/static/{name}", page),
        Route("/api/info", info),
        Route("/api/uploads", upload, methods=["POST"]),
        Route("/api/uploads/{token}/image.png", upload_image),
        Route("/api/uploads/{token}/cam/{k:int}.png", upload_cam),
        Route("/api/split", split_page),
        Route("/api/split/metrics", split_metrics),
        Route("/api/split/roc.png", split_roc),
        Route("/api/split/images/{i:int}.png", split_image),
    ]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts or ["*"])]
    return Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={RequestError: refused, 404: not_found, 405: not_found},
    )
