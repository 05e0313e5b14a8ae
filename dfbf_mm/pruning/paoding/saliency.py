"""Pair saliency: how much merging hidden unit i into unit j of the same layer costs.

Srinivas & Babu (2015): two units with (nearly) equal incoming weights compute (nearly) equal
activations, so one can be replaced by the other and its outgoing weights added to the other's.
Paoding adds a relative bias term:

    s(i -> j) = (||w_i - w_j||_2 + |b_i - b_j| / |b_i + b_j|) * ||o||_2

with ``i`` removed and ``j`` kept. ``o`` is the removed unit's outgoing weights
(``outgoing='removed'``, our default: it is the weight that is moved, as in Srinivas & Babu) or
the kept unit's (``'kept'``, what the authors' tool computes).
"""
from typing import List, Tuple

import numpy as np
import torch

BIAS_EPS = 1e-6


def bias_term(b: torch.Tensor, eps: float = BIAS_EPS) -> torch.Tensor:
    """Matrix ``|b_i - b_j| / |b_i + b_j|`` with the denominator guarded.

    When ``b_i + b_j`` is about 0 the ratio is undefined: equal biases (both about 0) give 0,
    opposite biases get ``|b_i - b_j| / eps`` -- finite, and large enough to rank that pair last.
    """
    diff = (b[:, None] - b[None, :]).abs()
    den = (b[:, None] + b[None, :]).abs().clamp(min=eps)
    return torch.where(diff <= eps, torch.zeros_like(diff), diff / den)


def saliency_matrix(w_in: torch.Tensor, b: torch.Tensor, w_out: torch.Tensor,
                    outgoing: str = 'removed') -> torch.Tensor:
    """``S[i, j]`` = saliency of removing unit i into kept unit j (diagonal = +inf).

    ``w_in``: (n, fan_in) incoming weights; ``b``: (n,) biases; ``w_out``: (fan_out, n), the next
    Linear's weight (column i = unit i's outgoing weights).
    """
    if outgoing not in ('removed', 'kept'):
        raise ValueError(f"saliency_outgoing: {outgoing!r} is not one of 'removed', 'kept'")
    w_in, b, w_out = w_in.double(), b.double(), w_out.double()
    dist = torch.cdist(w_in, w_in) + bias_term(b)
    o_norm = w_out.norm(dim=0)
    s = dist * (o_norm[:, None] if outgoing == 'removed' else o_norm[None, :])
    s.fill_diagonal_(float('inf'))
    return s


def disjoint_pairs(s: torch.Tensor, eligible: torch.Tensor) -> List[Tuple[int, int, float]]:
    """Greedy disjoint ``(removed, kept, saliency)`` pairs in ascending saliency.

    Only units with ``eligible[u]`` take part; ties keep index order (stable sort) so the
    result is deterministic.
    """
    idx = torch.nonzero(eligible).flatten()
    if idx.numel() < 2:
        return []
    sub = s[idx][:, idx].cpu().numpy()
    order = np.argsort(sub, axis=None, kind='stable')
    used = np.zeros(len(idx), dtype=bool)
    pairs = []
    for flat in order:
        a, c = divmod(int(flat), len(idx))
        if a == c or used[a] or used[c]:
            continue
        used[a] = used[c] = True
        pairs.append((int(idx[a]), int(idx[c]), float(sub[a, c])))
        if used.sum() >= len(idx) - 1:
            break
    return pairs
