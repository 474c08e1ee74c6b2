"""The FL server's rounds: train one with the clients, then have its Shapley task settled.

:class:`RoundTrainer` sends every registered client a signed train order, keeps
the updates whose signed receipts match their content, aggregates them with
FedAvg and signs the round's Shapley task (Algorithm 3's prices for the round,
the content hash of the updates and validation set). :class:`Settlement`
publishes that task to the miners and waits until it is settled, by the same
block on every reachable miner. Both reach the network only through gateways
(:mod:`fedcoin.node.peers`).
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from fedcoin.chain.encoding import sha256_hex
from fedcoin.chain.identity import Identity
from fedcoin.chain.tasks import ShapleyTask, make_task
from fedcoin.chain.transactions import Transaction, make_refund
from fedcoin.consensus.payments import round_prices
from fedcoin.errors import FedcoinError, InvalidInput, Unavailable
from fedcoin.fl.content import pack_task_content, pack_weights, unpack_weights
from fedcoin.fl.fedavg import fedavg, validate_update
from fedcoin.fl.model import Update, evaluate, weight_shapes

from .blobs import BlobStore
from .messages import SignedMessage, TrainOrder, UpdateReceipt
from .peers import ClientGateway, MinerGateway
from .settings import ServerSettings

log = logging.getLogger("fedcoin.server")
Doc = dict[str, Any]


def client_seed(task_id: str, account: str) -> int:
    """Each client's local SGD seed, distinct per client and round, reproducible from the task."""
    return int(sha256_hex(f"{task_id}/{account}".encode())[:8], 16)


def round_task(
    server: Identity,
    doc: Doc,
    r: int,
    clients: list[str],
    content_hash: str,
    *,
    metric: str,
    empty_value: float,
    content_uri: str = "",
    deposit_confirmed: bool = False,
) -> ShapleyTask:
    """The signed Shapley task of round ``r`` of the training task ``doc`` (its ``task_id``, ``budget``,
    ``rounds``, ``ratio``, ``deposit_txid`` and, unless ``deposit_confirmed``, the ``deposit`` itself as
    funding): Algorithm 3's prices for the round, paid from the deposit's escrow."""
    prices = round_prices(doc["budget"], doc["ratio"], doc["rounds"], r)  # the division contract's
    return make_task(
        server,
        task_id=f"{doc['task_id']}:r{r}",
        round=r,
        clients=clients,
        train_price=prices[0],
        sap_price=prices[2],
        deposit=doc["deposit_txid"],
        budget=doc["budget"],
        rounds=doc["rounds"],
        ratio=list(doc["ratio"]),
        published_at=int(time.time() * 1000),
        metric=metric,
        empty_value=empty_value,
        content_hash=content_hash,
        content_uri=content_uri,
        funding=[] if deposit_confirmed else [Transaction.from_dict(doc["deposit"])],
    )


class RoundTrainer:
    def __init__(
        self,
        identity: Identity,
        settings: ServerSettings,
        clients: ClientGateway,
        blobs: BlobStore,
        validation: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    ) -> None:
        self.identity = identity
        self.settings = settings
        self.clients = clients
        self.blobs = blobs
        self.validation = validation

    def _train_client(self, client: Doc, order: TrainOrder) -> tuple[Doc, Update, int] | str:
        """One client's update for ``order``, or why there is none (it failed or does not verify)."""
        msg = order.sign(self.identity)
        try:
            body = self.clients.train(client["url"], msg.model_dump())
            receipt = UpdateReceipt.open(SignedMessage.from_dict(body["message"]), sender=client["account"])
            blob = base64.b64decode(body["update_b64"], validate=True)
            if (
                sha256_hex(blob) != receipt.update_hash
                or receipt.task_id != order.task_id
                or receipt.round != order.round
            ):
                raise InvalidInput("update does not match its signed receipt")
            return client, unpack_weights(blob), receipt.n_samples
        except (FedcoinError, ValueError, KeyError, TypeError) as exc:
            log.warning("client %s failed: %s", client["account"][:12], exc)
            return f"{type(exc).__name__}: {exc}"[:500]

    def train(self, doc: Doc, r: int, current: Update, clients: list[Doc], deposit_confirmed: bool) -> Doc:
        """Train round ``r`` of ``doc`` with ``clients``, aggregate, sign its Shapley task; the pending round."""
        s = self.settings
        X_val, y_val = self.validation()
        stid = f"{doc['task_id']}:r{r}"
        base = {
            "task_id": stid,
            "round": r,
            "global_uri": f"{self.settings.advertise_url}/blobs/{doc['global_hash']}",
            "global_hash": doc["global_hash"],
            "iterations": s.local_iterations,
            "batch_size": s.batch_size,
            "lr": s.lr,
        }
        shapes = weight_shapes(current)
        got: list[tuple[Doc, Update, int]] = []
        dropped: list[Doc] = []  # a client without a valid update gets nothing this round; the reason is kept
        with ThreadPoolExecutor(max_workers=8) as pool:
            orders = [TrainOrder(client=c["account"], seed=client_seed(stid, c["account"]), **base) for c in clients]
            for c, res in zip(clients, pool.map(self._train_client, clients, orders), strict=True):
                if isinstance(res, str):
                    dropped.append({"client": c["account"], "reason": res})
                    continue
                try:
                    validate_update(res[1], shapes)
                except FedcoinError as exc:
                    log.warning("client %s: update dropped: %s", c["account"][:12], exc)
                    dropped.append({"client": c["account"], "reason": f"{type(exc).__name__}: {exc}"[:500]})
                    continue
                got.append(res)
        if not got:
            raise Unavailable(f"round {r}: no client returned a valid update ({len(dropped)} dropped)")
        updates = [u for _, u, _ in got]
        ns = [n for _, _, n in got]
        new_global = fedavg(updates, ns, shapes)
        content_hash = self.blobs.put(pack_task_content(updates, ns, X_val, y_val, current))
        task = round_task(
            self.identity,
            doc,
            r,
            [c["account"] for c, _, _ in got],
            content_hash,
            metric=s.metric,
            empty_value=self.empty_value(current, X_val, y_val),
            content_uri=f"{self.settings.advertise_url}/blobs/{content_hash}",
            deposit_confirmed=deposit_confirmed,
        )
        pending = {
            "round": r,
            "task": task.to_dict(),
            "new_global_hash": self.blobs.put(pack_weights(new_global)),
            "metrics": evaluate(new_global, X_val, y_val),
            "n_samples": ns,
            "dropped": dropped,
        }
        log.info("round %d: %d updates aggregated, Shapley task %s published", r, len(got), stid)
        return pending

    def empty_value(self, start: Update, X_val: torch.Tensor, y_val: torch.Tensor) -> float:
        if self.settings.empty_value != "global":
            return float(self.settings.empty_value)
        m = evaluate(start, X_val, y_val)
        return -m["loss"] if self.settings.metric == "neg_loss" else m["accuracy"]


class Settlement:
    def __init__(self, miners: MinerGateway, settle_timeout: float, agreement_timeout: float = 60.0) -> None:
        self.miners = miners
        self.settle_timeout = settle_timeout
        self.agreement_timeout = agreement_timeout

    def refund(self, doc: Doc, server: Identity) -> Doc | None:
        """Return what is left of ``doc``'s deposit to its requester: the refund record, ``done`` once the
        escrow is empty on chain; None while the deposit is not confirmed (try again later)."""
        txid = doc["deposit_txid"]
        info = self.miners.get(f"/transactions/{txid}")
        if info is None or info.get("status") != "confirmed":
            return None
        bal = self.miners.get(f"/balances/{txid}")
        left = int(bal["balance"]) if bal else 0
        if left == 0:
            return {"status": "done", **{k: v for k, v in (doc.get("refund") or {}).items() if k != "status"}}
        tx = make_refund(server, txid, doc["requester"], left)
        answers = self.miners.post_all("/transactions", tx.to_dict())
        log.info("task %s: refund of %d to the requester sent (%s)", doc["task_id"], left, [s for s, _ in answers])
        return {"status": "pending", "txid": tx.txid, "amount": left}

    def deposit_state(self, doc: Doc) -> str:
        """``confirmed``, ``pending`` or ``unknown`` (sent to the miners if none knows it); InvalidInput if refused."""
        info = self.miners.get(f"/transactions/{doc['deposit_txid']}")
        if info is None:
            answers = self.miners.post_all("/transactions", doc["deposit"])
            if answers and all(400 <= status < 500 for status, _ in answers):
                raise InvalidInput(f"deposit rejected by the miners: {answers[0][1]}")
            info = self.miners.get(f"/transactions/{doc['deposit_txid']}")
        return "unknown" if info is None else str(info["status"])

    def publish_and_settle(self, pending: Doc, stop: threading.Event) -> Doc | None:
        stid = pending["task"]["task_id"]
        answers = self.miners.post_all("/tasks", pending["task"])
        if not any(status in (200, 202) for status, _ in answers):
            raise Unavailable(f"no miner accepted Shapley task {stid}: {[text[:200] for _, text in answers]}")
        settled = self.wait_settled(stid, stop)
        return None if settled is None else self.wait_agreement(stid, settled)

    def wait_settled(self, stid: str, stop: threading.Event) -> Doc | None:
        deadline = time.time() + self.settle_timeout
        while not stop.is_set():
            info = self.miners.get(f"/tasks/{stid}")
            if info and info.get("settled"):
                return dict(info)
            if time.time() > deadline:
                raise Unavailable(f"Shapley task {stid} not settled within {self.settle_timeout:.0f} s")
            time.sleep(0.5)
        return None

    def wait_agreement(self, stid: str, first: Doc) -> Doc:
        """Wait until every reachable miner settles ``stid`` in the same block, so the record
        names the block the network kept (a competing block may win the tie-break first)."""
        deadline = time.time() + self.agreement_timeout
        while True:
            answers = self.miners.get_all(f"/tasks/{stid}")
            blocks = {a.get("block_hash") for a in answers}
            if answers and len(blocks) == 1 and all(a.get("settled") for a in answers):
                return dict(answers[0])
            if time.time() > deadline:
                log.warning("miners still disagree on the block settling %s; recording the first seen", stid)
                return dict(answers[0]) if answers and answers[0].get("settled") else first
            time.sleep(1.0)

    def payments(self, stid: str, height: int) -> dict[str, list[dict[str, Any]]]:
        """The payout and rewards of the block at ``height`` that settle ``stid``."""
        block = self.miners.get(f"/blocks/{height}")
        payments: dict[str, list[dict[str, Any]]] = {}
        for tx in (block or {}).get("body", {}).get("transactions", []):
            if tx["kind"] in ("reward", "payout", "commission") and tx["memo"] == stid:
                payments.setdefault(tx["kind"], []).append({"to": tx["recipient"], "amount": tx["amount"]})
        return payments
