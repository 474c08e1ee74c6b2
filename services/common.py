"""What every FastAPI service shares: one error shape, body-size limits, docs from settings.

Every error answer, the library's and FastAPI's own (unknown route, malformed
body), has the body ``{"error": <type>, "reason": <code>, "detail": <text>}``;
a rejected block or transaction carries its :class:`fedcoin.errors.Reason`.
``detail`` is cut at :data:`MAX_DETAIL` characters, so a large bad input never
comes back as a large error.

Bodies are limited per route (:class:`BodyLimit`): a request whose
``Content-Length`` exceeds its route's limit is answered 413 before any byte of
the body is read, and a body sent without a length is cut off with 413 as
soon as it exceeds the limit.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from fedcoin import __version__
from fedcoin.errors import (
    Category,
    Conflict,
    FedcoinError,
    InvalidInput,
    InvalidSignature,
    NotFound,
    Rejected,
    Unavailable,
)
from fedcoin.node.explorer import static_file
from fedcoin.node.metrics import NodeMetrics
from fedcoin.node.settings import NodeSettings, describe

HTTP_REASONS = {
    400: "bad-request",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    413: "too-large",
    422: "malformed",
    503: "unavailable",
}


MAX_DETAIL = 2_000
DEFAULT_BODY_LIMIT = 256 * 1024
KiB, MiB = 1024, 1024 * 1024

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyLimit:
    """ASGI middleware: 413 for a body over its route's limit, before (or as soon as) it is read.

    ``limits`` maps ``"METHOD /path"`` to bytes; other routes get ``default``."""

    def __init__(self, app: ASGIApp, limits: dict[str, int] | None = None, default: int = DEFAULT_BODY_LIMIT) -> None:
        self.app = app
        self.limits = dict(limits or {})
        self.default = default

    def limit_for(self, method: str, path: str) -> int:
        return self.limits.get(f"{method} {path}", self.default)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["method"], scope["path"])
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await _reject(send, limit)
            return
        seen = 0
        started = rejected = False

        async def limited_receive() -> Message:
            nonlocal seen, rejected
            if rejected:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:  # answer now; the app sees the client gone and its answer is dropped
                    rejected = True
                    if not started:
                        await _reject(send, limit)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if rejected:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not rejected:
                raise


async def _reject(send: Send, limit: int) -> None:
    body = json.dumps(
        {"error": "PayloadTooLarge", "reason": "too-large", "detail": f"the body exceeds this route's {limit} bytes"}
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _kebab(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()


def error_response(status: int, error: str, reason: str, detail: str) -> JSONResponse:
    if len(detail) > MAX_DETAIL:
        detail = f"{detail[:MAX_DETAIL]}... ({len(detail) - MAX_DETAIL} more characters)"
    return JSONResponse(status_code=status, content={"error": error, "reason": reason, "detail": detail})


def status_of(exc: FedcoinError) -> int:
    if isinstance(exc, Rejected):
        return 409 if exc.category in (Category.MISSING_PARENT, Category.STALE) else 422
    for kind, status in (
        (InvalidSignature, 401),
        (NotFound, 404),
        (Conflict, 409),
        (Unavailable, 503),
        (InvalidInput, 400),
    ):
        if isinstance(exc, kind):
            return status
    return 500


def _validation_detail(errors: list[Any]) -> str:
    parts = []
    for err in errors[:10]:
        loc = ".".join(str(x) for x in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
    return "; ".join(parts) + more


def install_error_handlers(app: FastAPI) -> None:
    """Map every error to a 4xx/5xx answer of the one shape (never a bare 500 for bad input)."""

    @app.exception_handler(FedcoinError)
    async def _fedcoin(request: Request, exc: FedcoinError) -> JSONResponse:
        reason = str(exc.reason) if isinstance(exc, Rejected) else _kebab(type(exc).__name__)
        return error_response(status_of(exc), type(exc).__name__, reason, str(exc))

    @app.exception_handler(ValidationError)
    async def _pydantic(request: Request, exc: ValidationError) -> JSONResponse:
        return error_response(422, "ValidationError", "malformed", _validation_detail(exc.errors(include_url=False)))

    @app.exception_handler(RequestValidationError)
    async def _request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "ValidationError", "malformed", _validation_detail(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        reason = HTTP_REASONS.get(exc.status_code, f"http-{exc.status_code}")
        return error_response(exc.status_code, "HTTPException", reason, str(exc.detail))


class RequestMetrics:
    """ASGI middleware: every HTTP request counted by route template (``/blocks/{height}``, not
    the path itself, so the label set stays bounded), method and status, and timed."""

    def __init__(self, app: ASGIApp, metrics: NodeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_request(template, scope["method"], status, time.perf_counter() - t)


def service_app(
    title: str,
    description: str | None,
    *,
    metrics: NodeMetrics,
    body_limits: dict[str, int] | None = None,
    **kwargs: Any,
) -> FastAPI:
    """A FastAPI app described by ``description`` (a service's docstring, see :func:`service_doc`),
    with the error handlers, the body-size limits (``body_limits``, else 256 KiB), the request
    metrics, ``GET /metrics`` (Prometheus text format, from ``metrics``) and ``GET /static/{name}``
    (the explorer's assets) installed."""
    app = FastAPI(title=title, version=__version__, description=description or "", **kwargs)
    install_error_handlers(app)
    app.add_middleware(BodyLimit, limits=body_limits)
    app.add_middleware(RequestMetrics, metrics=metrics)

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        """The explorer's stylesheet and script (fedcoin.node.explorer), served by the node itself."""
        found = static_file(name)
        if found is None:
            raise NotFound(f"no static file {name[:80]!r}")
        data, media = found
        return Response(data, media_type=media, headers={"Cache-Control": "max-age=300"})

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    return app


def service_doc(doc: str | None, settings_cls: type[NodeSettings]) -> str:
    """A service's module docstring followed by the list of its settings (rendered from the model)."""
    return f"{(doc or '').rstrip()}\n\n{describe(settings_cls)}\n"
