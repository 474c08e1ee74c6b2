"""Input limits at the door: per-route body sizes (413 before the body is read) and bounded
error bodies, on a service app built like every FedCoin service."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from fedcoin.errors import InvalidInput
from fedcoin.node.metrics import NodeMetrics
from services.common import DEFAULT_BODY_LIMIT, MAX_DETAIL, service_app


@pytest.fixture
def client():
    app = service_app("limits", "a test service", metrics=NodeMetrics("test"), body_limits={"POST /big": 64 * 1024})
    calls: list[int] = []

    @app.post("/small")
    def small(body: dict[str, Any]) -> dict[str, int]:
        calls.append(len(body))
        return {"n": len(body)}

    @app.post("/big")
    def big(body: dict[str, Any]) -> dict[str, int]:
        calls.append(len(body))
        return {"n": len(body)}

    @app.post("/fail")
    def fail(body: dict[str, Any]) -> None:
        raise InvalidInput("x" * 100_000)

    with TestClient(app) as c:
        c.calls = calls  # type: ignore[attr-defined]
        yield c


def _shape(r) -> dict:
    body = r.json()
    assert set(body) == {"error", "reason", "detail"}
    return body


def test_declared_length_over_the_limit_is_413_before_the_handler(client):
    r = client.post(
        "/small", content=b"{" + b" " * DEFAULT_BODY_LIMIT + b"}", headers={"content-type": "application/json"}
    )
    assert r.status_code == 413 and _shape(r)["reason"] == "too-large"
    assert client.calls == []
    ok = client.post("/small", json={"a": 1})
    assert ok.status_code == 200 and client.calls == [1]


def test_each_route_has_its_own_limit(client):
    payload = {"k": "v" * (40 * 1024)}  # over 32 KiB... under /big's 64 KiB, and under the default too
    assert client.post("/big", json=payload).status_code == 200
    too_big = {"k": "v" * (70 * 1024)}
    r = client.post("/big", json=too_big)
    assert r.status_code == 413 and "65536" in _shape(r)["detail"]
    assert client.post("/small", json=too_big).status_code == 200  # the default (256 KiB) allows it


def test_a_body_without_length_is_cut_off_at_the_limit(client):
    sent = []

    def chunks():
        for _ in range(64):  # 64 × 16 KiB = 1 MiB offered, without a Content-Length
            sent.append(1)
            yield b" " * (16 * 1024)

    r = client.post("/small", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and _shape(r)["reason"] == "too-large"
    assert client.calls == []


def test_a_malformed_length_is_refused(client):
    r = client.post("/small", content=b"{}", headers={"content-type": "application/json", "content-length": "-1"})
    assert r.status_code in (400, 413)


def test_error_details_are_bounded(client):
    r = client.post("/fail", json={})
    assert r.status_code == 400
    detail = _shape(r)["detail"]
    assert len(detail) < MAX_DETAIL + 100 and detail.endswith("more characters)")
    # a body of 10,000 junk items comes back as a short error, not as large as itself
    junk = {"header": {}, "body": {"transactions": [{"amount": -1}] * 10_000}}
    app_client = client
    r = app_client.post("/fail", json=junk)
    assert len(r.content) < 4 * MAX_DETAIL
