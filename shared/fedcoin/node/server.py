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

The server talks to miners and clients only through
:class:`~fedcoin.node.peers.MinerGateway` and
:class:`~fedcoin.node.peers.ClientGateway`.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from fedcoin.chain.encoding import sha256_hex
from fedcoin.chain.identity import Identity
from fedcoin.chain.tasks import make_task
from fedcoin.chain.transactions import Transaction
from fedcoin.consensus.payments import split_budget
from fedcoin.errors import Conflict, FedcoinError, InvalidInput, Unavailable
from fedcoin.fl.content import pack_task_content, pack_weights, unpack_weights
from fedcoin.fl.data import load_dataset
from fedcoin.fl.fedavg import fedavg, validate_update
from fedcoin.fl.model import Update, evaluate, init_weights, weight_shapes
from fedcoin.ledger.store import connect

from .blobs import BlobStore
from .docstore import DocStore
from .messages import ClientRegistration, SignedMessage, TrainingRequest, TrainOrder, UpdateReceipt
from .peers import ClientGateway, MinerGateway
from .settings import ServerSettings

log = logging.getLogger("fedcoin.server")
ACTIVE = ("queued", "awaiting-deposit", "training")
Doc = dict[str, Any]


def client_seed(task_id: str, account: str) -> int:
    """Each client's local SGD seed, distinct per client and round, reproducible from the task."""
    return int(sha256_hex(f"{task_id}/{account}".encode())[:8], 16)


def per_round(total: int, rounds: int, r: int) -> int:
    """Equal shares per round; the remainder goes to the last round."""
    base = total // rounds
    return base + (total - base * rounds if r == rounds - 1 else 0)


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
        self.url = settings.advertise_url
        ddir = settings.state_dir
        self.blobs = BlobStore(Path(ddir) / "blobs")
        self.docs = DocStore(conn=connect(Path(ddir) / "server.sqlite"))
        self.miners = miners
        self.clients = clients
        self._validation = validation
        self._val: tuple[torch.Tensor, torch.Tensor] | None = None
        self.lock = threading.RLock()
        self.wake = threading.Event()

    def validation(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._val is None:
            self._val = self._validation()
        return self._val

    # --- requests ------------------------------------------------------------------
    def register_client(self, msg: SignedMessage) -> Doc:
        reg = ClientRegistration.open(msg)
        if not reg.url.startswith(("http://", "https://")):
            raise InvalidInput("client url must be http(s)")
        doc = {"account": msg.sender, **reg.model_dump(), "registered_at": time.time()}
        with self.lock:
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
        with self.lock:
            self.docs.put("tasks", doc["task_id"], doc)

    # --- the worker: one task at a time -------------------------------------------
    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
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
            if stop.is_set():
                return
            pending = doc.get("pending_round")
            if pending is None or pending["round"] != r:
                pending = self._train_round(doc, r, current)
            settled = self._publish_and_settle(pending, stop)
            if settled is None:
                return
            self._record(doc, pending, settled)
            current = self._weights(doc["global_hash"])
        doc.update(status="done", model_hash=doc["global_hash"], finished_at=time.time())
        self._save(doc)

    def _weights(self, content_hash: str) -> Update:
        data = self.blobs.get(content_hash)
        if data is None:
            raise Unavailable(f"model {content_hash[:16]} is missing from the blob store")
        return unpack_weights(data)

    # --- 1. accept ---------------------------------------------------------------------
    def _deposit_state(self, doc: Doc) -> str:
        info = self.miners.get(f"/transactions/{doc['deposit_txid']}")
        if info is None:
            answers = self.miners.post_all("/transactions", doc["deposit"])
            if answers and all(400 <= status < 500 for status, _ in answers):
                raise InvalidInput(f"deposit rejected by the miners: {answers[0][1]}")
            info = self.miners.get(f"/transactions/{doc['deposit_txid']}")
        return "unknown" if info is None else str(info["status"])

    def _accept(self, doc: Doc) -> bool:
        state = self._deposit_state(doc)
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

    # --- 2. train ---------------------------------------------------------------------
    def _train_client(self, client: Doc, order: TrainOrder) -> tuple[Doc, Update, int] | None:
        """One client's update for ``order``; None (and a log line) when it fails or does not verify."""
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
            return None

    def _train_round(self, doc: Doc, r: int, current: Update) -> Doc:
        """Train round ``r`` with every registered client, aggregate, sign its Shapley task; persisted."""
        s = self.settings
        X_val, y_val = self.validation()
        stid = f"{doc['task_id']}:r{r}"
        clients = self.registered_clients()  # every client registered by now takes part in this round
        base = {
            "task_id": stid,
            "round": r,
            "global_uri": f"{self.url}/blobs/{doc['global_hash']}",
            "global_hash": doc["global_hash"],
            "iterations": s.local_iterations,
            "batch_size": s.batch_size,
            "lr": s.lr,
        }
        with ThreadPoolExecutor(max_workers=8) as pool:
            orders = [TrainOrder(client=c["account"], seed=client_seed(stid, c["account"]), **base) for c in clients]
            got = [x for x in pool.map(self._train_client, clients, orders) if x is not None]
        if not got:
            raise Unavailable(f"round {r}: no client returned a valid update")
        shapes = weight_shapes(current)
        for _, u, _n in got:
            validate_update(u, shapes)
        updates = [u for _, u, _ in got]
        ns = [n for _, _, n in got]
        new_global = fedavg(updates, ns, shapes)
        content_hash = self.blobs.put(pack_task_content(updates, ns, X_val, y_val, current))
        deposit_confirmed = self._deposit_state(doc) == "confirmed"
        task = make_task(
            self.identity,
            task_id=stid,
            round=r,
            clients=[c["account"] for c, _, _ in got],
            train_price=per_round(doc["prices"]["train"], doc["rounds"], r),
            sap_price=per_round(doc["prices"]["sap"], doc["rounds"], r),
            published_at=int(time.time() * 1000),
            metric=s.metric,
            empty_value=self._empty_value(current, X_val, y_val),
            content_hash=content_hash,
            content_uri=f"{self.url}/blobs/{content_hash}",
            funding=[] if deposit_confirmed else [Transaction.from_dict(doc["deposit"])],
        )
        pending = {
            "round": r,
            "task": task.to_dict(),
            "new_global_hash": self.blobs.put(pack_weights(new_global)),
            "metrics": evaluate(new_global, X_val, y_val),
            "n_samples": ns,
        }
        doc["pending_round"] = pending
        self._save(doc)
        log.info("round %d: %d updates aggregated, Shapley task %s published", r, len(got), stid)
        return pending

    def _empty_value(self, start: Update, X_val: torch.Tensor, y_val: torch.Tensor) -> float:
        if self.settings.empty_value != "global":
            return float(self.settings.empty_value)
        m = evaluate(start, X_val, y_val)
        return -m["loss"] if self.settings.metric == "neg_loss" else m["accuracy"]

    # --- 3. publish and 4. settle ----------------------------------------------------------
    def _publish_and_settle(self, pending: Doc, stop: threading.Event) -> Doc | None:
        stid = pending["task"]["task_id"]
        answers = self.miners.post_all("/tasks", pending["task"])
        if not any(status in (200, 202) for status, _ in answers):
            raise Unavailable(f"no miner accepted Shapley task {stid}: {[text[:200] for _, text in answers]}")
        settled = self._wait_settled(stid, stop)
        return None if settled is None else self._wait_agreement(stid, settled)

    def _wait_settled(self, stid: str, stop: threading.Event) -> Doc | None:
        deadline = time.time() + self.settings.settle_timeout
        while not stop.is_set():
            info = self.miners.get(f"/tasks/{stid}")
            if info and info.get("settled"):
                return dict(info)
            if time.time() > deadline:
                raise Unavailable(f"Shapley task {stid} not settled within {self.settings.settle_timeout:.0f} s")
            time.sleep(0.5)
        return None

    def _wait_agreement(self, stid: str, first: Doc, timeout: float = 60.0) -> Doc:
        """Wait until every reachable miner settles ``stid`` in the same block, so the record
        names the block the network kept (a competing block may win the tie-break first)."""
        deadline = time.time() + timeout
        while True:
            answers = self.miners.get_all(f"/tasks/{stid}")
            blocks = {a.get("block_hash") for a in answers}
            if answers and len(blocks) == 1 and all(a.get("settled") for a in answers):
                return dict(answers[0])
            if time.time() > deadline:
                log.warning("miners still disagree on the block settling %s; recording the first seen", stid)
                return dict(answers[0]) if answers and answers[0].get("settled") else first
            time.sleep(1.0)

    def _record(self, doc: Doc, pending: Doc, settled: Doc) -> None:
        stid = pending["task"]["task_id"]
        block = self.miners.get(f"/blocks/{settled['height']}")
        payments: dict[str, list[dict[str, Any]]] = {}
        for tx in (block or {}).get("body", {}).get("transactions", []):
            if tx["kind"] in ("reward", "payout") and tx["memo"] == stid:
                payments.setdefault(tx["kind"], []).append({"to": tx["recipient"], "amount": tx["amount"]})
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
                "payments": payments,
                "metrics": pending["metrics"],
            }
        )
        doc["global_hash"] = pending["new_global_hash"]
        doc.pop("pending_round", None)
        self._save(doc)
        log.info("round %d settled in block %d", pending["round"], settled["height"])


def load_validation(
    dataset: str, dataset_dir: str | Path | None, val_size: int, val_seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The server's validation set: ``val_size`` samples of the test split, drawn with ``val_seed``."""
    ds = load_dataset(dataset, dataset_dir)
    X, y = ds.test_tensors()
    g = torch.Generator().manual_seed(val_seed)
    idx = torch.randperm(X.shape[0], generator=g)[:val_size]
    return X[idx].contiguous(), y[idx].contiguous()
