"""What every FastAPI service shares: one error shape, the settings check at start, docs from settings.

Every error answer, the library's and FastAPI's own (unknown route, malformed
body), has the body ``{"error": <type>, "reason": <code>, "detail": <text>}``;
a rejected block or transaction carries its :class:`fedcoin.errors.Reason`.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
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


def _kebab(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()


def error_response(status: int, error: str, reason: str, detail: str) -> JSONResponse:
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


def service_app(title: str, description: str | None, **kwargs: Any) -> FastAPI:
    """A FastAPI app described by ``description`` (a service's docstring, see :func:`service_doc`),
    with the error handlers installed."""
    app = FastAPI(title=title, version=__version__, description=description or "", **kwargs)
    install_error_handlers(app)
    return app


def service_doc(doc: str | None, settings_cls: type[NodeSettings]) -> str:
    """A service's module docstring followed by the list of its settings (rendered from the model)."""
    return f"{(doc or '').rstrip()}\n\n{describe(settings_cls)}\n"
