"""A node's logs: plain text, or one JSON object per line with ``FEDCOIN_LOG_FORMAT=json``.

A JSON line has ``ts`` (ISO 8601, UTC), ``level``, ``logger`` and ``message``, and the
record's structured fields when the call gives them (``log.info(..., extra=event("block-accepted",
height=3))``): ``event`` names what happened (``block-accepted``, ``block-rejected``,
``race-won``, ``race-lost``, ``task-phase``, ...) and the other fields say the rest (``reason``
of a rejection, ``height``, ``task_id``, ``phase``). Exceptions come as ``exc``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

FORMATS = ("text", "json")
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def event(name: str, **fields: Any) -> dict[str, Any]:
    """The ``extra`` of a structured log call: ``event`` and its fields."""
    return {"event": name, **fields}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for k, v in record.__dict__.items():
            if k not in _STANDARD and not k.startswith("_"):
                out[k] = v if isinstance(v, (str, int, float, bool, type(None), list, dict)) else str(v)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Root logging for a node process: ``fmt`` ``text`` (time, logger, level, message) or ``json``."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {FORMATS}, got {fmt!r}")
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter() if fmt == "json" else logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if fmt == "json":  # uvicorn's own loggers, through the same handler
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
            lg = logging.getLogger(name)
            lg.handlers[:] = []
            lg.propagate = True
