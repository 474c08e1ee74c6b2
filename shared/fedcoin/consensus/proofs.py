"""Checking the work a block claims: sampled recomputation and fraud proofs.

:func:`fedcoin.consensus.rules.check_work` checks what needs no computation:
the work log matches its root and leaf count, S_winner is the leaves' exact
mean and every leaf sums to one v(N) − v(∅). What it cannot check is that the
leaves are the marginals of their permutations. :class:`WorkVerifier` does: it
recomputes ``samples`` leaves of every block it is shown (their permutations
re-derived with the chain's ``sampler``) and compares them with the log (within
the chain's ``work_tolerance``, which absorbs float32 differences between CPU
and GPU evaluation).

Which leaves? Half of the samples (rounded down) go to the most influential
leaves: those farthest (L2) from S_winner, ties to the lower index. A leaf
fabricated to pull the mean far must lie far from it, so it is checked for
sure; any fabricated leaf that escapes lies no farther from S_winner than the
⌊samples/2⌋-th farthest leaf of the log, which bounds what each can move the
mean, whatever the utility's range. The other half are the verifier's secret:
drawn from the remaining leaves by ``SHA-256(secret || block hash)``, where a
node's secret is its Ed25519 signature of the block hash (deterministic, so a
restarted node samples the same leaves, and unpredictable to anyone without
the node's key). A miner cannot grind a block against that randomness:
re-signing with another timestamp gives a new hash and fresh samples at every
verifier. A miner that fabricates a fraction f of its (non-extreme) leaves is
caught by one verifier with probability about 1 − (1 − f)^(samples/2) and by
some of V honest verifiers with about 1 − (1 − f)^(samples·V/2).

Honest verifiers can disagree (one sampled a fabricated leaf, another did
not), so a verifier that finds a bad leaf raises :class:`BadLeaf` carrying a
:class:`FraudProof`: the signed header, the task, the leaf index, the logged
leaf and its Merkle path. Any node checks a proof with one recomputation
(:meth:`WorkVerifier.check_proof`) and then rejects the block and everything
built on it, so all honest nodes converge on rejecting it.
"""

from __future__ import annotations

import hashlib
import random
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from fedcoin.chain.blocks import Block, BlockHeader
from fedcoin.chain.encoding import tagged
from fedcoin.chain.fields import FiniteFloat, LedgerModel, Sha256Hex
from fedcoin.chain.genesis import ChainParams
from fedcoin.chain.identity import Identity, verify_signature
from fedcoin.chain.merkle import verify_merkle_path
from fedcoin.chain.tasks import ShapleyTask
from fedcoin.chain.work import leaf_hash
from fedcoin.errors import InvalidBlock, InvalidInput, InvalidSignature, Reason

from .posap import Sampler, derive_permutation

SAMPLE_DOMAIN = "fedcoin/verify-sample/v1"
DEFAULT_SAMPLES = 16
MarginalFn = Callable[[Sequence[int]], Any]


class FraudProof(LedgerModel):
    """Leaf ``index`` of the block whose header this is is not the marginal vector of its permutation."""

    what: ClassVar[str] = "fraud proof"

    header: BlockHeader
    task: ShapleyTask
    index: int = Field(ge=0)
    leaf: list[FiniteFloat] = Field(max_length=4096)
    path: list[Sha256Hex] = Field(max_length=64)

    @property
    def block_hash(self) -> str:
        return self.header.hash


def fraud_key(header: BlockHeader) -> str:
    """What a fraud proof condemns besides the block's hash: its work log on its parent and task, by
    its winner. A re-signed copy (another timestamp, so another hash and fresh samples everywhere) of a
    condemned log is refused at once instead of being sampled again."""
    return hashlib.sha256(
        tagged("fedcoin/fraud-key/v1", [header.prev_hash, header.task_hash, header.winner, header.work_root])
    ).hexdigest()


class BadLeaf(InvalidBlock):
    """A recomputed leaf differs from the work log; ``proof`` convinces any other node."""

    def __init__(self, proof: FraudProof, message: str) -> None:
        super().__init__(Reason.BAD_LEAF, message)
        self.proof = proof

    def __reduce__(self) -> tuple[Any, ...]:
        return (BadLeaf, (self.proof, self.message))


def leaf_error(
    header: BlockHeader, task: ShapleyTask, index: int, leaf: np.ndarray, marginals: MarginalFn, *, sampler: Sampler
) -> float:
    """The largest |recomputed − logged| value of leaf ``index``, its permutation re-derived with the
    chain's ``sampler``."""
    perm = derive_permutation(header.prev_hash, header.task_id, header.winner, index, task.n_players, sampler=sampler)
    recomputed = np.asarray(marginals(perm), dtype=np.float64)
    if recomputed.shape != leaf.shape:
        raise InvalidInput(f"marginals have shape {recomputed.shape}, the leaf {leaf.shape}")
    return float(np.max(np.abs(recomputed - leaf)))


class WorkVerifier:
    """Recompute ``samples`` secretly chosen leaves of each block; remembers the blocks it passed.

    ``marginals_for(task)`` gives the task's marginal function (the miner's
    Shapley engine for the task's content); ``identity`` keys the sampling
    (a random key when None).
    """

    CACHE = 4096

    def __init__(
        self,
        marginals_for: Callable[[ShapleyTask], MarginalFn],
        *,
        samples: int = DEFAULT_SAMPLES,
        identity: Identity | None = None,
    ) -> None:
        if not isinstance(samples, int) or samples < 0:
            raise InvalidInput("samples must be a non-negative integer")
        self.marginals_for = marginals_for
        self.samples = samples
        self._identity = identity or Identity.generate()
        self._passed: OrderedDict[str, None] = OrderedDict()
        self.recomputed = 0  # leaves recomputed so far (for metrics and benchmarks)

    def indices(self, block: Block, leaves: np.ndarray | None = None) -> list[int]:
        """The leaves this node checks in ``block`` (distinct, sorted): the ⌊samples/2⌋ farthest from
        S_winner, then secretly drawn ones. ``leaves``: the block's decoded work log, if at hand."""
        n = block.header.iterations
        k = min(self.samples, n)
        targeted: list[int] = []
        work = block.body.work
        if leaves is None and work is not None:
            leaves = work.leaves()
        if leaves is not None and leaves.shape == (n, len(block.header.s_winner)):
            dev = ((leaves - np.asarray(block.header.s_winner)) ** 2).sum(axis=1)
            targeted = [int(i) for i in np.argsort(-dev, kind="stable")[: k // 2]]
        chosen = set(targeted)
        secret = self._identity.sign(tagged(SAMPLE_DOMAIN, block.hash))
        rng = random.Random(hashlib.sha256(secret.encode() + block.hash.encode()).digest())
        while len(chosen) < k:
            chosen.add(rng.randrange(n))
        return sorted(chosen)

    def trust(self, block: Block) -> None:
        """Skip recomputation for ``block`` (this node computed its work itself)."""
        self._remember(block.hash)

    def _remember(self, block_hash: str) -> None:
        self._passed[block_hash] = None
        while len(self._passed) > self.CACHE:
            self._passed.popitem(last=False)

    def verify(self, block: Block, params: ChainParams) -> None:
        """Recompute the sampled leaves; raise :class:`BadLeaf` with a fraud proof on the first bad one."""
        if not params.verified or block.hash in self._passed or self.samples == 0:
            return
        task, work = block.body.task, block.body.work
        if task is None or work is None:
            raise InvalidBlock(Reason.BAD_WORK_ROOT, "the block holds no task or no work log to verify")
        leaves = work.leaves()
        if leaves.shape != (block.header.iterations, task.n_players):
            raise InvalidBlock(
                Reason.BAD_WORK_ROOT,
                f"the work log holds {leaves.shape[0]} leaves of {leaves.shape[1]} values, "
                f"the header claims {block.header.iterations} of {task.n_players}",
            )
        marginals = self.marginals_for(task)
        for t in self.indices(block, leaves):
            self.recomputed += 1
            err = leaf_error(block.header, task, t, leaves[t], marginals, sampler=params.sampler)
            if err > params.work_tolerance:
                proof = FraudProof(header=block.header, task=task, index=t, leaf=leaves[t].tolist(), path=work.path(t))
                raise BadLeaf(proof, f"leaf {t} is off by {err:.3g} (> {params.work_tolerance:g}) when recomputed")
        self._remember(block.hash)

    def check_proof(self, proof: FraudProof, params: ChainParams) -> None:
        """Raise InvalidInput unless ``proof`` shows a fabricated leaf (one recomputation)."""
        h = proof.header
        try:
            verify_signature(h.winner, h.signing_payload(), h.signature)
        except InvalidSignature as exc:
            raise InvalidInput(f"fraud proof: header not signed by its winner: {exc}") from exc
        if proof.task.task_hash != h.task_hash or proof.task.task_id != h.task_id:
            raise InvalidInput("fraud proof: the task is not the header's")
        leaf = np.asarray(proof.leaf, dtype=np.float64)
        if leaf.shape != (proof.task.n_players,):
            raise InvalidInput("fraud proof: the leaf does not have one value per client")
        if not verify_merkle_path(leaf_hash(proof.index, leaf), proof.index, h.iterations, proof.path, h.work_root):
            raise InvalidInput("fraud proof: the leaf is not in the block's work log")
        err = leaf_error(h, proof.task, proof.index, leaf, self.marginals_for(proof.task), sampler=params.sampler)
        self.recomputed += 1
        if err <= params.work_tolerance:
            raise InvalidInput(f"fraud proof: leaf {proof.index} recomputes within tolerance ({err:.3g})")
