"""Robustness impact of a candidate merge: interval metrics L and ENT at the output layer.

Merging unit i into unit j makes the next layer see ``h_j`` where it saw ``h_i``; the change
of its pre-activation is ``dz = (h_j - h_i) * o_i`` with ``h`` ranging over the units' value
intervals. That change is bounded as an interval and carried to the chain's output layer
(a perturbation bound: through an activation the change is its slope times the input change,
the slope bounded over the reachable pre-activation range; through a Linear by interval
arithmetic without bias). Two numbers summarise the output change ``{[lo_k, hi_k]}``:

- L   = sum_k (hi_k - lo_k), how large it can be;
- ENT = -sum_k p_k log p_k with p_k the share of outputs whose interval is similar
  (sim >= theta) to output k's: low when the change is uniform across classes, so the
  arg-max decision survives.

score = alpha * logistic(L) + (1 - alpha) * logistic(ENT); lower is better.
"""
from dataclasses import dataclass
from typing import List, Tuple

import torch

from .intervals import Box, interval_linear

DEFAULT_ALPHA = {'relu': 0.75, 'sigmoid': 0.05}


@dataclass
class Downstream:
    """What lies after a hidden layer: pre-activation bounds and weights of later layers.

    ``z_boxes[k]`` is the box of the pre-activation of the k-th layer after the hidden one,
    ``acts[k]`` its activation (None for the chain's output layer) and ``weights[k]`` the
    weight of the Linear that follows it (absent for the output layer).
    """
    z_boxes: List[Box]
    acts: List[str]
    weights: List[torch.Tensor]


def merge_delta(h: Box, w_out: torch.Tensor, removed: torch.Tensor, kept: torch.Tensor) -> Box:
    """Boxes (P, fan_out) of the next pre-activation change for P merges ``removed -> kept``.

    ``w_out``: the next layer's weight, (fan_out, n) for Linear or (fan_out, n, kh, kw) for a
    conv, whose change at one pixel sums the kernel taps, each tap seeing a change in the box.
    """
    lo, hi = h
    d_lo, d_hi = (lo[kept] - hi[removed])[:, None, None], (hi[kept] - lo[removed])[:, None, None]
    o = w_out[:, removed].transpose(0, 1).reshape(len(removed), w_out.shape[0], -1)
    a, b = o * d_lo, o * d_hi
    return torch.minimum(a, b).sum(-1), torch.maximum(a, b).sum(-1)


def _slope_range(z: Box, delta: Box, act: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Bounds of the secant slope of ``act`` between z and z + delta over the reachable range."""
    lo = z[0] + delta[0].clamp(max=0)
    hi = z[1] + delta[1].clamp(min=0)
    if act == 'relu':
        return (lo >= 0).to(lo.dtype), (hi > 0).to(lo.dtype)
    if act == 'sigmoid':
        def d(x):
            s = torch.sigmoid(x)
            return s * (1 - s)
        closest = torch.where((lo <= 0) & (hi >= 0), torch.zeros_like(lo),
                              torch.where(hi < 0, hi, lo))
        return torch.minimum(d(lo), d(hi)), d(closest)
    raise ValueError(f'act: {act!r} is not one of relu, sigmoid')


def propagate_delta(delta: Box, down: Downstream) -> Box:
    """Carry change boxes (..., n) from the next pre-activation to the chain's output layer."""
    for z, act, w in zip(down.z_boxes, down.acts, down.weights):
        m_lo, m_hi = _slope_range(z, delta, act)
        # slope in [m_lo, m_hi], both >= 0: the extreme products pick the slope by the sign
        lo = delta[0] * torch.where(delta[0] < 0, m_hi, m_lo)
        hi = delta[1] * torch.where(delta[1] > 0, m_hi, m_lo)
        delta = interval_linear(lo, hi, w)
    return delta


def metric_l(out: Box) -> torch.Tensor:
    """L: total width of the output change intervals (over the last dimension)."""
    return (out[1] - out[0]).sum(-1)


def metric_ent(out: Box, theta: float = 0.9) -> torch.Tensor:
    """ENT: interval-based entropy of the output change intervals (similarity threshold theta)."""
    lo, hi = out
    n = lo.shape[-1]
    u = hi.max(-1).values.clamp(min=0) - lo.min(-1).values.clamp(max=0)
    dist = ((lo[..., :, None] - lo[..., None, :]).abs() + (hi[..., :, None] - hi[..., None, :]).abs())
    # all-[0, 0] intervals (u = 0) are identical: one cluster, entropy 0
    sim = 1 - dist / (2 * u.clamp(min=1e-300)[..., None, None])
    p = (sim >= theta).sum(-1).double() / n
    return torch.where(u > 0, -(p * p.log()).sum(-1), torch.zeros_like(u))


def impact_score(out: Box, alpha: float, theta: float = 0.9) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(score, L, ENT)`` of output change boxes; lower score = safer merge."""
    big_l, ent = metric_l(out), metric_ent(out, theta)
    return alpha * torch.sigmoid(big_l) + (1 - alpha) * torch.sigmoid(ent), big_l, ent
