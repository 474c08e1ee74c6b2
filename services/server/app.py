"""FL server: accepts paid training tasks, runs FedAvg with the clients and publishes a
Shapley task per round to the miners (Algorithm 3), one task at a time (Observation 1).

Environment: FEDCOIN_GENESIS, FEDCOIN_DATA_DIR, FEDCOIN_KEY, FEDCOIN_MINERS (miner base
URLs), FEDCOIN_ADVERTISE_URL (this server's URL as miners and clients reach it),
FEDCOIN_DATASET / FEDCOIN_DATASET_DIR (validation data), FEDCOIN_VAL_SIZE (1000),
FEDCOIN_HIDDEN ("200"), FEDCOIN_LOCAL_ITERATIONS (20), FEDCOIN_LR, FEDCOIN_BATCH_SIZE,
FEDCOIN_METRIC (neg_loss or accuracy), FEDCOIN_EMPTY_VALUE ("global", the default: v(∅) is
the metric of the round's starting global model, so the clients' Shapley values add up to the
round's improvement; or a number, e.g. 0 as in the paper), FEDCOIN_MIN_CLIENTS,
FEDCOIN_CLIENT_WAIT (seconds to wait for registrations).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import torch
from fastapi import FastAPI, HTTPException
from fastapi.responses import Response

from fedcoin.encoding import sha256_hex
from fedcoin.errors import FedcoinError, InvalidInput
from fedcoin.fl import evaluate, fedavg, init_weights, validate_update, weight_shapes
from fedcoin.identity import Identity
from fedcoin.messages import SignedMessage
from fedcoin.payments import split_budget
from fedcoin.schemas import ClientRegistration, TrainingRequest, TrainOrder, UpdateReceipt
from fedcoin.store import DocStore, connect
from fedcoin.taskdata import pack_task_content, pack_weights, unpack_weights
from fedcoin.tasks import make_task
from fedcoin.transactions import Transaction

from ..common import start_node, env, env_list, install_error_handlers, load_genesis

log = logging.getLogger("fedcoin.server")
HTTP_TIMEOUT = httpx.Timeout(30.0, connect=3.0)
TRAIN_TIMEOUT = httpx.Timeout(300.0, connect=5.0)


def _client_seed(task_id: str, account: str) -> int:
    """Each client's local SGD seed, distinct per client and round, reproducible from the task."""
    return int(sha256_hex(f"{task_id}/{account}".encode())[:8], 16)


def _per_round(total: int, rounds: int, r: int) -> int:
    """Equal shares per round; the remainder goes to the last round."""
    base = total // rounds
    return base + (total - base * rounds if r == rounds - 1 else 0)


class FLServer:
    def __init__(self, identity: Identity, ddir: Path, miners: list[str], url: str) -> None:
        self.identity = identity
        self.ddir = ddir
        (ddir / "blobs").mkdir(parents=True, exist_ok=True)
        self.docs = DocStore(conn=connect(ddir / "server.sqlite"))
        self.miners = miners
        self.url = url.rstrip("/")
        self.lock = threading.RLock()
        self.wake = threading.Event()
        self.hidden = [int(x) for x in (env("HIDDEN", "200") or "200").split(",") if x]
        self.iterations = int(env("LOCAL_ITERATIONS", "20"))
        self.lr = float(env("LR", "0.1"))
        self.batch_size = int(env("BATCH_SIZE", "64"))
        self.metric = env("METRIC", "neg_loss")
        self.empty_value = env("EMPTY_VALUE", "global")  # a number, or "global": F of the round's starting model
        self.min_clients = int(env("MIN_CLIENTS", "1"))
        self.client_wait = float(env("CLIENT_WAIT", "120"))
        self.settle_timeout = float(env("SETTLE_TIMEOUT", "1800"))
        self._val: tuple[torch.Tensor, torch.Tensor] | None = None

    # --- storage ------------------------------------------------------------
    def put_blob(self, data: bytes) -> str:
        h = sha256_hex(data)
        path = self.ddir / "blobs" / f"{h}.npz"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        return h

    def get_blob(self, h: str) -> bytes | None:
        if len(h) != 64 or not all(c in "0123456789abcdef" for c in h):
            return None
        path = self.ddir / "blobs" / f"{h}.npz"
        return path.read_bytes() if path.exists() else None

    def validation(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._val is None:
            from fedcoin.data import load_dataset

            ds = load_dataset(env("DATASET", "fashion-mnist"), env("DATASET_DIR"))
            n = int(env("VAL_SIZE", "1000"))
            g = torch.Generator().manual_seed(int(env("VAL_SEED", "0")))
            X, y = ds.test_tensors()
            idx = torch.randperm(X.shape[0], generator=g)[:n]
            self._val = (X[idx].contiguous(), y[idx].contiguous())
        return self._val

    # --- API actions -----------------------------------------------------------
    def register_client(self, msg: SignedMessage) -> dict:
        reg = ClientRegistration.model_validate(msg.open(ClientRegistration.KIND))
        if not reg.url.startswith(("http://", "https://")):
            raise InvalidInput("client url must be http(s)")
        doc = {"account": msg.sender, **reg.model_dump(), "registered_at": time.time()}
        with self.lock:
            self.docs.put("clients", msg.sender, doc)
        return doc

    def submit(self, msg: SignedMessage) -> dict:
        try:
            req = TrainingRequest.model_validate(msg.open(TrainingRequest.KIND))
        except ValueError as exc:
            raise InvalidInput(f"malformed training request: {exc}") from exc
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
            doc = {
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

    def task(self, task_id: str) -> dict | None:
        with self.lock:
            return self.docs.get("tasks", task_id)

    def _save(self, doc: dict) -> None:
        with self.lock:
            self.docs.put("tasks", doc["task_id"], doc)

    # --- the worker: one task at a time -------------------------------------------
    def run(self, stop: threading.Event) -> None:
        with httpx.Client() as http:
            while not stop.is_set():
                todo = [d for d in self.docs.list("tasks") if d["status"] in ("queued", "awaiting-deposit", "training")]
                if not todo:
                    self.wake.wait(timeout=1.0)
                    self.wake.clear()
                    continue
                doc = todo[0]
                try:
                    self._process(http, doc, stop)
                except FedcoinError as exc:
                    log.error("task %s failed: %s", doc["task_id"], exc)
                    doc.update(status="failed", error=str(exc))
                    self._save(doc)
                except Exception as exc:  # noqa: BLE001 - keep serving; record why
                    log.exception("task %s: unexpected error", doc["task_id"])
                    doc.update(status="failed", error=f"{type(exc).__name__}: {exc}")
                    self._save(doc)

    def _miner_get(self, http: httpx.Client, path: str) -> Any | None:
        for m in self.miners:
            try:
                r = http.get(f"{m}{path}", timeout=HTTP_TIMEOUT)
            except httpx.HTTPError:
                continue
            if r.status_code == 200:
                return r.json()
            if r.status_code == 404:
                return None
        return None

    def _miner_post_all(self, http: httpx.Client, path: str, body: Any) -> list[httpx.Response]:
        """POST to every miner at once, so that all of them start on a task together."""

        def post(m: str) -> httpx.Response | None:
            try:
                return http.post(f"{m}{path}", json=body, timeout=HTTP_TIMEOUT)
            except httpx.HTTPError as exc:
                log.warning("miner %s unreachable: %s", m, exc)
                return None

        with ThreadPoolExecutor(max_workers=max(1, len(self.miners))) as pool:
            return [r for r in pool.map(post, self.miners) if r is not None]

    def _deposit_state(self, http: httpx.Client, doc: dict) -> str:
        info = self._miner_get(http, f"/transactions/{doc['deposit_txid']}")
        if info is None:
            answers = self._miner_post_all(http, "/transactions", doc["deposit"])
            if answers and all(400 <= r.status_code < 500 for r in answers):
                raise InvalidInput(f"deposit rejected by the miners: {answers[0].text}")
            info = self._miner_get(http, f"/transactions/{doc['deposit_txid']}")
        return "unknown" if info is None else info["status"]

    def _wait_for_clients(self, stop: threading.Event) -> list[dict]:
        deadline = time.time() + self.client_wait
        while not stop.is_set():
            clients = self.docs.list("clients")
            if len(clients) >= self.min_clients:
                return clients
            if time.time() > deadline:
                raise InvalidInput(f"only {len(clients)} clients registered, need {self.min_clients}")
            time.sleep(0.5)
        return []

    def _train_client(self, http: httpx.Client, client: dict, order: TrainOrder) -> tuple[dict, dict[str, torch.Tensor], int] | None:
        msg = SignedMessage.create(self.identity, TrainOrder.KIND, order.model_dump())
        try:
            r = http.post(f"{client['url'].rstrip('/')}/train", json=msg.model_dump(), timeout=TRAIN_TIMEOUT)
            if r.status_code != 200:
                log.warning("client %s answered %s: %s", client["account"][:12], r.status_code, r.text[:200])
                return None
            body = r.json()
            receipt_msg = SignedMessage.from_dict(body["message"])
            receipt = UpdateReceipt.model_validate(receipt_msg.open(UpdateReceipt.KIND, sender=client["account"]))
            blob = base64.b64decode(body["update_b64"], validate=True)
            if sha256_hex(blob) != receipt.update_hash or receipt.task_id != order.task_id or receipt.round != order.round:
                raise InvalidInput("update does not match its signed receipt")
            return client, unpack_weights(blob), receipt.n_samples
        except (httpx.HTTPError, FedcoinError, ValueError, KeyError) as exc:
            log.warning("client %s failed: %s", client["account"][:12], exc)
            return None

    def _process(self, http: httpx.Client, doc: dict, stop: threading.Event) -> None:
        tid = doc["task_id"]
        if doc["status"] in ("queued", "awaiting-deposit"):
            state = self._deposit_state(http, doc)
            if state == "unknown":
                doc["status"] = "awaiting-deposit"
                self._save(doc)
                time.sleep(1.0)
                return
            doc["deposit_status_at_acceptance"] = state
            doc["status"] = "training"
            doc["accepted_at"] = time.time()
            self._save(doc)
            log.info("task %s accepted (deposit %s)", tid, state)
        X_val, y_val = self.validation()
        self._wait_for_clients(stop)
        rounds = doc["rounds"]
        prices = doc["prices"]
        if doc.get("global_hash"):
            current = unpack_weights(self.get_blob(doc["global_hash"]))
        else:
            current = init_weights(self.hidden, in_features=X_val.shape[1], seed=int(env("MODEL_SEED", "0")))
            doc["global_hash"] = self.put_blob(pack_weights(current))
        shapes = weight_shapes(current)
        for r in range(len(doc["round_results"]), rounds):
            if stop.is_set():
                return
            stid = f"{tid}:r{r}"
            pending = doc.get("pending_round")
            if pending is None or pending["round"] != r:
                clients = self.docs.list("clients")  # every client registered by now takes part in this round
                order_base = dict(task_id=stid, round=r, global_uri=f"{self.url}/blobs/{doc['global_hash']}", global_hash=doc["global_hash"],
                                  iterations=self.iterations, batch_size=self.batch_size, lr=self.lr)
                with ThreadPoolExecutor(max_workers=8) as pool:
                    results = list(pool.map(lambda c: self._train_client(http, c, TrainOrder(client=c["account"], seed=_client_seed(stid, c["account"]), **order_base)), clients))
                got = [x for x in results if x is not None]
                if not got:
                    raise InvalidInput(f"round {r}: no client returned a valid update")
                for _, u, _n in got:
                    validate_update(u, shapes)
                updates = [u for _, u, _ in got]
                ns = [n for _, _, n in got]
                new_global = fedavg(updates, ns, shapes)
                content = pack_task_content(updates, ns, X_val, y_val, current)
                content_hash = self.put_blob(content)
                deposit_confirmed = self._deposit_state(http, doc) == "confirmed"
                task = make_task(
                    self.identity,
                    task_id=stid,
                    round=r,
                    clients=[c["account"] for c, _, _ in got],
                    train_price=_per_round(prices["train"], rounds, r),
                    sap_price=_per_round(prices["sap"], rounds, r),
                    published_at=int(time.time() * 1000),
                    metric=self.metric,
                    empty_value=self._empty_value(current, X_val, y_val),
                    content_hash=content_hash,
                    content_uri=f"{self.url}/blobs/{content_hash}",
                    funding=[] if deposit_confirmed else [Transaction.from_dict(doc["deposit"])],
                )
                pending = {
                    "round": r,
                    "task": task.to_dict(),
                    "new_global_hash": self.put_blob(pack_weights(new_global)),
                    "metrics": evaluate(new_global, X_val, y_val),
                    "n_samples": ns,
                }
                doc["pending_round"] = pending
                self._save(doc)
                log.info("round %d: %d updates aggregated, Shapley task %s published", r, len(got), stid)
            answers = self._miner_post_all(http, "/tasks", pending["task"])
            if not any(a.status_code in (200, 202) for a in answers):
                raise InvalidInput(f"no miner accepted Shapley task {stid}: {[a.text[:200] for a in answers]}")
            settled = self._wait_settled(http, stid, stop)
            if settled is None:
                return
            settled = self._wait_agreement(http, stid, settled)
            block = self._miner_get(http, f"/blocks/{settled['height']}")
            payments = {}
            for tx in (block or {}).get("body", {}).get("transactions", []):
                if tx["kind"] in ("reward", "payout") and tx["memo"] == stid:
                    payments.setdefault(tx["kind"], []).append({"to": tx["recipient"], "amount": tx["amount"]})
            doc["round_results"].append(
                {
                    "round": r,
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
            current = unpack_weights(self.get_blob(doc["global_hash"]))
            doc.pop("pending_round", None)
            self._save(doc)
            log.info("round %d settled in block %d", r, settled["height"])
        doc["status"] = "done"
        doc["model_hash"] = doc["global_hash"]
        doc["finished_at"] = time.time()
        self._save(doc)

    def _empty_value(self, start: dict[str, torch.Tensor], X_val: torch.Tensor, y_val: torch.Tensor) -> float:
        if self.empty_value != "global":
            return float(self.empty_value)
        m = evaluate(start, X_val, y_val)
        return -m["loss"] if self.metric == "neg_loss" else m["accuracy"]

    def _wait_agreement(self, http: httpx.Client, stid: str, first: dict, timeout: float = 60.0) -> dict:
        """Wait until every reachable miner settles ``stid`` in the same block, so the record
        names the block the network kept (a competing block may win the tie-break first)."""
        deadline = time.time() + timeout
        while True:
            answers = []
            for m in self.miners:
                try:
                    r = http.get(f"{m}/tasks/{stid}", timeout=HTTP_TIMEOUT)
                    if r.status_code == 200:
                        answers.append(r.json())
                except httpx.HTTPError:
                    continue
            blocks = {a.get("block_hash") for a in answers}
            if answers and len(blocks) == 1 and all(a.get("settled") for a in answers):
                return answers[0]
            if time.time() > deadline:
                log.warning("miners still disagree on the block settling %s; recording the first seen", stid)
                return answers[0] if answers and answers[0].get("settled") else first
            time.sleep(1.0)

    def _wait_settled(self, http: httpx.Client, stid: str, stop: threading.Event) -> dict | None:
        deadline = time.time() + self.settle_timeout
        while not stop.is_set():
            info = self._miner_get(http, f"/tasks/{stid}")
            if info and info.get("settled"):
                return info
            if time.time() > deadline:
                raise InvalidInput(f"Shapley task {stid} not settled within {self.settle_timeout:.0f} s")
            time.sleep(0.5)
        return None


def create_app() -> FastAPI:
    ddir, identity = start_node("server")
    load_genesis()  # fail fast on a missing or malformed genesis
    server = FLServer(identity, ddir, env_list("MINERS"), env("ADVERTISE_URL", "http://127.0.0.1:8001"))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        stop = threading.Event()
        worker = threading.Thread(target=server.run, args=(stop,), name="fl-server", daemon=True)
        worker.start()
        try:
            yield
        finally:
            stop.set()
            server.wake.set()
            worker.join(timeout=10)

    app = FastAPI(title="FedCoin FL server", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)
    app.state.server = server

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "role": "server", "account": identity.account}

    @app.get("/info")
    def info() -> dict:
        return {"account": identity.account, "miners": server.miners, "clients": len(server.docs.list("clients"))}

    @app.post("/clients", status_code=201)
    def register(body: dict) -> dict:
        return server.register_client(SignedMessage.from_dict(body))

    @app.get("/clients")
    def clients() -> list[dict]:
        return server.docs.list("clients")

    @app.post("/tasks", status_code=202)
    def submit(body: dict) -> dict:
        """A requester's signed training request with its deposit transaction."""
        return server.submit(SignedMessage.from_dict(body))

    @app.get("/tasks")
    def tasks() -> list[dict]:
        return [{k: d[k] for k in ("task_id", "status", "budget", "rounds")} for d in server.docs.list("tasks")]

    @app.get("/tasks/{task_id}")
    def task(task_id: str) -> dict:
        doc = server.task(task_id)
        if doc is None:
            raise HTTPException(404, "unknown task")
        return doc

    @app.get("/tasks/{task_id}/model")
    def model(task_id: str) -> Response:
        doc = server.task(task_id)
        if doc is None:
            raise HTTPException(404, "unknown task")
        if doc["status"] != "done":
            raise HTTPException(409, f"task is {doc['status']}; the model is ready when it is done")
        return Response(server.get_blob(doc["model_hash"]), media_type="application/octet-stream",
                        headers={"X-Content-SHA256": doc["model_hash"]})

    @app.get("/blobs/{content_hash}")
    def blob(content_hash: str) -> Response:
        data = server.get_blob(content_hash)
        if data is None:
            raise HTTPException(404, "unknown content")
        return Response(data, media_type="application/octet-stream")

    return app
