"""What every service shares: settings from the environment, error mapping, peer HTTP."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from fedcoin.blocks import GenesisConfig
from fedcoin.identity import Identity
from fedcoin.errors import FedcoinError, InvalidBlock, InvalidSignature, InvalidTransaction, OrphanBlock, StaleBlock

log = logging.getLogger("fedcoin.services")

PEER_TIMEOUT = httpx.Timeout(10.0, connect=3.0)


def env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(f"FEDCOIN_{name}")
    return default if value is None or value == "" else value


def env_list(name: str) -> list[str]:
    raw = env(name, "") or ""
    return [x.strip().rstrip("/") for x in raw.split(",") if x.strip()]


def data_dir(role: str) -> Path:
    path = Path(env("DATA_DIR", f".fedcoin/{role}"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def load_genesis() -> GenesisConfig:
    path = env("GENESIS")
    if path is None:
        raise RuntimeError("FEDCOIN_GENESIS must name the network's genesis.json (see `fedcoin testnet init`)")
    import json

    return GenesisConfig.from_dict(json.loads(Path(path).read_text()))


def error_body(exc: FedcoinError) -> dict[str, Any]:
    reason = getattr(exc, "reason", type(exc).__name__)
    return {"error": type(exc).__name__, "reason": reason, "detail": str(exc)}


def install_error_handlers(app: FastAPI) -> None:
    """Map library errors to 4xx answers with a reason (never a 5xx for bad input)."""

    @app.exception_handler(FedcoinError)
    async def _fedcoin_error(request: Request, exc: FedcoinError) -> JSONResponse:
        status = 400
        if isinstance(exc, (OrphanBlock, StaleBlock)):
            status = 409
        elif isinstance(exc, InvalidSignature):
            status = 401
        elif isinstance(exc, (InvalidBlock, InvalidTransaction)):
            status = 422
        return JSONResponse(status_code=status, content=error_body(exc))

    @app.exception_handler(ValidationError)
    async def _validation_error(request: Request, exc: ValidationError) -> JSONResponse:
        return JSONResponse(
            status_code=422,
            content={"error": "ValidationError", "reason": "malformed", "detail": exc.errors(include_url=False, include_context=False)},
        )


async def post_json(client: httpx.AsyncClient, url: str, body: Any, retries: int = 2) -> httpx.Response | None:
    """POST with bounded timeouts and a few retries; None when the peer stays unreachable."""
    for attempt in range(retries + 1):
        try:
            return await client.post(url, json=body, timeout=PEER_TIMEOUT)
        except httpx.HTTPError as exc:
            if attempt == retries:
                log.debug("POST %s failed: %s", url, exc)
                return None
            await asyncio.sleep(0.2 * (attempt + 1))
    return None


async def get_json(client: httpx.AsyncClient, url: str, retries: int = 1) -> Any | None:
    for attempt in range(retries + 1):
        try:
            r = await client.get(url, timeout=PEER_TIMEOUT)
            if r.status_code == 200:
                return r.json()
            return None
        except (httpx.HTTPError, ValueError):
            if attempt == retries:
                return None
            await asyncio.sleep(0.2 * (attempt + 1))
    return None


def start_node(role: str) -> tuple[Path, Identity]:
    """What every service does first: logging, torch threads, its state directory and key."""
    configure_logging()
    import torch

    torch.set_num_threads(int(env("TORCH_THREADS", "1")))
    ddir = data_dir(role)
    return ddir, Identity.load_or_create(env("KEY", str(ddir / f"{role}.key")))


def configure_logging() -> None:
    logging.basicConfig(level=env("LOG_LEVEL", "INFO"), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
