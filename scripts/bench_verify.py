#!/usr/bin/env python
"""Benchmark verifiable Proof of Shapley on the paper's round: what a block costs to check.

Setting (as ``scripts/paper``): K = 100 clients of 10 quality types, the
784-200-10 MLP after one FedAvg round, the FL server's 1,000 validation images,
accuracy utility (the services' default metric), v(∅) = 0, the Shapley engine
on the CPU at one thread (as a miner service runs it).

Measured, in one process:

1. **Mining**: an honest winner runs ``--iterations`` permutations on the
   engine (its work log), builds the block with one other miner's signed
   report, and the cost of mining is that wall time (median seconds per
   permutation × iterations; the total is printed too).
2. **Verification** for k = 8, 16, 32 sampled leaves: a fresh node runs
   VerifyBlock (structural rules: work root, exact mean, efficiency, reports,
   S̄, settlement) and then the WorkVerifier's recomputation; time as a share
   of the mining time (median of ``--repeats`` verifiers with different keys).
   Since verification costs ≈ k permutations plus O(iterations) hashing and
   the mining cost grows with iterations, the share is also given for the
   paper round's measured block size at D = 1e-2 (``--paper-iterations``,
   ~2,400 iterations, docs/results Figure 6) from the same per-permutation and
   per-leaf timings.
3. **Sizes**: the block's JSON, its work log, its reports, and one fraud proof.
4. **Fabricated leaves**: for f = 0.01, 0.1, 1 a block whose fraction f of
   leaves are fabricated (values permuted within the leaf, so the row sum and
   efficiency hold and only recomputation can tell); the probability that one
   verifier accepts it, and that none of 4 verifiers rejects it (every
   rejection carries a fraud proof that convinces the rest): exact
   (hypergeometric) and observed over ``--trials`` verifier keys (the sampled
   indices; every sampled fabricated leaf is detected, which is checked by
   running the real recomputation for a few of them).

Data: Fashion-MNIST from /usr/share/datasets/fashion-mnist by default; the
paper's MNIST with ``--dataset mnist --data-dir DIR``.

Run: python scripts/bench_verify.py [--json PATH] [--dataset mnist --data-dir DIR] [--quick]
"""

from __future__ import annotations

import argparse
import importlib
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fedcoin.chain.clock import now_ms
from fedcoin.chain.encoding import sha256_hex
from fedcoin.chain.genesis import ChainParams, GenesisConfig
from fedcoin.chain.identity import Identity
from fedcoin.chain.reports import make_report
from fedcoin.chain.tasks import make_task
from fedcoin.chain.work import WorkLog
from fedcoin.consensus.mining import build_block
from fedcoin.consensus.posap import PoSapMiner
from fedcoin.consensus.proofs import BadLeaf, WorkVerifier
from fedcoin.fl.content import pack_task_content, unpack_task_content
from fedcoin.ledger.chain import Chain
from fedcoin.valuation.engine import engine_for

# the paper scripts' round (data, partition, FedAvg) and their JSON helpers
sys.path.insert(0, str(Path(__file__).resolve().parent / "paper"))
common = importlib.import_module("common")
EMPTY_VALUE, NUM_CLIENTS = common.EMPTY_VALUE, common.NUM_CLIENTS
fedavg, load_data, log, machine, partition, write_json = (
    common.fedavg,
    common.load_data,
    common.log,
    common.machine,
    common.partition,
    common.write_json,
)

KS = (8, 16, 32)
FRACTIONS = (0.01, 0.1, 1.0)
VERIFIERS = 4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--iterations", type=int, default=400, help="permutations the honest winner mines")
    p.add_argument("--paper-iterations", type=int, default=2400, help="block size at D=1e-2 (Figure 6)")
    p.add_argument("--repeats", type=int, default=5, help="verifiers (keys) timed per k")
    p.add_argument("--trials", type=int, default=2000, help="verifier keys drawn per fraction f")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--quick", action="store_true", help="100 iterations, 3 repeats, 500 trials")
    args = p.parse_args(argv)
    if args.quick:
        args.iterations, args.repeats, args.trials = 100, 3, 500
    return args


def exact_accept(n: int, bad: set[int], k: int, targeted: set[int]) -> float:
    """P(one verifier accepts): its k samples are the ``targeted`` leaves plus k − |targeted| distinct
    uniform picks among the other n − |targeted|, and all of them avoid the ``bad`` leaves."""
    k = min(k, n)
    if bad & targeted:
        return 0.0
    rest, picks = n - len(targeted), k - len(targeted)
    if rest - len(bad) < picks:
        return 0.0
    return math.comb(rest - len(bad), picks) / math.comb(rest, picks)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    data = load_data(args.dataset, args.data_dir)
    _part, clients = partition(data, args.seed)
    rnd = fedavg(clients, 1, args.seed, data).rounds[0]
    content = pack_task_content(rnd.updates, rnd.n_samples, data["X_val"], data["y_val"], rnd.global_before)
    chash = sha256_hex(content)
    engine = engine_for(
        unpack_task_content(content, chash, NUM_CLIENTS), metric="accuracy", empty_value=EMPTY_VALUE, device="cpu"
    )
    log(f"round trained and engine built in {time.perf_counter() - t0:.1f} s")

    server, winner, peer = (Identity.from_seed(bytes([b]) * 32) for b in (1, 2, 3))
    clients_ids = [Identity.from_seed(bytes([0x40 + k % 64, k // 64]) * 16) for k in range(NUM_CLIENTS)]
    start = now_ms()
    genesis = GenesisConfig(
        params=ChainParams(
            chain_id="bench-verify",
            initial_difficulty=1.0,
            servers=[server.account],
            miners=[winner.account, peer.account],
        ),
        allocations={server.account: 10**9},
        timestamp=start - 10_000,
    )
    task = make_task(
        server,
        task_id="bench:r0",
        round=0,
        clients=[c.account for c in clients_ids],
        train_price=700_000,
        sap_price=200_000,
        published_at=start - 5_000,
        metric="accuracy",
        empty_value=EMPTY_VALUE,
        content_hash=chash,
    )
    base = Chain(genesis)

    # 1. mining
    miner = PoSapMiner(
        miner=winner.account,
        task_id=task.task_id,
        prev_hash=base.head,
        n_players=NUM_CLIENTS,
        marginals=engine.marginals,
        difficulty=1.0,
    )
    per_perm = []
    t_mine = time.perf_counter()
    for _ in range(args.iterations):
        t = time.perf_counter()
        miner.step(1)
        per_perm.append(time.perf_counter() - t)
    mining_s = time.perf_counter() - t_mine
    s_perm = statistics.median(per_perm)
    other = make_report(
        peer,
        task_id=task.task_id,
        prev_hash=base.head,
        shapley=list(miner.shapley),
        iterations=args.iterations,
        timestamp=now_ms(),
    )
    t_build = time.perf_counter()
    block = build_block(base, task=task, winner=winner, leaves=miner.leaves(), reports=[other])
    build_s = time.perf_counter() - t_build
    log(
        f"mined {args.iterations} permutations in {mining_s:.1f} s "
        f"({s_perm * 1000:.1f} ms median), built in {build_s:.2f} s"
    )

    # 2. verification
    verification = {}
    structural = []
    for k in KS:
        times, recompute = [], []
        for r in range(args.repeats):
            verifier = WorkVerifier(_engine_fn(engine), samples=k, identity=Identity.from_seed(bytes([k, r]) * 16))
            node = Chain(genesis)
            t = time.perf_counter()
            node.verify(block)  # the rules, no recomputation
            t_struct = time.perf_counter() - t
            verifier.verify(block, genesis.params)
            total = time.perf_counter() - t
            times.append(total)
            structural.append(t_struct)
            recompute.append(total - t_struct)
        med = statistics.median(times)
        med_rec = statistics.median(recompute)
        struct_med = statistics.median(structural)
        per_leaf_struct = struct_med / args.iterations
        paper_mining = s_perm * args.paper_iterations
        paper_verify = med_rec + per_leaf_struct * args.paper_iterations
        verification[str(k)] = {
            "verify_s_median": med,
            "recompute_s_median": med_rec,
            "share_of_mining": med / mining_s,
            "paper_block_share_of_mining": paper_verify / paper_mining,
        }
        log(
            f"k={k}: verify {med * 1000:.0f} ms = {100 * med / mining_s:.2f}% of mining this block; "
            f"{100 * paper_verify / paper_mining:.2f}% for a {args.paper_iterations}-iteration block"
        )

    # 3. sizes
    bad_block = _fabricate(base, task, winner, miner.leaves(), [other], [0])
    try:
        WorkVerifier(_engine_fn(engine), samples=args.iterations).verify(bad_block, genesis.params)
        raise SystemExit("a fabricated leaf went undetected by a verifier that checks every leaf")
    except BadLeaf as exc:
        proof = exc.proof
    work = block.body.work
    assert work is not None
    sizes = {
        "block_json_bytes": len(block.to_json()),
        "work_log_json_bytes": len(work.model_dump_json()),
        "work_log_bytes_per_iteration": len(work.model_dump_json()) / args.iterations,
        "reports_json_bytes": sum(len(r.model_dump_json()) for r in block.body.reports),
        "fraud_proof_json_bytes": len(proof.model_dump_json()),
    }
    log(f"sizes: {sizes}")

    # 4. fabricated leaves
    n = args.iterations
    honest = miner.leaves()
    dev = np.sort(np.sqrt(((honest - np.asarray(block.header.s_winner)) ** 2).sum(axis=1)))[::-1]
    # a fabricated leaf escapes the targeted samples only within the (k//2)-th largest distance r_k of
    # S_winner; replacing an honest leaf (within r_max) it moves the mean by at most (r_k + r_max)/N
    influence = {
        str(k): {
            "escape_radius_l2": float(dev[k // 2 - 1]),
            "max_leaf_distance_l2": float(dev[0]),
            "mean_shift_bound_per_fraction_l2": float(dev[k // 2 - 1] + dev[0]),
        }
        for k in KS
    }
    log(
        f"influence bound (shift of S per fraction f of escaping leaves, L2; D is {block.header.difficulty}): "
        + ", ".join(f"k={k}: {v['mean_shift_bound_per_fraction_l2']:.3f}" for k, v in influence.items())
    )
    rng = np.random.default_rng(args.seed)
    fabricated = {}
    for f in FRACTIONS:
        bad = max(1, round(f * n))
        bad_idx = sorted(rng.choice(n, size=bad, replace=False).tolist())
        forged = _fabricate(base, task, winner, miner.leaves(), [other], bad_idx)
        bad_set = set(bad_idx)
        row: dict[str, object] = {"fabricated_leaves": bad}
        for k in KS:
            probe = [
                set(
                    WorkVerifier(
                        _engine_fn(engine), samples=k, identity=Identity.from_seed(bytes([7, j]) * 16)
                    ).indices(forged)
                )
                for j in range(8)
            ]
            targeted = set.intersection(*probe)
            accepted = 0
            for trial in range(args.trials):
                v = WorkVerifier(
                    _engine_fn(engine), samples=k, identity=Identity.from_seed(trial.to_bytes(4, "big") * 8)
                )
                if not bad_set & set(v.indices(forged)):
                    accepted += 1
            detected = 0
            for trial in range(3):  # the real recomputation catches what the sample hits
                v = WorkVerifier(_engine_fn(engine), samples=k, identity=Identity.from_seed(bytes([99, trial]) * 16))
                hit = bool(bad_set & set(v.indices(forged)))
                try:
                    v.verify(forged, genesis.params)
                    caught = False
                except BadLeaf:
                    caught = True
                if hit != caught:
                    raise SystemExit(f"f={f} k={k}: sampled a bad leaf={hit} but rejected={caught}")
                detected += caught
            p1 = exact_accept(n, bad_set, k, targeted)
            row[str(k)] = {
                "targeted_leaves_fabricated": len(bad_set & targeted),
                "accept_one_exact": p1,
                "accept_one_observed": accepted / args.trials,
                f"accept_all_{VERIFIERS}_exact": p1**VERIFIERS,
            }
        fabricated[str(f)] = row
        log(f"f={f}: {row}")

    doc = {
        "setting": {
            "dataset": data["name"],
            "clients": NUM_CLIENTS,
            "metric": "accuracy",
            "iterations": args.iterations,
            "paper_iterations": args.paper_iterations,
            "repeats": args.repeats,
            "trials": args.trials,
            "torch_threads": 1,
        },
        "mining": {"seconds": mining_s, "s_per_permutation_median": s_perm, "build_block_s": build_s},
        "verification": verification,
        "sizes": sizes,
        "fabricated": fabricated,
        "influence": influence,
        "machine": machine(),
    }
    if args.json is not None:
        write_json(args.json, doc)
        log(f"wrote {args.json}")
    return 0


def _engine_fn(engine):
    return lambda _task: engine.marginals


def _fabricate(chain, task, winner, leaves, reports, bad_idx):
    """A block whose leaves at ``bad_idx`` have their values rotated: same sums, wrong marginals."""
    forged = np.array(leaves, copy=True)
    for i in bad_idx:
        forged[i] = np.roll(forged[i], 1)
        if np.array_equal(forged[i], leaves[i]):
            forged[i, 0] += 0.5
            forged[i, 1] -= 0.5
    block = build_block(chain, task=task, winner=winner, leaves=forged, reports=reports)
    assert isinstance(block.body.work, WorkLog)
    return block


if __name__ == "__main__":
    sys.exit(main())
