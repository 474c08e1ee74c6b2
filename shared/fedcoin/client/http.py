"""One client class per service, over a shared ``httpx.Client`` base.

Every method returns a model (:mod:`fedcoin.api`, or :class:`~fedcoin.chain.blocks.Block` and
:class:`~fedcoin.chain.transactions.Transaction`) or raises:

* :class:`~fedcoin.errors.Unavailable` when the service cannot be reached, times out, fails
  (5xx) or answers something that is not the documented model;
* the error the service answered with: ``NotFound`` (404), ``Conflict`` (409),
  ``InvalidSignature`` (401), ``InvalidInput`` (400, 422), or ``InvalidTransaction`` /
  ``InvalidBlock`` with the service's reject reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Self, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from fedcoin.api import (
    AccountBalance,
    Balances,
    BlockSummary,
    ChainHead,
    Health,
    MinerStatus,
    MinerTask,
    MinerTaskSummary,
    NewTask,
    RequesterTask,
    RequesterTaskSummary,
    ServerInfo,
    ServerTask,
    ServerTaskSummary,
    TaskCancelled,
    TaskCreated,
    TransactionAccepted,
    TransactionStatus,
)
from fedcoin.chain.blocks import Block
from fedcoin.chain.identity import Identity, check_account
from fedcoin.chain.transactions import Transaction, make_transaction
from fedcoin.errors import (
    Conflict,
    FedcoinError,
    InvalidBlock,
    InvalidInput,
    InvalidSignature,
    InvalidTransaction,
    NotFound,
    OrphanBlock,
    Reason,
    StaleBlock,
    Unavailable,
)

M = TypeVar("M", bound=BaseModel)
DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=3.0)


def error_from_response(r: httpx.Response) -> FedcoinError:
    """The typed error a service's 4xx/5xx answer stands for (its JSON ``error``, ``reason``, ``detail``)."""
    try:
        body = r.json()
    except ValueError:
        body = None
    body = body if isinstance(body, dict) else {}
    error, reason = str(body.get("error", "")), str(body.get("reason", ""))
    detail = str(body.get("detail") or r.text[:300] or r.reason_phrase)
    where = f"{r.request.method} {r.request.url}: HTTP {r.status_code}"
    if error in ("OrphanBlock", "StaleBlock"):
        return (OrphanBlock if error == "OrphanBlock" else StaleBlock)(f"{where}: {detail}")
    if error in ("InvalidTransaction", "InvalidBlock") and reason in Reason.__members__.values():
        cls = InvalidTransaction if error == "InvalidTransaction" else InvalidBlock
        return cls(Reason(reason), f"{where}: {detail.removeprefix(f'{reason}: ')}")
    message = f"{where}{f' ({reason})' if reason else ''}: {detail}"
    by_status: dict[int, type[FedcoinError]] = {401: InvalidSignature, 404: NotFound, 409: Conflict}
    if r.status_code in by_status:
        return by_status[r.status_code](message)
    if r.status_code >= 500 or r.status_code < 400:
        return Unavailable(message)
    return InvalidInput(message)


class ServiceClient:
    """Any service at ``url`` (its ``GET /health``); the role's own client adds its API. Use as a context
    manager, or call :meth:`close`."""

    def __init__(
        self, url: str, *, timeout: httpx.Timeout | float = DEFAULT_TIMEOUT, client: httpx.Client | None = None
    ) -> None:
        url = str(url).rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise InvalidInput(f"a service URL starts with http:// or https://, got {url!r}")
        self.url = url
        self._own = client is None
        self.http = client if client is not None else httpx.Client(timeout=timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._own:
            self.http.close()

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            r = self.http.request(method, f"{self.url}{path}", **kw)
        except httpx.HTTPError as exc:
            raise Unavailable(f"{method} {self.url}{path}: {type(exc).__name__}: {exc}") from exc
        if r.status_code >= 400:
            raise error_from_response(r)
        return r

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        r = self._request(method, path, **kw)
        try:
            return r.json()
        except ValueError as exc:
            raise Unavailable(f"{method} {self.url}{path}: the answer is not JSON") from exc

    def _parse(self, model: Any, data: Any, path: str) -> Any:
        try:
            return TypeAdapter(model).validate_python(data)
        except (ValidationError, FedcoinError) as exc:
            raise Unavailable(
                f"{self.url}{path}: the answer is not a {getattr(model, '__name__', model)}: {exc}"
            ) from exc

    def _get(self, path: str, model: Any, **params: Any) -> Any:
        return self._parse(model, self._json("GET", path, params=params or None), path)

    def _post(self, path: str, model: Any, body: Any) -> Any:
        return self._parse(model, self._json("POST", path, json=body), path)

    def health(self) -> Health:
        return self._get("/health", Health)


class MinerClient(ServiceClient):
    """A miner's API: its chain, balances, transactions, Shapley tasks and mining status."""

    def status(self) -> MinerStatus:
        return self._get("/status", MinerStatus)

    def head(self) -> ChainHead:
        return self._get("/chain/head", ChainHead)

    def chain(self) -> list[BlockSummary]:
        return self._get("/chain", list[BlockSummary])

    def block(self, height: int) -> Block:
        return self._block(f"/blocks/{int(height)}")

    def block_by_hash(self, block_hash: str) -> Block:
        return self._block(f"/blocks/hash/{block_hash}")

    def blocks(self, start: int = 0, end: int | None = None) -> list[Block]:
        """Main-chain blocks ``start..end`` (a page of at most 100)."""
        params: dict[str, Any] = {"start": start} if end is None else {"start": start, "end": end}
        data = self._json("GET", "/blocks", params=params)
        if not isinstance(data, list):
            raise Unavailable(f"{self.url}/blocks: the answer is not a list of blocks")
        return [self._to_block(d, "/blocks") for d in data]

    def _block(self, path: str) -> Block:
        return self._to_block(self._json("GET", path), path)

    def _to_block(self, data: Any, path: str) -> Block:
        try:
            return Block.from_dict(data)
        except (FedcoinError, ValidationError, TypeError) as exc:
            raise Unavailable(f"{self.url}{path}: the answer is not a block: {exc}") from exc

    def balance(self, account: str) -> AccountBalance:
        check_account(account)
        return self._get(f"/balances/{account}", AccountBalance)

    def balances(self) -> Balances:
        return self._get("/balances", Balances)

    def transaction(self, txid: str) -> TransactionStatus:
        return self._get(f"/transactions/{txid}", TransactionStatus)

    def pending(self) -> list[Transaction]:
        return self._get("/transactions/pending", list[Transaction])

    def submit_transaction(self, tx: Transaction) -> TransactionAccepted:
        return self._post("/transactions", TransactionAccepted, tx.to_dict())

    def next_nonce(self, account: str) -> int:
        """The nonce ``account``'s next transaction takes: past the confirmed ones and those pending here."""
        confirmed = self.balance(account).nonce
        mine = [tx.nonce for tx in self.pending() if tx.sender == account]
        return max([confirmed, *(n + 1 for n in mine)])

    def transfer(self, identity: Identity, recipient: str, amount: int, memo: str = "") -> Transaction:
        """Sign a transfer of ``amount`` from ``identity`` to ``recipient`` with its next nonce and submit it."""
        check_account(recipient)
        tx = make_transaction(identity, recipient, amount, self.next_nonce(identity.account), "transfer", memo)
        self.submit_transaction(tx)
        return tx

    def tasks(self) -> list[MinerTaskSummary]:
        return self._get("/tasks", list[MinerTaskSummary])

    def task(self, task_id: str) -> MinerTask:
        return self._get(f"/tasks/{task_id}", MinerTask)

    def peers(self) -> list[str]:
        return self._get("/peers", list[str])


class ServerClient(ServiceClient):
    """The FL server's API: its training tasks, their rounds, Shapley values and payments."""

    def info(self) -> ServerInfo:
        return self._get("/info", ServerInfo)

    def clients(self) -> list[dict[str, Any]]:
        return self._get("/clients", list[dict[str, Any]])

    def tasks(self) -> list[ServerTaskSummary]:
        return self._get("/tasks", list[ServerTaskSummary])

    def task(self, task_id: str) -> ServerTask:
        return self._get(f"/tasks/{task_id}", ServerTask)

    def model(self, task_id: str) -> bytes:
        """The final global model of a done task (``Conflict`` until then)."""
        return self._request("GET", f"/tasks/{task_id}/model", timeout=60).content


class RequesterClient(ServiceClient):
    """The model requester's API: submit a training task with its budget, follow it, fetch the model."""

    def submit(
        self, budget: int, rounds: int = 1, task_id: str | None = None, ratio: tuple[int, int, int] = (7, 1, 2)
    ) -> TaskCreated:
        try:
            spec = NewTask(budget=budget, rounds=rounds, task_id=task_id, ratio=ratio)
        except ValidationError as exc:
            raise InvalidInput(f"bad task: {exc.errors(include_url=False)}") from exc
        return self._post("/tasks", TaskCreated, spec.model_dump(exclude_none=True))

    def tasks(self) -> list[RequesterTaskSummary]:
        return self._get("/tasks", list[RequesterTaskSummary])

    def task(self, task_id: str) -> RequesterTask:
        return self._get(f"/tasks/{task_id}", RequesterTask)

    def cancel(self, task_id: str) -> TaskCancelled:
        return self._post(f"/tasks/{task_id}/cancel", TaskCancelled, None)

    def model(self, task_id: str) -> bytes:
        """The final global model of a done task (``Conflict`` until then)."""
        return self._request("GET", f"/tasks/{task_id}/model", timeout=60).content

    def wait(
        self,
        task_id: str,
        *,
        timeout: float = 3600.0,
        poll: float = 1.0,
        on_update: Callable[[RequesterTask], None] | None = None,
    ) -> RequesterTask:
        """Poll ``task_id`` until the server reports it done, failed or cancelled; ``on_update`` sees
        every answer. ``Unavailable`` if it has not ended within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            t = self.task(task_id)
            if on_update is not None:
                on_update(t)
            if t.server.final:
                return t
            if time.monotonic() >= deadline:
                raise Unavailable(f"task {task_id} is still {t.server.status} after {timeout:g} s")
            time.sleep(poll)
