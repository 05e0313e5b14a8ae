"""Pruning to a cost target (MACs, params, CPU latency) and global channel ranking.

A target is ``dict(macs=f)`` (or ``params=f``, ``latency=f``): the fraction ``f`` of the
backbone's cost to remove. The pruner's channel choice is a one-parameter family ``theta ->
kept channels per group`` (``uniform``: every group at ratio theta, or the DFBF width rule of
theta; ``global``: the theta fraction of all prunable channels with the lowest normalised group
L1 norm, at most ``max_ratio`` of any group), monotone in theta, so :func:`solve` finds theta
by bisection.

MACs and params of a candidate are estimated from one trace by ``dfbf_mm.cost.CostModel``
(every layer Torch-Pruning's counter counts, scaled by the kept fraction of its output and input
channels) and the pruner then checks the estimate on the really pruned copy (and corrects it when
it is off). Latency has no model: every candidate is pruned and timed on this machine's CPU
against the unpruned backbone (``dfbf_mm.cost.measure_latencies``).
"""
import math
from typing import Callable, List, Optional, Sequence, Tuple

import torch

TARGET_METRICS = ('macs', 'params', 'latency')
RANKINGS = ('uniform', 'global')
THETA_MAX = 1 - 1e-6  # a ratio that leaves every group at min_channels


def check_target(target) -> Optional[Tuple[str, float]]:
    """``(metric, fraction)`` of a ``target`` dict, None for None; else a one-line error."""
    if target is None:
        return None
    if not isinstance(target, dict) or len(target) != 1 or next(iter(target)) not in TARGET_METRICS:
        raise ValueError(f'target: {target!r} is not one of dict(macs=f), dict(params=f), '
                         'dict(latency=f) (f: the fraction of the backbone cost to remove)')
    (metric, value), = target.items()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f'target.{metric}: {value!r} is not a fraction in (0, 1)')
    return metric, float(value)


def global_ratios(scores: Sequence[torch.Tensor], divisors: Sequence[int], theta: float,
                  max_ratio: float, steps: Optional[Sequence] = None) -> List[float]:
    """Removal ratio per group when the ``theta`` fraction of all channels with the lowest
    scores is removed, no group losing more than ``max_ratio`` (a capped group's share goes
    to the next-lowest channels elsewhere; grouped convs: a position counts for its chunks together).
    ``steps[i]``, when given and not None: group ``i`` is removed only in these steps, in order,
    ``(score, channels)`` each (scores non-decreasing; a group across a channel shuffle)."""
    entries = []
    for i, (s, d) in enumerate(zip(scores, divisors)):
        if steps is not None and steps[i] is not None:
            entries += [(v, i, c) for v, c in steps[i]]
            continue
        pos = s.view(d, -1).mean(0)
        entries += [(float(v), i, d) for v in pos]
    entries.sort(key=lambda e: e[0])
    total = sum(s.numel() for s in scores)
    budget = int(math.floor(theta * total + 1e-9))
    removed = [0] * len(scores)
    caps = [int(math.floor(max_ratio * s.numel() + 1e-9)) for s in scores]
    for _, i, d in entries:
        if budget <= 0:
            break
        if removed[i] + d > caps[i]:  # this group is at its cap: the next channel elsewhere goes
            continue
        removed[i] += d
        budget -= d
    return [r / s.numel() for r, s in zip(removed, scores)]


def bracket(cut: Callable[[float], float], target: float, lo: float = 0.0, hi: float = THETA_MAX,
            iters: int = 24, tol: float = 1e-3) -> Tuple[float, float, float, float]:
    """``(lo, cut(lo), hi, cut(hi))`` around ``target`` for a non-decreasing ``cut`` (bisection,
    stopped early at a theta within ``tol``: then lo == hi); the ends when it lies outside."""
    c_lo, c_hi = cut(lo), cut(hi)
    if c_lo >= target:
        return lo, c_lo, lo, c_lo
    if c_hi <= target:
        return hi, c_hi, hi, c_hi
    for _ in range(iters):
        mid = (lo + hi) / 2
        c = cut(mid)
        if abs(c - target) <= tol:
            return mid, c, mid, c
        if c < target:
            lo, c_lo = mid, c
        else:
            hi, c_hi = mid, c
    return lo, c_lo, hi, c_hi


def solve(cut: Callable[[float], float], target: float, **kwargs) -> Tuple[float, float]:
    """``(theta, cut(theta))``, the theta whose cut is closest to ``target`` (see :func:`bracket`;
    the function is a staircase, so both sides of the step are tried)."""
    lo, c_lo, hi, c_hi = bracket(cut, target, **kwargs)
    return (lo, c_lo) if target - c_lo <= c_hi - target else (hi, c_hi)
