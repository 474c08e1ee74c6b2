"""The payment scheme of Algorithm 3, in integer base units.

Budget split (the division contract)
    ``split_budget(V, (t, c, s))`` gives TrainPrice = floor(V·t / (t+c+s)),
    SapPrice = floor(V·s / (t+c+s)) and ComPrice = V − TrainPrice − SapPrice,
    so the rounding remainder (< 2 base units) goes to the FL server, as the
    paper leaves "ComPrice = V − TrainPrice − SapPrice" to the server.
    Default ratio 7:1:2.

Client rewards
    ``reward_allocation(S, TrainPrice)``: clients with S_i > 0 share
    TrainPrice in proportion to S_i (Algorithm 3, line 11). Shares are
    computed exactly (``fractions.Fraction`` of the IEEE doubles, so every
    platform agrees), each client first gets floor(share), and the remaining
    units go one each to the clients with the largest fractional parts, ties
    broken by the lower client index (the largest-remainder method). The
    amounts therefore sum to exactly TrainPrice whenever some S_i > 0; clients
    with S_i ≤ 0 get nothing, and a client whose amount rounds to 0 gets no
    transaction. When no S_i is positive nothing is paid to clients and the
    winner keeps TrainPrice with SapPrice.

Rounds
    ``round_prices(V, ratio, rounds, r)``: a task for round ``r`` of a deposit
    of V pays (TrainPrice, ComPrice, SapPrice) = each share of
    ``split_budget(V, ratio)`` divided equally over the rounds, the remainder
    in the last round, so the rounds together pay exactly V.

Settlement
    ``settlement_transactions(task, winner, S̄)``: the exact transactions a
    block that settles ``task`` must end with (VerifyBlock checks them, block
    building creates them): the payout from the task's payer (the deposit's
    escrow, or the server), for a deposit's task the round's ComPrice released
    to the server (``commission``), then the rewards.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

from fedcoin.chain.tasks import ShapleyTask
from fedcoin.chain.transactions import MAX_AMOUNT, TxKind
from fedcoin.errors import InvalidInput

DEFAULT_RATIO = (7, 1, 2)


def _check_amount(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0 or value > MAX_AMOUNT:
        raise InvalidInput(f"{what} must be an integer number of base units in [0, 2^63), got {value!r}")
    return value


def split_budget(budget: int, ratio: Sequence[int] = DEFAULT_RATIO) -> tuple[int, int, int]:
    """Split V into (TrainPrice, ComPrice, SapPrice) by the contract ``ratio``."""
    _check_amount(budget, "budget V")
    if len(ratio) != 3 or any(not isinstance(r, int) or isinstance(r, bool) or r < 0 for r in ratio):
        raise InvalidInput(f"ratio must be three non-negative integers TrainPrice:ComPrice:SapPrice, got {ratio!r}")
    total = sum(ratio)
    if total == 0:
        raise InvalidInput("ratio must not be all zeros")
    train = budget * ratio[0] // total
    sap = budget * ratio[2] // total
    return train, budget - train - sap, sap


def per_round(total: int, rounds: int, r: int) -> int:
    """Equal shares per round; the remainder goes to the last round."""
    if not isinstance(rounds, int) or rounds < 1 or not isinstance(r, int) or not 0 <= r < rounds:
        raise InvalidInput(f"round {r!r} is not one of {rounds!r} rounds")
    base = total // rounds
    return base + (total - base * rounds if r == rounds - 1 else 0)


def round_prices(budget: int, ratio: Sequence[int], rounds: int, r: int) -> tuple[int, int, int]:
    """(TrainPrice, ComPrice, SapPrice) of round ``r`` of a budget V split by ``ratio`` over ``rounds``."""
    train, com, sap = split_budget(budget, tuple(ratio))
    return per_round(train, rounds, r), per_round(com, rounds, r), per_round(sap, rounds, r)


def reward_allocation(shapley: Sequence[float], train_price: int) -> list[tuple[int, int]]:
    """(client index, amount) pairs paying TrainPrice to the clients with S_i > 0.

    Sorted by client index; only amounts > 0 are listed.
    """
    _check_amount(train_price, "TrainPrice")
    values = []
    for i, s in enumerate(shapley):
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
            raise InvalidInput(f"Shapley value {i} is not a finite number: {s!r}")
        values.append(Fraction(s))
    positive = [(i, v) for i, v in enumerate(values) if v > 0]
    if not positive or train_price == 0:
        return []
    total = sum(v for _, v in positive)
    shares = [(i, v * train_price / total) for i, v in positive]
    floors = {i: math.floor(share) for i, share in shares}
    remainder = train_price - sum(floors.values())
    by_fraction = sorted(shares, key=lambda item: (-(item[1] - floors[item[0]]), item[0]))
    for i, _ in by_fraction[:remainder]:
        floors[i] += 1
    return [(i, floors[i]) for i, _ in positive if floors[i] > 0]


def settlement_transactions(task: ShapleyTask, winner: str, s_avg: Sequence[float]) -> list[tuple[TxKind, str, int]]:
    """Algorithm 3 for one block: (kind, recipient, amount) as the body must end.

    First the payout of TrainPrice + SapPrice to the winner (when positive),
    from ``task.payer``; for a task that names a deposit, the round's ComPrice
    to the server (when positive); then the winner's rewards to the clients
    with S̄_i > 0, by increasing client index, amounts by
    :func:`reward_allocation`. The payer of ``payout`` and ``commission`` is
    ``task.payer``; of ``reward``, the winner.
    """
    out: list[tuple[TxKind, str, int]] = []
    if task.train_price + task.sap_price > 0:
        out.append(("payout", winner, task.train_price + task.sap_price))
    if task.deposit is not None and task.round < task.rounds:  # (a later round is rejected by check_prices)
        _train, com, _sap = round_prices(task.budget, task.ratio, task.rounds, task.round)
        if com > 0:
            out.append(("commission", task.server, com))
    for i, amount in reward_allocation(s_avg, task.train_price):
        out.append(("reward", task.clients[i], amount))
    return out
