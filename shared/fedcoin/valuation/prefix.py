"""Prefix sums of per-client tensors: every prefix of a permutation's FedAvg model at once.

FedAvg is linear, so the model of a coalition is a weighted sum of its members'
weights, and the models of all prefixes of a permutation are running sums in
permutation order. :class:`PrefixSums` holds what those sums are taken over:

* the first layer by linearity: the clients' own pre-activations
  ``Z_k = X_val W1_k^T + b1_k``, float32 ``(K, M, H_1)``, computed once; a
  prefix costs one ``M x H_1`` addition instead of a ``M x D x H_1`` product;
* the later layers: float64 copies of every client's weights;
* all of them pre-scaled by ``s_k = n_k / mean(n)``, which keeps the float32
  running sums well scaled; the ``1 / sum s_k`` of a prefix is applied after
  summing, and for the first layer folded into the (small) second-layer weights,
  since ``ReLU(S / N) = ReLU(S) / N`` for ``N > 0``.

:func:`prefix_logits` runs the rest of the MLP on a chunk of prefixes with
batched matrix products.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from fedcoin.fl.model import mlp_layers

#: Later-layer running sums: (weights (c, out, in), biases (c, out)) per layer.
LayerSums = list[tuple[torch.Tensor, torch.Tensor]]


class PrefixSums:
    """Per-client, pre-scaled tensors of one valuation problem (see the module docstring)."""

    def __init__(
        self,
        updates: Sequence[Mapping[str, torch.Tensor]],
        n: np.ndarray,
        X: torch.Tensor,
        device: torch.device,
    ) -> None:
        K = len(updates)
        self.device = device
        scale = n / n.mean()
        self.scale64 = torch.tensor(scale, dtype=torch.float64, device=device)
        layer_lists = [mlp_layers(u) for u in updates]
        self.n_layers = len(layer_lists[0])
        with torch.no_grad():
            # First layer by linearity: Z[k] = s_k * (X W1_k^T + b1_k), float32 (K, M, H1).
            H1 = layer_lists[0][0][0].shape[0]
            self.Z = torch.empty((K, X.shape[0], H1), dtype=torch.float32, device=device)
            for k in range(K):
                W1, b1 = layer_lists[k][0]
                z = torch.addmm(b1.to(device, torch.float32), X, W1.to(device, torch.float32).t())
                torch.mul(z, float(scale[k]), out=self.Z[k])
            # Later layers: s_k-weighted copies in float64 (K, out, in) / (K, out).
            self.later: LayerSums = []
            for li in range(1, self.n_layers):
                W = torch.stack([layer_lists[k][li][0] for k in range(K)]).to(device, torch.float64)
                b = torch.stack([layer_lists[k][li][1] for k in range(K)]).to(device, torch.float64)
                W.mul_(self.scale64.view(K, 1, 1))
                b.mul_(self.scale64.view(K, 1))
                self.later.append((W, b))

    @property
    def workspace_bytes(self) -> int:
        """Bytes of the precomputed per-client tensors (``Z`` and later layers)."""
        total = self.Z.numel() * self.Z.element_size()
        for W, b in self.later:
            total += (W.numel() + b.numel()) * 8
        return total

    @property
    def later_elements(self) -> int:
        """Values of one client's later layers (weights and biases)."""
        return sum(W[0].numel() + b[0].numel() for W, b in self.later)

    def inverse_weights(self, players: torch.Tensor) -> torch.Tensor:
        """``1 / sum s_k`` of every prefix of ``players`` (float64 ``(len,)``)."""
        return 1.0 / torch.cumsum(self.scale64[players], 0)

    def zero_carry(self) -> LayerSums:
        return [(torch.zeros_like(W[0]), torch.zeros_like(b[0])) for W, b in self.later]

    def later_running(self, players: torch.Tensor, carry: LayerSums) -> tuple[LayerSums, LayerSums]:
        """Running sums of the later layers over ``players``, continuing from ``carry``;
        returns them and the carry into the next block."""
        sums = []
        for (W, b), (cW, cb) in zip(self.later, carry, strict=False):
            Ws = torch.cumsum(W[players], 0).add_(cW)
            bs = torch.cumsum(b[players], 0).add_(cb)
            sums.append((Ws, bs))
        return sums, [(Ws[-1], bs[-1]) for Ws, bs in sums]

    def first_layer_running(self, players: Sequence[int], prev: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out[j]`` = ``prev`` + the first ``j + 1`` players' ``Z``; returns the last sum (the next carry)."""
        for j, k in enumerate(players):
            torch.add(prev, self.Z[k], out=out[j])
            prev = out[j]
        return prev

    def first_layer_scan(self, players: torch.Tensor, prev: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The sums of :meth:`first_layer_running` (up to rounding: a backend may accumulate its
        running sum in higher precision) in three kernels (gather, add ``prev`` to the first, running
        sum) instead of one addition per player: on a GPU each addition is a kernel launch that costs
        more than the addition itself."""
        m = int(players.shape[0])
        chunk = out[:m]
        torch.index_select(self.Z, 0, players, out=chunk)
        chunk[0].add_(prev)
        chunk.cumsum_(0)
        return chunk[m - 1]

    def coalition(self, members: list[int]) -> tuple[torch.Tensor, LayerSums, torch.Tensor]:
        """First-layer sum ``(1, M, H1)``, later-layer sums and ``1 / sum s_k`` of one coalition."""
        idx = torch.as_tensor(members, dtype=torch.int64, device=self.device)
        S = self.Z[members[0]].clone()
        for k in members[1:]:
            S.add_(self.Z[k])
        inv = 1.0 / self.scale64[idx].sum().view(1)
        sums = [(W[idx].sum(0, keepdim=True), b[idx].sum(0, keepdim=True)) for W, b in self.later]
        return S.unsqueeze(0), sums, inv


def effective_later(sums: LayerSums, inv: torch.Tensor) -> LayerSums:
    """float32 prefix-averaged later-layer weights from float64 running sums.

    ``sums[l] = (Wsum (c, out, in), bsum (c, out))``; ``inv`` (c,) = ``1 / sum s_k``.
    The first later layer also absorbs the first layer's ``1/N`` (ReLU is
    positively homogeneous), so it multiplies ``ReLU(S)`` directly.
    """
    out = []
    inv3 = inv.view(-1, 1, 1)
    for li, (Wsum, bsum) in enumerate(sums):
        W = Wsum * (inv3 * inv3 if li == 0 else inv3)
        b = bsum * inv.view(-1, 1)
        out.append((W.to(torch.float32), b.to(torch.float32).unsqueeze(2)))
    return out


def prefix_logits(
    S: torch.Tensor,
    eff: LayerSums,
    inv: torch.Tensor,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits ``(c, O, M)`` of prefixes from first-layer running sums ``S`` (c, M, H1).

    ``eff`` from :func:`effective_later`.  The ReLU is taken in place: ``S`` is
    overwritten (a caller that needs a raw sum afterwards keeps a copy).
    """
    if not eff:  # no hidden layer: logits are S / N
        res = S.transpose(1, 2) * inv.view(-1, 1, 1).to(torch.float32)
        if out is not None:
            out.copy_(res)
            return out
        return res
    h = torch.relu_(S)
    h = h.transpose(1, 2)  # (c, H1, M); the true activation is h / N
    last = len(eff) - 1
    for li, (W, b) in enumerate(eff):
        h = torch.baddbmm(b, W, h, out=out) if li == last and out is not None else torch.baddbmm(b, W, h)
        if li < last:
            h = torch.relu_(h)
    return h
