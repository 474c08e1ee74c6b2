"""The reference coalition utility: FedAvg a coalition from scratch, then evaluate it.

A permutation costs ``K + 1`` such evaluations, ``O(K^2 P + K M P_1)`` work;
:class:`fedcoin.valuation.engine.ShapleyEngine` computes the same values in one
batched pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch

from fedcoin.fl.fedavg import weighted_average

from .problem import Problem, UtilityBase, check_coalition, check_permutation


class NaiveUtility(UtilityBase):
    """Reference coalition utility: FedAvg the coalition from scratch, then evaluate.

    ``NaiveUtility(updates, n_samples, X_val, y_val, metric="neg_loss",
    empty_value=0.0, device=None, global_weights=None)``

    * ``updates``: the clients' weight dicts (validated with
      :func:`fedcoin.fl.fedavg.validate_update`; same keys/shapes, float32, finite).
    * ``n_samples``: the clients' FedAvg weights ``n_k``.
    * ``empty_value``: ``v(empty)``; a number or ``"global"`` (score of
      ``global_weights``).
    * ``device``: ``None`` means CUDA when available, else CPU.

    ``v(coalition)`` aggregates the members in increasing index order with
    :func:`fedcoin.fl.fedavg.weighted_average` (float64 accumulation, float32 model),
    runs the float32 model on ``X_val`` and scores the logits in float64.
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
    ) -> None:
        self._p = Problem(updates, n_samples, X_val, y_val, metric, empty_value, device, global_weights)
        dev = self._p.device
        self._updates = [{k: v.detach().to(dev, torch.float32) for k, v in u.items()} for u in updates]
        self.evaluations = 0

    @torch.no_grad()
    def __call__(self, coalition: Iterable[int]) -> float:
        members = check_coalition(coalition, self._p.K)
        if not members:
            return self._p.empty_value
        self.evaluations += 1
        weights = weighted_average([self._updates[k] for k in members], self._p.n[members])
        return self._p.score(weights)

    def marginals(self, permutation: Sequence[int] | np.ndarray | torch.Tensor) -> np.ndarray:
        """Marginal contribution of every player in ``permutation`` (``K + 1`` evaluations), by player."""
        perm = check_permutation(permutation, self._p.K)
        vals = np.empty(self._p.K + 1, dtype=np.float64)
        vals[0] = self._p.empty_value
        for i in range(self._p.K):
            vals[i + 1] = self(frozenset(perm[: i + 1].tolist()))
        out = np.empty(self._p.K, dtype=np.float64)
        out[perm] = np.diff(vals)
        return out
