"""Pruning to a cost target (MACs, params, CPU latency) and global channel ranking.

A target is ``dict(macs=f)`` (or ``params=f``, ``latency=f``): the fraction ``f`` of the
backbone's cost to remove. The pruner's channel choice is a one-parameter family ``theta ->
kept channels per group`` (``uniform``: every group at ratio theta, or the DFBF width rule of
theta; ``global``: the theta fraction of all prunable channels with the lowest normalised group
L1 norm, at most ``max_ratio`` of any group), monotone in theta, so :func:`solve` finds theta
by bisection.

MACs and params of a candidate are estimated from one trace by :class:`CostModel` (every layer
Torch-Pruning's counter counts, scaled by the kept fraction of its output and input channels)
and the pruner then checks the estimate on the really pruned copy (and corrects it when it is
off). Latency has no model: every candidate is pruned and timed on this machine's CPU against
the reference (``dfbf_mm.export.profile.measure_latencies``).
"""
import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch_pruning as tp

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


def _counter_types(backbone: nn.Module) -> dict:
    from torch_pruning.utils import op_counter
    from ..export.profile import _subclass_hooks
    return {**op_counter.MODULES_MAPPING, **_subclass_hooks(backbone)}


def _leaves(module: nn.Module, types) -> List[nn.Module]:
    """The modules the counter counts (a counted module is counted as itself, not its children)."""
    if type(module) in types:
        return [module]
    return [m for c in module.children() for m in _leaves(c, types)]


def _width(m: nn.Module, out: bool) -> Optional[int]:
    if isinstance(m, nn.modules.conv._ConvNd):
        return m.out_channels if out else m.in_channels
    if isinstance(m, nn.Linear):
        return m.out_features if out else m.in_features
    w = getattr(m, 'weight', None)
    if out and isinstance(w, torch.Tensor) and w.dim() == 1:
        return w.shape[0]
    return None


def _depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 and m.groups == m.in_channels


class CostModel:
    """MACs / params of the traced backbone with the given channels kept per prunable group.

    Each counted layer's MACs (``count_ops_and_params(layer_wise=True)``, with the subclass
    matching of ``count_macs_params``) and each parameter tensor are scaled by the kept
    fraction of the layer's output channels times that of its input channels (a depthwise conv,
    BN or bias by one of them); a parameter-free layer (activation, pooling) follows the layer
    that produced its input. Which group removes which layer's channels, and how many of them
    per group channel, comes from the group's Torch-Pruning items.
    """

    def __init__(self, backbone: nn.Module, example: torch.Tensor, trace):
        from torch_pruning.utils import op_counter
        from ..export.profile import _attention_inputs_by_keyword, _subclass_hooks
        from ..utils import eval_mode
        types = _counter_types(backbone)
        saved = op_counter.CUSTOM_MODULES_MAPPING
        try:  # as count_macs_params counts, per layer
            with eval_mode(backbone), torch.no_grad(), _attention_inputs_by_keyword(backbone) as attention:
                op_counter.CUSTOM_MODULES_MAPPING = {**_subclass_hooks(backbone), **attention, **saved}
                macs, params, layer_macs, _ = tp.utils.count_ops_and_params(backbone, example, layer_wise=True)
        finally:
            op_counter.CUSTOM_MODULES_MAPPING = saved
        self.macs, self.params = float(macs), float(params)
        self.widths = [g.width for g in trace.prunable]
        leaves = _leaves(backbone, types)
        self.layer_macs = [(m, float(layer_macs.get(m) or 0)) for m in leaves]
        self.producer = self._producers(backbone, leaves, example)
        # module -> [(group index, channels of the module per channel of the group)]
        self.out_items: Dict[nn.Module, list] = {}
        self.in_items: Dict[nn.Module, list] = {}
        for i, g in enumerate(trace.prunable):
            for dep, idxs in g.items():
                m = dep.target.module
                if not isinstance(m, nn.Module) or _width(m, True) is None:
                    continue
                out = trace.graph.is_out_channel_pruning_fn(dep.handler)
                (self.out_items if out else self.in_items).setdefault(m, []).append((i, len(idxs) / g.width))
        self.param_owners = [(m, p) for m in backbone.modules() for p in m.parameters(recurse=False)]

    @staticmethod
    def _producers(backbone, leaves, example) -> Dict[nn.Module, nn.Module]:
        """{counted layer: counted layer whose output is its first input} from one forward.

        Outputs are matched by ``id``; each is kept alive until the forward ends, or a freed
        tensor's id could be reused by a later one and link the wrong layers (which made the
        estimate, and the channels a MACs target picks, change from process to process)."""
        made, producer, handles = {}, {}, []

        def hook(m, inputs, output):
            x = inputs[0] if inputs else None
            if isinstance(x, torch.Tensor) and id(x) in made:
                producer[m] = made[id(x)][0]
            if isinstance(output, torch.Tensor):
                made[id(output)] = (m, output)

        for m in leaves:
            handles.append(m.register_forward_hook(hook))
        was = backbone.training
        try:
            backbone.eval()
            with torch.no_grad():
                backbone(example)
        finally:
            for h in handles:
                h.remove()
            backbone.train(was)
        return producer

    def _kept(self, m, items, keeps, out: bool) -> float:
        width = _width(m, out)
        if not width or m not in items:
            return 1.0
        removed = sum((self.widths[i] - keeps[i]) * per for i, per in items[m])
        return max(0.0, 1.0 - removed / width)

    def fractions(self, m, keeps) -> Tuple[float, float]:
        """(kept fraction of the output channels, of the input channels) of layer ``m``."""
        f_out = self._kept(m, self.out_items, keeps, True)
        f_in = self._kept(m, self.in_items, keeps, False)
        if _depthwise(m):
            return min(f_out, f_in), 1.0
        if _width(m, True) is None or (m not in self.out_items and m not in self.in_items
                                        and _width(m, False) is None):
            seen, p = 0, self.producer.get(m)  # activation / pooling: follows its input
            while p is not None and seen < 8:
                if p in self.out_items or _depthwise(p):
                    return self.fractions(p, keeps)[0], 1.0
                p, seen = self.producer.get(p), seen + 1
            return 1.0, 1.0
        return f_out, f_in

    def estimate(self, keeps: Sequence[int]) -> Tuple[float, float]:
        """(MACs, params) with ``keeps[i]`` channels kept in prunable group ``i``."""
        macs = 0.0
        for m, v in self.layer_macs:
            f_out, f_in = self.fractions(m, keeps)
            macs += v * f_out * f_in
        params = 0.0
        for m, p in self.param_owners:
            f_out, f_in = self.fractions(m, keeps)
            params += p.numel() * (f_out * f_in if p.dim() >= 2 else f_out)
        return macs, params


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
