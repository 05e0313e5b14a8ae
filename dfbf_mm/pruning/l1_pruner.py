"""L1FilterPruner: structured Lp-norm filter pruning of a backbone, with real channel removal.

Each prunable dependency group (see :mod:`.channel_groups`) is scored by the Lp norm of its
root layer's output filters (p=1 as in the DFBF paper; p=2 ranks like the reference code's
sum of squares) and loses its lowest-scoring channels; the kept count follows
:mod:`.ratios`. The work is done on a deep copy: only when the copy runs and every output
keeps its shape are the new shapes and values moved into the caller's backbone, so a
backbone we cannot handle is refused with one line and left untouched.
"""
import copy
import math
import time
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from ..registry import PRUNERS
from ..utils import first_line
from .channel_groups import ChannelGroup, check_outputs, run_backbone, trace_channel_groups
from .channel_spec import apply_channel_spec, extract_channel_spec, snapshot_shapes
from .group_search import TraceTimeLimitError, pruning_group
from .ratios import (check_pattern, check_sparsity, kept_channels, layer_dependent_ratio,
                     names_matching)


def _one_line(e: BaseException) -> str:
    return f'{type(e).__name__}: {first_line(e, 160)}' 


@PRUNERS.register_module()
class L1FilterPruner:
    """Prune every dependency group that does not reach a backbone output.

    Args:
        sparsity: base fraction of channels to remove, in [0, 1).
        norm: p of the filter norm used as score (1 or 2).
        layer_dependent: use the DFBF width-dependent ratio (1.3s / s / 0.4s).
        overrides: ``{pattern: ratio}``; a group uses the ratio of the first pattern that matches
            a module whose output channels it removes (its root conv, the BN after it);
            fnmatch patterns, or ``re:<regex>``. A pattern that matches no prunable group is
            an error.
        ignore: patterns of module names whose shapes must not change.
        min_channels: channels every group keeps at least (>= 1).
        round_to: kept counts are rounded up to a multiple of this (e.g. 8), capped at the width.
        keep_residual: keep channels that are summed with another feature map (residual
            streams) at full width, as DFBF does; False prunes them too when they do not
            reach a backbone output.
        trace_time_limit: seconds the dependency tracing, group search and channel removal of
            one prune() may take (None: unbounded); past it prune() raises a one-line
            ValueError naming the backbone and the limit instead of hanging.
    """

    def __init__(self, sparsity: float = 0.5, norm: int = 1, layer_dependent: bool = False,
                 overrides: Optional[Dict[str, float]] = None, ignore: Optional[Sequence[str]] = None,
                 min_channels: int = 1, round_to: Optional[int] = None, keep_residual: bool = True,
                 trace_time_limit: Optional[float] = 60.0):
        self.sparsity = check_sparsity(sparsity, 'sparsity')
        if norm not in (1, 2):
            raise ValueError(f'norm: {norm!r} is not 1 or 2')
        self.norm = int(norm)
        self.layer_dependent = bool(layer_dependent)
        if overrides is not None and not isinstance(overrides, dict):
            raise ValueError(f'overrides: expected a dict {{pattern: ratio}}, got {type(overrides).__name__}')
        self.overrides = {check_pattern(k, 'overrides'): check_sparsity(v, f'overrides[{k!r}]')
                          for k, v in (overrides or {}).items()}
        if isinstance(ignore, str):
            ignore = [ignore]
        self.ignore = [check_pattern(p, 'ignore') for p in (ignore or [])]
        if isinstance(min_channels, bool) or not isinstance(min_channels, int) or min_channels < 1:
            raise ValueError(f'min_channels: {min_channels!r} is not an integer >= 1')
        self.min_channels = min_channels
        if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1):
            raise ValueError(f'round_to: {round_to!r} is not an integer >= 1')
        self.round_to = round_to
        self.keep_residual = bool(keep_residual)
        if trace_time_limit is not None and (isinstance(trace_time_limit, bool) or not isinstance(
                trace_time_limit, (int, float)) or not trace_time_limit > 0):
            raise ValueError(f'trace_time_limit: {trace_time_limit!r} is not a number of seconds > 0 (or None)')
        self.trace_time_limit = None if trace_time_limit is None else float(trace_time_limit)
        self.report: dict = {}  # what the last prune() did (groups, skipped, seconds)

    # -- planning -------------------------------------------------------------------------
    def group_ratio(self, group: ChannelGroup) -> float:
        """Removal ratio of ``group``: override, else (layer-dependent) sparsity."""
        for pattern, ratio in self.overrides.items():
            if names_matching(pattern, group.out_names):
                return ratio
        if self.layer_dependent:
            return layer_dependent_ratio(self.sparsity, group.width)
        return self.sparsity

    def group_keep(self, group: ChannelGroup) -> int:
        """Channels ``group`` keeps (rule in :mod:`.ratios`; grouped convs force multiples)."""
        q = self.round_to or 1
        q = q * group.divisor // math.gcd(q, group.divisor)
        return kept_channels(group.width, self.group_ratio(group), self.min_channels, q)

    def filter_scores(self, group: ChannelGroup) -> torch.Tensor:
        """Lp norm of each output filter of the group's root layer (vectorised)."""
        w = group.root.weight.detach()
        return w.flatten(1).float().norm(p=self.norm, dim=1)

    def pruned_indices(self, group: ChannelGroup, keep: int) -> List[int]:
        """Channels to remove: lowest scores; same positions in every chunk for grouped convs."""
        n_remove = group.width - keep
        if n_remove <= 0:
            return []
        scores = self.filter_scores(group)
        d = group.divisor
        per_chunk = group.width // d
        pos = scores.view(d, per_chunk).sum(0)
        drop = torch.argsort(pos, stable=True)[: n_remove // d].tolist()
        return sorted(c * per_chunk + j for c in range(d) for j in drop)

    def _check_patterns(self, backbone: nn.Module, trace) -> None:
        all_names = [n for n, _ in backbone.named_modules() if n]
        prunable_names = sorted({n for g in trace.prunable for n in g.out_names})
        for pattern in self.overrides:
            if not names_matching(pattern, all_names):
                raise ValueError(f"overrides: pattern '{pattern}' matches no module of "
                                 f'{type(backbone).__name__}')
            if not names_matching(pattern, prunable_names):
                raise ValueError(f"overrides: pattern '{pattern}' matches only modules whose channels "
                                 'are not prunable (they reach a backbone output or are skipped)')

    # -- pruning --------------------------------------------------------------------------
    def _prune_copy(self, work: nn.Module, example_inputs: torch.Tensor, ref_shapes,
                    check_each: bool, outputs=None):
        """Trace + prune ``work`` (a copy); returns the trace. Raises one line on failure."""
        ignore_names = []
        if self.ignore:
            all_names = [n for n, _ in work.named_modules() if n]
            for p in self.ignore:
                hit = names_matching(p, all_names)
                if not hit:
                    raise ValueError(f"ignore: pattern '{p}' matches no module of {type(work).__name__}")
                ignore_names += hit
        trace = trace_channel_groups(work, example_inputs, ignore_names, outputs, self.keep_residual,
                                     self.trace_time_limit)
        self._check_patterns(work, trace)
        kind = type(work).__name__
        if not trace.prunable and self.sparsity > 0:
            reasons = sorted({r.split(' (')[0] for _, r in trace.skipped})
            raise ValueError(f'backbone: {kind} has no prunable channel group; every group '
                             f'{" or ".join(reasons) or "is empty"}')
        for group in trace.prunable:
            idxs = self.pruned_indices(group, self.group_keep(group))
            if not idxs:
                continue
            try:
                handler = group.group[0].dep.handler
                pruning_group(trace.graph, group.root, handler, idxs, trace.barriers, trace.deadline,
                              lambda: f'removing channels of the group rooted at {group.root_name}').prune()
                if check_each:
                    shapes = check_outputs(run_backbone(work, example_inputs))
                    if shapes != ref_shapes:
                        raise RuntimeError(f'output shapes became {shapes}')
            except TraceTimeLimitError:
                raise
            except Exception as e:
                types = sorted({type(dep.target.module).__name__ for dep, _ in group.group
                                if isinstance(dep.target.module, nn.Module)})
                raise ValueError(
                    f'backbone: {kind} cannot be pruned: removing channels of the group rooted at '
                    f'{group.root_name} (coupling {", ".join(types)}) breaks it ({_one_line(e)}); '
                    f'exclude it with ignore=[{group.root_name!r}]') from None
        return trace

    def prune(self, backbone: nn.Module, example_inputs: torch.Tensor) -> dict:
        """Remove channels of ``backbone`` in place; returns its ChannelSpec (JSON-able dict).

        ``example_inputs``: a batch ``(N, C, H, W)`` the backbone accepts (values are unused,
        only the traced graph matters). Output shapes are guaranteed unchanged.
        """
        if not isinstance(example_inputs, torch.Tensor):
            raise ValueError(f'example_inputs: expected a torch.Tensor, got {type(example_inputs).__name__}')
        if not isinstance(backbone, nn.Module) or not any(True for _ in backbone.parameters()):
            raise ValueError('backbone: expected an nn.Module with parameters')
        start = time.perf_counter()
        device = next(backbone.parameters()).device
        example_inputs = example_inputs.to(device)
        ref_out = run_backbone(backbone, example_inputs)
        ref_shapes = check_outputs(ref_out)
        before = snapshot_shapes(backbone)
        flags = {n: p.requires_grad for n, p in backbone.named_parameters()}

        work = copy.deepcopy(backbone)
        trace = self._prune_copy(work, example_inputs, ref_shapes, check_each=False, outputs=ref_out)
        try:
            shapes = check_outputs(run_backbone(work, example_inputs, 'backbone'))
            ok = shapes == ref_shapes
        except ValueError:
            ok = False
        if not ok:  # find the group that broke it, on a fresh copy, for a useful message
            self._prune_copy(copy.deepcopy(backbone), example_inputs, ref_shapes, check_each=True)
            raise ValueError(f'backbone: pruning {type(backbone).__name__} changed its outputs')

        spec = extract_channel_spec(work, before)
        spec['backbone'] = type(backbone).__name__
        apply_channel_spec(backbone, spec)
        backbone.load_state_dict(work.state_dict(), strict=True)
        for n, p in backbone.named_parameters():
            p.requires_grad_(flags.get(n, True))
        self.report = dict(
            groups=[dict(root=g.root_name, width=g.width, keep=self.group_keep(g),
                         ratio=self.group_ratio(g)) for g in trace.prunable],
            skipped=list(trace.skipped), seconds=time.perf_counter() - start)
        return spec
