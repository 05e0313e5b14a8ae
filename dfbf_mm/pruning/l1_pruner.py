"""L1FilterPruner: structured Lp-norm filter pruning of a backbone, with real channel removal.

Each prunable dependency group (see :mod:`.channel_groups`) is scored by the Lp norm of its
root layer's output filters (p=1 as in the DFBF paper; p=2 ranks like the reference code's
sum of squares) and loses its lowest-scoring channels; the kept count follows
:mod:`.ratios`. The work is done on a deep copy: only when the copy runs and every output
keeps its shape are the new shapes and values moved into the caller's backbone, so a
backbone we cannot handle is refused with one line and left untouched.

With a ``target`` (``dict(macs=0.5)``: half the backbone's MACs removed; ``params=``,
``latency=``) the ratio is not given but found (:mod:`.target`); ``ranking='global'`` ranks the
channels of all groups together by their normalised group L1 norm instead of one ratio per group.
"""
import copy
import math
import time
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from mmengine.logging import print_log

from ..cost import CostModel, count_macs_params, measure_latencies
from ..registry import PRUNERS
from ..utils import first_line
from .channel_groups import ChannelGroup, check_outputs, flatten_outputs, run_backbone, trace_channel_groups
from .channel_spec import apply_channel_spec, extract_channel_spec, snapshot_shapes
from .group_search import TraceTimeLimitError
from .importance import filter_scores, group_scores
from .ratios import (check_pattern, check_sparsity, kept_channels, layer_dependent_ratio,
                     names_matching)
from .shuffle import prune_behind
from .target import (RANKINGS, THETA_MAX, bracket, check_target, global_ratios,
                     solve)

LATENCY_RUNS = 5      # timed forwards per latency measurement of a candidate
TARGET_TOL = 0.005    # a MACs / params estimate off the real count by more is corrected


def _one_line(e: BaseException) -> str:
    return f'{type(e).__name__}: {first_line(e, 160)}' 


# groups whose channel removal breaks the forward that a prune() keeps whole before it gives up
MAX_BROKEN_GROUPS = 8


class GroupBreaksError(ValueError):
    """Removing the channels of the group rooted at ``root`` breaks the backbone's forward."""

    def __init__(self, message: str, root: str, reason: str):
        super().__init__(message)
        self.root, self.reason = root, reason


def _tensors(m: nn.Module) -> dict:
    return {**dict(m.named_parameters()), **dict(m.named_buffers())}


def _copy_tensors(src: nn.Module, dst: nn.Module) -> None:
    """Every parameter and buffer of ``src`` into ``dst`` (same names and shapes), by name rather
    than through ``state_dict()``: a state-dict hook may leave keys out (SwinTransformerV2 drops
    its relative-position buffers, which a strict ``load_state_dict`` then reports missing)."""
    have, want = _tensors(src), _tensors(dst)
    if have.keys() != want.keys():
        raise RuntimeError(f'pruned copy and backbone differ in tensors: {sorted(have.keys() ^ want.keys())[:3]}')
    with torch.no_grad():
        for name, t in want.items():
            t.copy_(have[name])


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
        target: ``dict(macs=f)``, ``dict(params=f)`` or ``dict(latency=f)``: remove the fraction
            ``f`` of the backbone's MACs / parameters / CPU latency (measured here, batch of
            ``example_inputs``); the sparsity is then found (``sparsity`` is ignored) and
            ``report['target']`` says what was reached. A target past what pruning every
            group to ``min_channels`` (or ``max_ratio``) removes is a one-line error.
        ranking: ``'uniform'``: every group at the sparsity (or the DFBF width rule);
            ``'global'``: the sparsity fraction of all prunable channels is removed, the ones
            with the lowest normalised group L1 norm over all groups (Torch-Pruning's
            ``GroupMagnitudeImportance(p=norm)``), at most ``max_ratio`` of any group: the
            global pruning users of Torch-Pruning expect; on the digits benchmarks level with
            ``'uniform'`` for cls and pose, worse for det (docs/target_pruning.md).
        max_ratio: the most of a group's channels global ranking removes, in (0, 1].
    """

    def __init__(self, sparsity: float = 0.5, norm: int = 1, layer_dependent: bool = False,
                 overrides: Optional[Dict[str, float]] = None, ignore: Optional[Sequence[str]] = None,
                 min_channels: int = 1, round_to: Optional[int] = None, keep_residual: bool = True,
                 trace_time_limit: Optional[float] = 60.0, target: Optional[dict] = None,
                 ranking: str = 'uniform', max_ratio: float = 0.9):
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
        self.target = check_target(target)
        if ranking not in RANKINGS:
            raise ValueError(f'ranking: {ranking!r} is not one of {", ".join(RANKINGS)}')
        if ranking == 'global' and layer_dependent:
            raise ValueError("ranking: 'global' ranks across layers; it does not combine with layer_dependent=True")
        self.ranking = ranking
        if isinstance(max_ratio, bool) or not isinstance(max_ratio, (int, float)) or not 0 < max_ratio <= 1:
            raise ValueError(f'max_ratio: {max_ratio!r} is not a fraction in (0, 1]')
        self.max_ratio = float(max_ratio)
        self.report: dict = {}  # what the last prune() did (groups, skipped, seconds, target)
        self._broken: list = []  # groups kept whole because pruning them broke the forward
        self._theta = self.sparsity  # the ratio in use: sparsity, or the one a target search found


    # -- planning -------------------------------------------------------------------------
    def override_ratio(self, group: ChannelGroup) -> Optional[float]:
        for pattern, ratio in self.overrides.items():
            if names_matching(pattern, group.out_names):
                return ratio
        return None

    def group_ratio(self, group: ChannelGroup) -> float:
        """Removal ratio of ``group``: override, else the global-ranking share, else the
        (layer-dependent) sparsity (the one found for a target)."""
        ratio = self.override_ratio(group)
        if ratio is not None:
            return ratio
        if self.ranking == 'global':
            return getattr(group, 'global_ratio', 0.0)
        theta = getattr(group, 'theta', None)
        theta = self._theta if theta is None else theta
        if self.layer_dependent:
            return layer_dependent_ratio(theta, group.width)
        return theta

    def _set_theta(self, trace, theta: float, step_up=None) -> List[int]:
        """Use ratio ``theta`` (see :mod:`.target`); returns the kept count of every group.
        ``step_up=(theta_hi, j)``: the last ``j`` groups (deepest first) whose kept count differs
        at ``theta_hi`` use that ratio (a target between two steps of the uniform staircase:
        grouped convs move their widths in steps of their group count)."""
        self._theta = theta
        for g in trace.prunable:
            g.theta = None
        if step_up is not None and self.ranking != 'global':
            hi, j = step_up
            at_lo = [self.group_keep(g) for g in trace.prunable]
            self._theta = hi
            differ = [g for g, k in zip(trace.prunable, at_lo) if self.override_ratio(g) is None
                      and self.group_keep(g) != k]
            self._theta = theta
            for g in differ[::-1][:j]:
                g.theta = hi
        if self.ranking == 'global':
            free = [g for g in trace.prunable if self.override_ratio(g) is None]
            for g in free:  # scored once per trace, before any channel is removed
                if getattr(g, 'scores', None) is None:
                    g.scores = group_scores(g, self.norm)
            steps = [None if g.shuffle is None else g.shuffle.step_scores(g.scores, g.width) for g in free]
            ratios = global_ratios([g.scores for g in free], [g.divisor for g in free],
                                   theta, self.max_ratio, steps)
            for g, r in zip(free, ratios):
                g.global_ratio = r
        return [self.group_keep(g) for g in trace.prunable]

    def group_keep(self, group: ChannelGroup) -> int:
        """Channels ``group`` keeps (rule in :mod:`.ratios`; grouped convs force multiples; across
        a channel shuffle whole steps go, see :mod:`.shuffle`)."""
        q = self.round_to or 1
        if group.shuffle is not None:
            desired = kept_channels(group.width, self.group_ratio(group), self.min_channels)
            return group.shuffle.keep(desired, group.width, q)
        q = q * group.divisor // math.gcd(q, group.divisor)
        return kept_channels(group.width, self.group_ratio(group), self.min_channels, q)

    def filter_scores(self, group: ChannelGroup) -> torch.Tensor:
        """Lp norm of each output filter of the group's root layer (vectorised). Global ranking
        decides with the group norm how many channels each group loses; which ones is decided
        by this score under either ranking (the group norm can put every removed channel into
        one input slice of a concat, emptying the layer behind it: CSPNeXt)."""
        return filter_scores(group, self.norm)

    def pruned_indices(self, group: ChannelGroup, keep: int) -> List[int]:
        """Channels to remove: lowest scores; same positions in every chunk for grouped convs."""
        n_remove = group.width - keep
        if n_remove <= 0:
            return []
        scores = self.filter_scores(group)
        if group.shuffle is not None:  # channels in front of the shuffle (the root's)
            return group.shuffle.removed(scores, keep, group.width)
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
    def _trace(self, work: nn.Module, example_inputs: torch.Tensor, outputs=None):
        """Trace ``work`` (a copy) and check the patterns; returns the trace. One line on failure."""
        ignore_names = []
        if self.ignore:
            all_names = [n for n, _ in work.named_modules() if n]
            for p in self.ignore:
                hit = names_matching(p, all_names)
                if not hit:
                    raise ValueError(f"ignore: pattern '{p}' matches no module of {type(work).__name__}")
                ignore_names += hit
        ignore_names += [n for n, _ in self._broken]  # groups found to break the forward
        trace = trace_channel_groups(work, example_inputs, ignore_names, outputs, self.keep_residual,
                                     self.trace_time_limit)
        self._check_patterns(work, trace)
        if not trace.prunable and (self.sparsity > 0 or self.target):
            reasons = sorted({r.split(' (')[0] for _, r in trace.skipped})
            raise ValueError(f'backbone: {type(work).__name__} has no prunable channel group; every group '
                             f'{" or ".join(reasons) or "is empty"}')
        return trace

    def _remove(self, work: nn.Module, trace, keeps: Sequence[int], example_inputs: torch.Tensor,
                ref_shapes, check_each: bool) -> None:
        """Remove the lowest-scoring channels of every group of ``trace`` down to ``keeps``."""
        kind = type(work).__name__
        for group, keep in zip(trace.prunable, keeps):
            idxs = self.pruned_indices(group, keep)
            if not idxs:
                continue
            try:
                handler = group.group[0].dep.handler
                where = lambda: f'removing channels of the group rooted at {group.root_name}'  # noqa: E731
                trace.graph.get_pruning_group(group.root, handler, idxs, where=where).prune()
                behind = group.shuffle
                if behind is not None:  # the same channels behind the channel shuffle
                    prune_behind(trace.graph, trace.graph.get_pruning_group(
                        behind.root, behind.handler, behind.post_indices(idxs, group.width), where=where))
                if check_each:
                    shapes = check_outputs(run_backbone(work, example_inputs))
                    if shapes != ref_shapes:
                        raise RuntimeError(f'output shapes became {shapes}')
            except TraceTimeLimitError:
                raise
            except Exception as e:
                types = sorted({type(dep.target.module).__name__ for dep, _ in group.group
                                if isinstance(dep.target.module, nn.Module)})
                raise GroupBreaksError(
                    f'backbone: {kind} cannot be pruned: removing channels of the group rooted at '
                    f'{group.root_name} (coupling {", ".join(types)}) breaks it ({_one_line(e)}); '
                    f'exclude it with ignore=[{group.root_name!r}]', group.root_name,
                    f'breaks the forward when pruned (coupling {", ".join(types)}: {_one_line(e)})') from None

    def _prune_copy(self, work: nn.Module, example_inputs: torch.Tensor, ref_shapes,
                    check_each: bool, outputs=None):
        """Trace + prune ``work`` (a copy) at the current ratio; returns (trace, keeps)."""
        trace = self._trace(work, example_inputs, outputs)
        keeps = self._set_theta(trace, self._theta)
        self._remove(work, trace, keeps, example_inputs, ref_shapes, check_each)
        return trace, keeps

    def _check_copy(self, backbone, work, example_inputs, ref_shapes) -> None:
        """One line unless the pruned copy ``work`` runs with the output shapes of ``backbone``."""
        try:
            shapes = check_outputs(run_backbone(work, example_inputs, 'backbone'))
            ok = shapes == ref_shapes
        except ValueError:
            ok = False
        if not ok:  # find the group that broke it, on a fresh copy, for a useful message
            self._prune_copy(copy.deepcopy(backbone), example_inputs, ref_shapes, check_each=True)
            raise ValueError(f'backbone: pruning {type(backbone).__name__} changed its outputs')

    def _unreachable(self, kind: str, metric: str, goal: float, best: float) -> ValueError:
        limit = f'max_ratio={self.max_ratio:g}' if self.ranking == 'global' else f'min_channels={self.min_channels}'
        return ValueError(f'target: {metric}={goal:g} cannot be reached on {kind}: pruning every prunable '
                          f'group as far as it goes ({limit}, ignore, keep_residual) removes {best:.1%} '
                          f'of its {metric}; ask for at most {math.floor(best * 1000) / 1000:g}')

    def _search(self, backbone: nn.Module, x: torch.Tensor, ref_shapes, ref_out):
        """A copy of ``backbone`` pruned to the target: (work, trace, keeps, reached cut)."""
        metric, goal = self.target
        kind = type(backbone).__name__
        tried = {}

        def prune_at(theta):
            work = copy.deepcopy(backbone)
            trace = self._trace(work, x, ref_out)
            keeps = self._set_theta(trace, theta)
            self._remove(work, trace, keeps, x, ref_shapes, check_each=False)
            return work, trace, keeps

        if metric == 'latency':  # measured: every candidate pruned and timed against the unpruned one
            def cut(theta):
                if theta not in tried:
                    work, trace, keeps = prune_at(theta)
                    self._check_copy(backbone, work, x, ref_shapes)
                    t_ref, t = measure_latencies([backbone, work], x, LATENCY_RUNS)
                    tried[theta] = (work, trace, keeps, 1 - t / t_ref)
                return tried[theta][3]
            if cut(THETA_MAX) < goal - 0.01:
                raise self._unreachable(kind, metric, goal, tried[THETA_MAX][3])
            theta, _ = solve(cut, goal, iters=6, tol=0.01)
            return (*tried[theta], theta, None)

        which = 0 if metric == 'macs' else 1
        base = count_macs_params(backbone, x)[which]
        aim, best = goal, None
        for attempt in range(3):  # estimate, prune, count; correct the aim when the estimate is off
            work = copy.deepcopy(backbone)
            trace = self._trace(work, x, ref_out)
            costs = CostModel(work, x, trace)

            def est(theta, trace=trace, costs=costs):
                return 1 - costs.estimate(self._set_theta(trace, theta))[which] / base
            if attempt == 0 and est(THETA_MAX) < goal - TARGET_TOL:
                raise self._unreachable(kind, metric, goal, est(THETA_MAX))
            lo, c_lo, hi, c_hi = bracket(est, aim)
            theta, mix = (lo if aim - c_lo <= c_hi - aim else hi), None
            if self.ranking != 'global' and c_lo < aim < c_hi:  # between two steps: mix them
                def est_mix(j, trace=trace, costs=costs, lo=lo, hi=hi):
                    return 1 - costs.estimate(self._set_theta(trace, lo, (hi, j)))[which] / base
                j = min(range(len(trace.prunable) + 1), key=lambda j: abs(est_mix(j) - aim))
                theta, mix = lo, (hi, j)
            keeps = self._set_theta(trace, theta, mix)
            self._remove(work, trace, keeps, x, ref_shapes, check_each=False)
            self._check_copy(backbone, work, x, ref_shapes)
            real = 1 - count_macs_params(work, x)[which] / base
            if best is None or abs(real - goal) < abs(best[3] - goal):
                best = (work, trace, keeps, real, theta, mix)
            if abs(real - goal) <= TARGET_TOL or not 0 < aim + goal - real < 1:
                break
            aim += goal - real
        return best

    def prune(self, backbone: nn.Module, example_inputs: torch.Tensor) -> dict:
        """Remove channels of ``backbone`` in place; returns its ChannelSpec (JSON-able dict).

        ``example_inputs``: a batch ``(N, C, H, W)`` the backbone accepts (values are unused,
        only the traced graph matters; MACs and latency of a target are measured on it).
        Output shapes are guaranteed unchanged.
        """
        if not isinstance(example_inputs, torch.Tensor):
            raise ValueError(f'example_inputs: expected a torch.Tensor, got {type(example_inputs).__name__}')
        if not isinstance(backbone, nn.Module) or not any(True for _ in backbone.parameters()):
            raise ValueError('backbone: expected an nn.Module with parameters')
        start = time.perf_counter()
        device = next(backbone.parameters()).device
        example_inputs = example_inputs.to(device)
        ref_out = run_backbone(backbone, example_inputs)
        if len(example_inputs) == 1 and any(t.dim() == 1 for t in flatten_outputs(ref_out)):
            # a batch of one squeezed away (LeNet5's ``classifier(x.squeeze())``): trace two
            example_inputs = example_inputs.expand(2, *example_inputs.shape[1:]).clone()
            ref_out = run_backbone(backbone, example_inputs)
        ref_shapes = check_outputs(ref_out)
        before = snapshot_shapes(backbone)
        flags = {n: p.requires_grad for n, p in backbone.named_parameters()}
        self._theta = self.sparsity

        reached = None
        self._broken = []  # (root, reason) of groups whose removal broke the forward: kept whole
        first_break = None
        while True:
            try:
                if self.target:
                    work, trace, keeps, reached, theta, mix = self._search(
                        backbone, example_inputs, ref_shapes, ref_out)
                    self._set_theta(trace, theta, mix)
                else:
                    work = copy.deepcopy(backbone)
                    trace, keeps = self._prune_copy(work, example_inputs, ref_shapes, check_each=False,
                                                    outputs=ref_out)
                self._check_copy(backbone, work, example_inputs, ref_shapes)
                break
            except GroupBreaksError as e:  # e.g. DetectoRS's weight-standardised conv1: keep it
                if len(self._broken) >= MAX_BROKEN_GROUPS or any(n == e.root for n, _ in self._broken):
                    raise
                self._broken.append((e.root, e.reason))
                first_break = first_break or e
            except ValueError as e:
                if first_break is not None and 'has no prunable channel group' in str(e):
                    raise first_break from None  # nothing is left once the breaking groups are kept
                raise

        spec = extract_channel_spec(work, before)
        spec['backbone'] = type(backbone).__name__
        apply_channel_spec(backbone, spec)
        _copy_tensors(work, backbone)
        for n, p in backbone.named_parameters():
            p.requires_grad_(flags.get(n, True))
        self.report = dict(
            groups=[dict(root=g.root_name, width=g.width, keep=k, ratio=self.group_ratio(g))
                    for g, k in zip(trace.prunable, keeps)],
            skipped=list(trace.skipped) + list(self._broken), seconds=time.perf_counter() - start,
            ranking=self.ranking)
        if self.target:
            metric, goal = self.target
            self.report['target'] = dict(metric=metric, target=goal, reached=reached, sparsity=self._theta)
            print_log(f'{type(self).__name__}: target {metric} -{goal:.1%} of {type(backbone).__name__}: '
                      f'reached -{reached:.1%} ({self.ranking} ranking, sparsity {self._theta:.3f}, '
                      f'{sum(g.width - k for g, k in zip(trace.prunable, keeps))} channels removed '
                      f'in {len(trace.prunable)} groups)', logger='current')
        return spec
