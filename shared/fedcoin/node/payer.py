"""Pay the clients of an FL loop that is not FedCoin's own (a Flower server, say) by Shapley value.

:class:`RoundPayer` is the FL server's settlement path without its training: the
requester's deposit of V to the server (held in escrow on chain), then per round a
Shapley task signed by the server (Algorithm 3's prices for the round, the round's
client updates and the validation set as its content, the deposit as its funding),
published to the miners, and the block that settles it: S̄ and the payments, as the
FL server records them (:class:`fedcoin.api.RoundResult`).

Updates come with each client's signed :class:`~fedcoin.node.messages.UpdateReceipt`
(``fedcoin.node.payer.sign_update``, run on the client with its own key): a round pays
the account that signed an update, and only for the update it signed.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import torch

from fedcoin.api import RoundResult
from fedcoin.chain.encoding import sha256_hex
from fedcoin.chain.identity import Identity
from fedcoin.chain.transactions import make_transaction
from fedcoin.client import MinerClient
from fedcoin.errors import FedcoinError, InvalidInput, Unavailable
from fedcoin.fl.content import pack_task_content, pack_weights
from fedcoin.fl.fedavg import fedavg, validate_update
from fedcoin.fl.model import Update, evaluate, weight_shapes

from .messages import SignedMessage, UpdateReceipt
from .peers import HttpMinerGateway
from .rounds import Settlement, round_task

log = logging.getLogger("fedcoin.payer")


def update_hash(update: Mapping[str, torch.Tensor]) -> str:
    """The hash a client signs for its update (of :func:`fedcoin.fl.content.pack_weights`'s bytes)."""
    return sha256_hex(pack_weights(update))


def sign_update(
    identity: Identity, task_id: str, round: int, update: Mapping[str, torch.Tensor], n_samples: int
) -> str:
    """A client's signed receipt for its update of Shapley task ``task_id`` (``<training task>:r<round>``),
    as JSON text: what :meth:`RoundPayer.settle` needs to pay ``identity``'s account for it."""
    receipt = UpdateReceipt(task_id=task_id, round=round, n_samples=n_samples, update_hash=update_hash(update))
    return json.dumps(receipt.sign(identity).to_dict())


@dataclass
class SignedUpdate:
    """One client's update for a round and its signed receipt (JSON text from :func:`sign_update`)."""

    update: Update
    receipt: str


class RoundPayer:
    """The FedCoin side of ``rounds`` FL rounds paid from a budget V (see the module docstring).

    ``server`` must be an FL server the chain's genesis admits, ``requester`` an account
    holding V; ``miners`` are base URLs. The validation set (``X_val``, ``y_val``) and
    ``metric`` define the Shapley utility the miners compute.
    """

    def __init__(
        self,
        *,
        server: Identity,
        requester: Identity,
        miners: Sequence[str],
        budget: int,
        rounds: int,
        X_val: torch.Tensor,
        y_val: torch.Tensor,
        metric: str = "accuracy",
        ratio: tuple[int, int, int] = (7, 1, 2),
        task_id: str | None = None,
        settle_timeout: float = 600.0,
        http: httpx.Client | None = None,
    ) -> None:
        if not miners:
            raise InvalidInput("a RoundPayer needs at least one miner URL")
        if metric not in ("accuracy", "neg_loss"):
            raise InvalidInput(f"metric must be accuracy or neg_loss, got {metric!r}")
        self.server, self.requester = server, requester
        self.X_val, self.y_val, self.metric = X_val, y_val, metric
        self.task_id = task_id or f"fl-{uuid.uuid4().hex[:12]}"
        self._http = http or httpx.Client()
        self.miners = HttpMinerGateway(list(miners), self._http)
        self.settlement = Settlement(self.miners, settle_timeout)
        self._nonce: int | None = None
        self.doc: dict[str, Any] = {
            "task_id": self.task_id,
            "requester": requester.account,
            "budget": budget,
            "rounds": rounds,
            "ratio": list(ratio),
        }
        self.results: list[RoundResult] = []

    def close(self) -> None:
        self._http.close()

    # --- the deposit ---------------------------------------------------------------------------
    def deposit(self) -> str:
        """Sign the requester's deposit of V to the server and hand it to the miners (once); its txid."""
        if "deposit_txid" in self.doc:
            return str(self.doc["deposit_txid"])
        nonce = self._requester_nonce()
        tx = make_transaction(self.requester, self.server.account, self.doc["budget"], nonce, "deposit", self.task_id)
        answers = self.miners.post_all("/transactions", tx.to_dict())
        if not any(status in (200, 202) for status, _ in answers):
            raise Unavailable(f"no miner took the deposit: {[text[:200] for _, text in answers] or 'none reachable'}")
        self.doc.update(deposit=tx.to_dict(), deposit_txid=tx.txid)
        log.info("task %s: deposit %s of %d sent", self.task_id, tx.txid[:16], tx.amount)
        return tx.txid

    def _requester_nonce(self) -> int:
        """The requester's next nonce, from the first miner that answers; InvalidInput if it cannot pay V."""
        account = self.requester.account
        for url in self.miners.miners:
            try:
                with MinerClient(url, client=self._http) as miner:
                    balance = miner.balance(account).balance
                    if balance < self.doc["budget"]:
                        raise InvalidInput(f"the requester holds {balance}, less than the budget {self.doc['budget']}")
                    return miner.next_nonce(account)
            except Unavailable as exc:
                log.warning("miner %s: %s", url, exc)
        raise Unavailable("no miner answered the requester's balance")

    # --- a round -------------------------------------------------------------------------------
    def check(self, r: int, signed: Sequence[SignedUpdate], shapes: Mapping[str, tuple[int, ...]]) -> list[Any]:
        """The updates of round ``r`` whose receipts verify: (account, update, n_samples) in arrival order,
        one per account; the others are logged and left out (they are not paid)."""
        stid = f"{self.task_id}:r{r}"
        kept: list[Any] = []
        seen: set[str] = set()
        for s in signed:
            try:
                msg = SignedMessage.from_dict(json.loads(s.receipt))
                receipt = UpdateReceipt.open(msg)
                if receipt.task_id != stid or receipt.round != r:
                    raise InvalidInput(f"the receipt is for {receipt.task_id}, not {stid}")
                validate_update(s.update, shapes)
                if update_hash(s.update) != receipt.update_hash:
                    raise InvalidInput("the update is not the one its receipt signs")
                if msg.sender in seen:
                    raise InvalidInput("a second update from the same account")
            except (FedcoinError, ValueError, TypeError) as exc:
                log.warning("round %d: update left out: %s", r, exc)
                continue
            seen.add(msg.sender)
            kept.append((msg.sender, s.update, receipt.n_samples))
        return kept

    def settle(
        self,
        r: int,
        signed: Sequence[SignedUpdate],
        global_weights: Update,
        stop: threading.Event | None = None,
    ) -> RoundResult:
        """Publish round ``r``'s Shapley task for the verified updates and wait for the block that settles
        it; the round's result (also appended to :attr:`results`)."""
        if not 0 <= r < self.doc["rounds"]:
            raise InvalidInput(f"round {r} is not one of the task's {self.doc['rounds']} rounds")
        self.deposit()
        kept = self.check(r, signed, weight_shapes(global_weights))
        if not kept:
            raise InvalidInput(f"round {r}: no update with a valid receipt")
        accounts = [a for a, _, _ in kept]
        updates = [u for _, u, _ in kept]
        ns = [n for _, _, n in kept]
        content = pack_task_content(updates, ns, self.X_val, self.y_val, global_weights)
        confirmed = self.settlement.deposit_state(self.doc) == "confirmed"
        task = round_task(
            self.server,
            self.doc,
            r,
            accounts,
            sha256_hex(content),
            metric=self.metric,
            empty_value=0.0,
            deposit_confirmed=confirmed,
        )
        body = {**task.to_dict(), "content_b64": base64.b64encode(content).decode("ascii")}
        settled = self.settlement.publish_and_settle({"task": body}, stop or threading.Event())
        if settled is None:
            raise Unavailable(f"stopped before Shapley task {task.task_id} was settled")
        new_global = fedavg(updates, ns, weight_shapes(global_weights))
        result = RoundResult(
            round=r,
            shapley_task_id=task.task_id,
            clients=accounts,
            n_samples=ns,
            block_height=settled["height"],
            block_hash=settled["block_hash"],
            winner=settled["winner"],
            shapley=settled["s_avg"],
            payments=self.settlement.payments(task.task_id, settled["height"]),
            metrics=evaluate(new_global, self.X_val, self.y_val),
        )
        self.results.append(result)
        log.info("round %d of %s settled in block %d", r, self.task_id, result.block_height)
        return result
