"""The fast Shapley utility: every prefix of a permutation valued in one batched pass.

Same values as :class:`fedcoin.valuation.naive.NaiveUtility`, in
``O(K M H_1 + K M P_rest)`` work per permutation instead of ``O(K^2 P + K M P_1)``:
the prefixes' models are running sums (:mod:`fedcoin.valuation.prefix`), later
layers are evaluated for a chunk of prefixes at once with batched matrix
products, and the metric for the whole chunk at once.

Optional truncation (TMC-Shapley style, off by default): once a prefix's
utility is within ``truncation_tol`` of ``v(N)`` the remaining marginals are 0
and the remaining chunks are not evaluated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from fedcoin.errors import InvalidInput
from fedcoin.fl.content import TaskContent

from .prefix import LayerSums, PrefixSums, effective_later, prefix_logits
from .problem import Problem, UtilityBase, check_coalition, check_permutation, metric_values


class ShapleyEngine(UtilityBase):
    """Batched evaluation of all prefixes of a permutation (see the module docstring).

    ``ShapleyEngine(updates, n_samples, X_val, y_val, metric="neg_loss",
    empty_value=0.0, device=None, global_weights=None, truncation_tol=None,
    chunk_size=None, scan=None, batch_size=None)``

    Same arguments and results as :class:`NaiveUtility` (up to float rounding:
    engine and naive marginals agree to ~1e-7 on the paper setting), plus:

    * ``truncation_tol``: ``None`` (default) evaluates every prefix.  A number
      ``tol >= 0`` stops a permutation at the first prefix ``R[:i]`` with
      ``|v(R[:i]) - v(N)| <= tol`` (absolute, in metric units); the marginals
      of the players after it are set to 0.  Prefixes are evaluated in chunks
      of ``chunk_size``, so at most ``chunk_size - 1`` prefixes are wasted.
      This biases the estimate (the truncated players get 0) in exchange for
      speed, as in TMC-Shapley (Ghorbani & Zou, 2019).
    * ``chunk_size``: prefixes evaluated per batched step (default 4 on the
      CPU, cache-sized; 32 on CUDA).
    * ``batch_size``: permutations :meth:`marginals_many` values in one pass
      (default 1 on the CPU, where a permutation's chunks stay in cache and
      batching only adds memory traffic; 16 on CUDA, where one permutation is
      too little work for the GPU), capped so that a batch's first-layer sums
      fit in ``batch_bytes`` (1 GiB).
    * ``scan``: how a chunk's first-layer running sums are taken: one addition
      per prefix (``False``, the default on the CPU, where the chunk stays in
      cache) or gather-then-running-sum in three kernels (``True``, the
      default on CUDA, where a kernel launch costs more than an addition).
      Both give the same sums up to rounding.

    Memory: the per-client first-layer pre-activations, ``K x M x H_1`` float32
    (80 MB for K=100, M=1000, H_1=200), plus ``K`` copies of the later layers.

    Precision: the pre-activation running sums are float32 (``Z_k`` pre-scaled
    by ``n_k / mean(n)``; a running sum of ``i`` terms has relative error
    ~``sqrt(i) * 6e-8``); running sums of later-layer weights are float64 and
    rounded to float32 per prefix, logits are float32 as in the naive model,
    the metric is scored as in :class:`NaiveUtility`.  Measured engine-naive
    marginal differences: ~4e-8 (K=100 paper setting), <1e-6 in the tests.

    ``engine(coalition)`` gives the utility of one coalition, so the engine can
    stand in wherever a plain utility callable is expected.
    """

    def __init__(
        self,
        updates: Sequence[Mapping[str, torch.Tensor]],
        n_samples: Sequence[float],
        X_val: torch.Tensor,
        y_val: torch.Tensor,
        metric: str = "neg_loss",
        empty_value: float | str = 0.0,
        device: str | torch.device | None = None,
        global_weights: Mapping[str, torch.Tensor] | None = None,
        truncation_tol: float | None = None,
        chunk_size: int | None = None,
        scan: bool | None = None,
        batch_size: int | None = None,
    ) -> None:
        p = Problem(updates, n_samples, X_val, y_val, metric, empty_value, device, global_weights)
        self._p = p
        if truncation_tol is not None:
            if isinstance(truncation_tol, bool) or not isinstance(truncation_tol, (int, float, np.floating)):
                raise InvalidInput(f"truncation_tol must be None or a number >= 0, got {truncation_tol!r}")
            if not math.isfinite(float(truncation_tol)) or truncation_tol < 0:
                raise InvalidInput("truncation_tol must be finite and >= 0")
            truncation_tol = float(truncation_tol)
        self.truncation_tol = truncation_tol
        if chunk_size is None:
            chunk_size = 32 if p.device.type == "cuda" else 4
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
            raise InvalidInput(f"chunk_size must be a positive integer, got {chunk_size!r}")
        self.chunk_size = int(chunk_size)
        if scan is not None and not isinstance(scan, bool):
            raise InvalidInput(f"scan must be None, True or False, got {scan!r}")
        self.scan = p.device.type == "cuda" if scan is None else scan
        if batch_size is None:
            batch_size = 16 if p.device.type == "cuda" else 1
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise InvalidInput(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = int(batch_size)
        self.batch_bytes = 2**30
        self._sums = PrefixSums(updates, p.n, p.X, p.device)
        self.n_layers = self._sums.n_layers
        with torch.no_grad():
            self.full_value = self._coalition_value(list(range(p.K)))
        self.evaluations = 0  # number of prefix/coalition utilities computed
        # Under truncation, later-layer running sums are built for the whole
        # permutation at once when K x (later-layer values) <= this, else per chunk.
        self.later_block_limit = 2**21

    @property
    def workspace_bytes(self) -> int:
        """Bytes of the precomputed per-client tensors (``Z`` and later layers)."""
        return self._sums.workspace_bytes

    @property
    def flop_per_permutation(self) -> int:
        """Floating-point operations of the later layers' products over all ``K`` prefixes of one
        permutation (2 per multiply-add): the arithmetic no evaluation order can avoid."""
        per_sample = sum(int(W.shape[1]) * int(W.shape[2]) for W, _ in self._sums.later)
        return 2 * self._p.K * self._p.M * per_sample

    def _coalition_value(self, members: list[int]) -> float:
        S, sums, inv = self._sums.coalition(members)
        logits = prefix_logits(S, effective_later(sums, inv), inv)
        return float(metric_values(logits, self._p.y, self._p.metric)[0])

    @torch.no_grad()
    def __call__(self, coalition: Iterable[int]) -> float:
        members = check_coalition(coalition, self._p.K)
        if not members:
            return self._p.empty_value
        self.evaluations += 1
        return self._coalition_value(members)

    @torch.no_grad()
    def prefix_values(self, permutation: Sequence[int] | np.ndarray | torch.Tensor) -> tuple[np.ndarray, int]:
        """``(v, t)``: ``v[i] = v(R[:i])`` for ``i = 0..K`` (``v[0] = v(empty)``) and the
        number ``t`` of prefixes actually evaluated (``K`` unless truncated; after a
        truncation ``v`` is constant from the truncation point on)."""
        perm = check_permutation(permutation, self._p.K)
        return self._prefix_values(perm)

    @torch.no_grad()
    def _prefix_values(self, perm: np.ndarray) -> tuple[np.ndarray, int]:
        p, sums = self._p, self._sums
        K, dev, c = p.K, self.device, self.chunk_size
        tol = self.truncation_tol
        vals = np.empty(K + 1, dtype=np.float64)
        vals[0] = p.empty_value
        perm_t = torch.as_tensor(perm, device=dev)
        inv_all = sums.inverse_weights(perm_t)
        # Later-layer running sums: all K prefixes at once when every prefix is
        # evaluated anyway or when they are small (K x 2,010 values for the
        # default model); else chunk by chunk so truncated prefixes cost nothing.
        block = K if tol is None or K * sums.later_elements <= self.later_block_limit else c
        carry = sums.zero_carry()
        eff: LayerSums = []
        logits_all = torch.empty((K, p.num_classes, p.M), dtype=torch.float32, device=dev) if tol is None else None
        # buf holds a chunk's running sums, then (in place) their ReLU; the raw sum
        # of its last prefix is kept in carry for the next chunk. Both stay in cache.
        buf = torch.empty((min(c, K),) + tuple(sums.Z.shape[1:]), dtype=torch.float32, device=dev)
        carry_s = torch.zeros(sums.Z.shape[1:], dtype=torch.float32, device=dev)
        perm_list = perm.tolist()
        b0 = 0
        for a in range(0, K, c):
            m = min(c, K - a)
            if a >= b0 + block or a == 0:
                b0 = a
                later, carry = sums.later_running(perm_t[a : a + block], carry)
                eff = effective_later(later, inv_all[a : a + block])
            if self.scan:
                carry_s.copy_(sums.first_layer_scan(perm_t[a : a + m], carry_s, buf))
            else:
                carry_s.copy_(sums.first_layer_running(perm_list[a : a + m], carry_s, buf))
            o = a - b0
            chunk_eff = [(W[o : o + m], b[o : o + m]) for W, b in eff]
            inv = inv_all[a : a + m]
            if logits_all is not None:
                prefix_logits(buf[:m], chunk_eff, inv, out=logits_all[a : a + m])
                continue
            v = metric_values(prefix_logits(buf[:m], chunk_eff, inv), p.y, p.metric).cpu().numpy()
            vals[a + 1 : a + 1 + m] = v
            hit = np.flatnonzero(np.abs(v - self.full_value) <= tol)
            if hit.size:
                stop = a + int(hit[0]) + 1  # length of the first prefix within tol of v(N)
                vals[stop + 1 :] = vals[stop]
                self.evaluations += a + m
                return vals, a + m
        if logits_all is not None:
            vals[1:] = metric_values(logits_all, p.y, p.metric).cpu().numpy()
        self.evaluations += K
        return vals, K

    def marginals(self, permutation: Sequence[int] | np.ndarray | torch.Tensor) -> np.ndarray:
        """Marginal contribution of every player in ``permutation``, by player (float64 ``(K,)``)."""
        perm = check_permutation(permutation, self._p.K)
        vals, _ = self._prefix_values(perm)
        out = np.empty(self._p.K, dtype=np.float64)
        out[perm] = np.diff(vals)
        return out

    def marginals_many(self, permutations: Sequence[Sequence[int] | np.ndarray]) -> np.ndarray:
        """``marginals`` of several permutations: row ``i`` is ``marginals(permutations[i])``
        (float64 ``(n, K)``; equal up to float rounding, since batched products may round
        differently). Up to ``batch_size`` permutations are valued in one pass over all their
        prefixes at once: a few kernels per batch instead of a few per chunk of prefixes. Under
        truncation, or with ``batch_size`` 1, permutations are valued one at a time."""
        perms = [check_permutation(q, self._p.K) for q in permutations]
        out = np.empty((len(perms), self._p.K), dtype=np.float64)
        per_perm = self._sums.Z[0].numel() * self._sums.Z.element_size() * self._p.K
        step = max(1, min(self.batch_size, self.batch_bytes // max(per_perm, 1)))
        if step == 1 or self.truncation_tol is not None:
            for i, q in enumerate(perms):
                vals, _ = self._prefix_values(q)
                out[i, q] = np.diff(vals)
            return out
        for a in range(0, len(perms), step):
            batch = np.stack(perms[a : a + step])
            out[a : a + len(batch)] = self._batch_marginals(batch)
        return out

    @torch.no_grad()
    def _batch_marginals(self, perms: np.ndarray) -> np.ndarray:
        p, sums = self._p, self._sums
        P, K = perms.shape
        idx = torch.as_tensor(perms, device=self.device)
        tail = tuple(sums.Z.shape[1:])
        S = sums.Z.index_select(0, idx.reshape(-1)).view(P, K, *tail)
        S.cumsum_(1)  # every prefix's first-layer sum, per permutation
        inv = (1.0 / torch.cumsum(sums.scale64[idx], 1)).reshape(-1)
        later = [
            (torch.cumsum(W[idx], 1).reshape(P * K, *W.shape[1:]), torch.cumsum(b[idx], 1).reshape(P * K, *b.shape[1:]))
            for W, b in sums.later
        ]
        logits = prefix_logits(S.view(P * K, *tail), effective_later(later, inv), inv)
        v = metric_values(logits, p.y, p.metric).view(P, K).cpu().numpy()
        self.evaluations += P * K
        vals = np.concatenate([np.full((P, 1), p.empty_value), v], axis=1)
        out = np.empty((P, K), dtype=np.float64)
        out[np.arange(P)[:, None], perms] = np.diff(vals, axis=1)
        return out

    @property
    def marginal_fn(self) -> BatchMarginals:
        """:meth:`marginals` as a PoSap marginal function that also offers :meth:`marginals_many`
        (as ``many``), so a miner values its iterations in batches."""
        return BatchMarginals(self.marginals, self.marginals_many)


class BatchMarginals:
    """A marginal function ``perm -> (K,)`` with a batched form ``many(perms) -> (n, K)``."""

    def __init__(
        self,
        one: Callable[[Sequence[int]], np.ndarray],
        many: Callable[[Sequence[Sequence[int]]], np.ndarray],
    ) -> None:
        self._one = one
        self.many = many

    def __call__(self, permutation: Sequence[int]) -> np.ndarray:
        return self._one(permutation)


def engine_for(
    content: TaskContent, metric: str = "neg_loss", empty_value: float = 0.0, device: str | None = None
) -> ShapleyEngine:
    """The fast Shapley utility engine for a Shapley task's content."""
    return ShapleyEngine(
        content.updates,
        content.n_samples,
        content.X_val,
        content.y_val,
        metric=metric,
        empty_value=empty_value,
        device=device,
        global_weights=content.global_weights,
    )
