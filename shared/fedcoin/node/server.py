"""The FL server's logic: paid training tasks, FedAvg rounds, one Shapley task per round.

A requester's signed training request (with its deposit of V) is stored as a
task document. A worker thread (:meth:`FLServer.run`) takes tasks one at a time
(Observation 1) through these steps, persisting the document after each, so a
restarted server resumes where it stopped:

1. **accept** — wait until the miners know the deposit (pending or confirmed);
2. **train** — for each round: send every registered client a signed train
   order, keep the valid updates (signed receipts matching their content),
   aggregate them with FedAvg;
3. **publish** — sign the round's Shapley task (Algorithm 3: TrainPrice and
   SapPrice of the round, the content hash of the updates and validation set)
   and post it to every miner;
4. **settle** — wait until the task is settled on chain, by the same block on
   every reachable miner, and record S̄ and the payments.

Steps 2-4 are :class:`~fedcoin.node.rounds.RoundTrainer` and
:class:`~fedcoin.node.rounds.Settlement`; the server talks to miners and
clients only through :class:`~fedcoin.node.peers.MinerGateway` and
:class:`~fedcoin.node.peers.ClientGateway`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch

from fedcoin.chain.identity import Identity
from fedcoin.consensus.payments import split_budget
from fedcoin.errors import Conflict, FedcoinError, InvalidInput, InvalidSignature, NotFound, Unavailable
from fedcoin.fl.content import pack_weights, unpack_weights
from fedcoin.fl.data import load_dataset
from fedcoin.fl.model import Update, init_weights
from fedcoin.ledger.store import connect

from .blobs import BlobStore
from .docstore import DocStore
from .logs import event
from .messages import CancelRequest, ClientRegistration, SignedMessage, TrainingRequest
from .metrics import Metric, ServerMetrics, gauge, gauge_by
from .peers import ClientGateway, MinerGateway
from .rounds import RoundTrainer, Settlement
from .settings import ServerSettings

log = logging.getLogger("fedcoin.server")
ACTIVE = ("queued", "awaiting-deposit", "training")
ENDED = ("failed", "cancelled")  # their deposit's unspent escrow goes back to the requester
REFUND_RETRY_S = 10.0
Doc = dict[str, Any]


class FLServer:
    def __init__(
        self,
        identity: Identity,
        settings: ServerSettings,
        miners: MinerGateway,
        clients: ClientGateway,
        validation: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    ) -> None:
        self.identity = identity
        self.settings = settings
        ddir = settings.state_dir
        self.blobs = BlobStore(Path(ddir) / "blobs")
        self.docs = DocStore(conn=connect(Path(ddir) / "server.sqlite"))
        self._validation = validation
        self._val: tuple[torch.Tensor, torch.Tensor] | None = None
        self.trainer = RoundTrainer(identity, settings, clients, self.blobs, self.validation)
        self.settlement = Settlement(miners, settings.settle_timeout)
        self.lock = threading.RLock()
        self.wake = threading.Event()
        self.metrics = ServerMetrics()
        self.metrics.levels(self._levels)
        self._refund_tried: dict[str, float] = {}  # task id -> when its refund was last attempted

    def validation(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._val is None:
            self._val = self._validation()
        return self._val

    # --- requests ------------------------------------------------------------------
    def register_client(self, msg: SignedMessage) -> Doc:
        """A client's registration, signed with its own key, at an address the operator allows
        (``FEDCOIN_CLIENT_NETWORKS``); at most ``FEDCOIN_MAX_CLIENTS`` are kept."""
        reg = ClientRegistration.open(msg)
        url = urlsplit(reg.url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise InvalidInput("client url must be http(s)://host[:port]")
        if not self.settings.allows_client_host(url.hostname):
            raise InvalidInput(f"client host {url.hostname!r} is not in this server's FEDCOIN_CLIENT_NETWORKS")
        doc = {"account": msg.sender, **reg.model_dump(), "registered_at": time.time()}
        with self.lock:
            known = self.docs.get("clients", msg.sender) is not None
            if not known and len(self.docs.list("clients")) >= self.settings.max_clients:
                raise Conflict(f"this server keeps {self.settings.max_clients} client registrations already")
            self.docs.put("clients", msg.sender, doc)
        return doc

    def registered_clients(self) -> list[Doc]:
        with self.lock:
            return self.docs.list("clients")

    def submit(self, msg: SignedMessage) -> Doc:
        """A requester's signed training request with its deposit; the stored task document."""
        req = TrainingRequest.open(msg)
        dep = req.deposit
        dep.verify_signature()
        if dep.kind != "deposit" or dep.sender != msg.sender or dep.recipient != self.identity.account:
            raise InvalidInput("deposit must be a deposit from the requester to this server")
        if dep.amount != req.budget or dep.memo != req.task_id:
            raise InvalidInput("deposit amount must equal the budget and its memo must be the task id")
        train, com, sap = split_budget(req.budget, req.ratio)
        with self.lock:
            old = self.docs.get("tasks", req.task_id)
            if old is not None:
                if old["deposit_txid"] == dep.txid:
                    return old
                raise InvalidInput(f"task {req.task_id} exists with another deposit")
            doc: Doc = {
                "task_id": req.task_id,
                "requester": msg.sender,
                "budget": req.budget,
                "rounds": req.rounds,
                "ratio": list(req.ratio),
                "prices": {"train": train, "com": com, "sap": sap},
                "deposit": dep.to_dict(),
                "deposit_txid": dep.txid,
                "status": "queued",
                "submitted_at": time.time(),
                "round_results": [],
            }
            self.docs.put("tasks", req.task_id, doc)
        self.wake.set()
        return doc

    def task(self, task_id: str) -> Doc | None:
        with self.lock:
            return self.docs.get("tasks", task_id)

    def tasks(self) -> list[Doc]:
        with self.lock:
            return self.docs.list("tasks")

    def model(self, task_id: str) -> tuple[str, bytes] | None:
        """(hash, bytes) of a done task's final model; None if unknown. InvalidInput if not done."""
        doc = self.task(task_id)
        if doc is None:
            return None
        if doc["status"] != "done":
            raise Conflict(f"task is {doc['status']}; the model is ready when it is done")
        data = self.blobs.get(doc["model_hash"])
        if data is None:
            raise Unavailable(f"model {doc['model_hash'][:16]} is missing from the blob store")
        return doc["model_hash"], data

    def _save(self, doc: Doc) -> None:
        """Store the worker's copy of ``doc``; a cancellation recorded meanwhile stays."""
        with self.lock:
            stored = self.docs.get("tasks", doc["task_id"])
            if stored is not None and stored["status"] == "cancelled" and doc["status"] != "cancelled":
                doc.update(status="cancelled", cancelled_at=stored.get("cancelled_at"))
            self.docs.put("tasks", doc["task_id"], doc)

    # --- the worker: one task at a time -------------------------------------------
    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self._refunds()
            todo = [d for d in self.tasks() if d["status"] in ACTIVE]
            if not todo:
                self.wake.wait(timeout=1.0)
                self.wake.clear()
                continue
            doc = todo[0]
            try:
                self.process(doc, stop)
            except FedcoinError as exc:
                log.error("task %s failed: %s", doc["task_id"], exc)
                doc.update(status="failed", error=str(exc))
                self._save(doc)
            except Exception as exc:  # keep serving; record why
                log.exception("task %s: unexpected error", doc["task_id"])
                doc.update(status="failed", error=f"{type(exc).__name__}: {exc}")
                self._save(doc)

    def _refunds(self, every: float = REFUND_RETRY_S) -> None:
        """Refund the unspent budget of failed and cancelled tasks (retried every ``every`` seconds until
        the escrow is empty)."""
        now = time.time()
        for doc in self.tasks():
            if doc["status"] not in ENDED or (doc.get("refund") or {}).get("status") == "done":
                continue
            if now - self._refund_tried.get(doc["task_id"], -every) < every:
                continue
            self._refund_tried[doc["task_id"]] = now
            try:
                refund = self.settlement.refund(doc, self.identity)
            except FedcoinError as exc:
                log.warning("task %s: refund not sent yet: %s", doc["task_id"], exc)
                continue
            if refund is not None and refund != doc.get("refund"):
                with self.lock:
                    stored = self.docs.get("tasks", doc["task_id"]) or doc
                    stored["refund"] = refund
                    self.docs.put("tasks", doc["task_id"], stored)

    def cancel(self, msg: SignedMessage) -> Doc:
        """The requester's signed cancel request: no further round starts (a round already published may
        still settle), and the unspent budget is refunded on chain."""
        req = CancelRequest.open(msg)
        with self.lock:
            doc = self.docs.get("tasks", req.task_id)
            if doc is None:
                raise NotFound(f"unknown task {req.task_id}")
            if msg.sender != doc["requester"]:
                raise InvalidSignature("only the task's requester may cancel it")
            if doc["status"] in ("done", "cancelled", "failed"):
                raise Conflict(f"task {req.task_id} is {doc['status']} already")
            doc.update(status="cancelled", cancelled_at=time.time())
            self.docs.put("tasks", req.task_id, doc)
        self.wake.set()
        log.info("task %s cancelled by its requester", req.task_id)
        return doc

    def _cancelled(self, task_id: str) -> bool:
        with self.lock:
            stored = self.docs.get("tasks", task_id)
        return stored is not None and stored["status"] == "cancelled"

    def process(self, doc: Doc, stop: threading.Event) -> None:
        """Take ``doc`` as far as it goes: accepted, every round settled, done."""
        if doc["status"] in ("queued", "awaiting-deposit") and not self._accept(doc):
            return
        X_val, y_val = self.validation()
        self._wait_for_clients(stop)
        if doc.get("global_hash"):
            current = self._weights(doc["global_hash"])
        else:
            current = init_weights(self.settings.hidden, in_features=X_val.shape[1], seed=self.settings.model_seed)
            doc["global_hash"] = self.blobs.put(pack_weights(current))
        for r in range(len(doc["round_results"]), doc["rounds"]):
            if stop.is_set() or self._cancelled(doc["task_id"]) or not self._round(doc, r, current, stop):
                return
            current = self._weights(doc["global_hash"])
        doc.update(status="done", model_hash=doc["global_hash"], finished_at=time.time())
        self._save(doc)

    def _weights(self, content_hash: str) -> Update:
        data = self.blobs.get(content_hash)
        if data is None:
            raise Unavailable(f"model {content_hash[:16]} is missing from the blob store")
        return unpack_weights(data)

    # --- 1. accept ---------------------------------------------------------------------
    def _accept(self, doc: Doc) -> bool:
        state = self.settlement.deposit_state(doc)
        if state == "unknown":
            doc["status"] = "awaiting-deposit"
            self._save(doc)
            time.sleep(1.0)
            return False
        doc.update(deposit_status_at_acceptance=state, status="training", accepted_at=time.time())
        self._save(doc)
        log.info("task %s accepted (deposit %s)", doc["task_id"], state)
        return True

    def _wait_for_clients(self, stop: threading.Event) -> list[Doc]:
        deadline = time.time() + self.settings.client_wait
        while not stop.is_set():
            clients = self.registered_clients()
            if len(clients) >= self.settings.min_clients:
                return clients
            if time.time() > deadline:
                raise Unavailable(f"only {len(clients)} clients registered, need {self.settings.min_clients}")
            time.sleep(0.5)
        return []

    def _levels(self) -> list[Metric]:
        counts = dict.fromkeys(("queued", "awaiting-deposit", "training", "done", "failed", "cancelled"), 0)
        for d in self.tasks():
            counts[d["status"]] = counts.get(d["status"], 0) + 1
        return [
            gauge_by("fedcoin_tasks", "training tasks by status", "status", {k: float(v) for k, v in counts.items()}),
            gauge("fedcoin_registered_clients", "FL clients registered", len(self.registered_clients())),
        ]

    # --- 2.-4. one round ------------------------------------------------------------------
    def _round(self, doc: Doc, r: int, current: Update, stop: threading.Event) -> bool:
        """Train round ``r`` (unless a crash left it pending), have it settled and recorded; False if stopped."""
        pending = doc.get("pending_round")
        if pending is None or pending["round"] != r:
            confirmed = self.settlement.deposit_state(doc) == "confirmed"
            log.info("task %s: round %d training", doc["task_id"], r, extra=event("task-phase", phase="train", round=r))
            with self.metrics.phase("train"):
                pending = self.trainer.train(doc, r, current, self.registered_clients(), confirmed)
            doc["pending_round"] = pending
            self._save(doc)
        log.info("task %s: round %d settling", doc["task_id"], r, extra=event("task-phase", phase="settle", round=r))
        with self.metrics.phase("settle"):
            settled = self.settlement.publish_and_settle(pending, stop)
        if settled is None:
            return False
        self.metrics.rounds.inc()
        stid = pending["task"]["task_id"]
        doc["round_results"].append(
            {
                "round": pending["round"],
                "shapley_task_id": stid,
                "clients": pending["task"]["clients"],
                "n_samples": pending["n_samples"],
                "block_height": settled["height"],
                "block_hash": settled["block_hash"],
                "winner": settled["winner"],
                "shapley": settled["s_avg"],
                "payments": self.settlement.payments(stid, settled["height"]),
                "metrics": pending["metrics"],
                "dropped": pending.get("dropped", []),
            }
        )
        doc["global_hash"] = pending["new_global_hash"]
        doc.pop("pending_round", None)
        self._save(doc)
        log.info("round %d settled in block %d", pending["round"], settled["height"])
        return True


def load_validation(
    dataset: str, dataset_dir: str | Path | None, val_size: int, val_seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The server's validation set: ``val_size`` samples of the test split, drawn with ``val_seed``."""
    ds = load_dataset(dataset, dataset_dir)
    X, y = ds.test_tensors()
    g = torch.Generator().manual_seed(val_seed)
    idx = torch.randperm(X.shape[0], generator=g)[:val_size]
    return X[idx].contiguous(), y[idx].contiguous()
