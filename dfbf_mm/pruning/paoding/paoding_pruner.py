"""PaodingPruner: progressive, stochastic, robustness-preserving data-free pruning of dense units.

Meng et al., "Supervised Robustness-preserving Data-free Neural Network Pruning" (ICECCS 2023),
re-implemented from the description in docs/specs (no data is used for any decision):

1. value intervals of every hidden unit from an assumed input box (:mod:`.intervals`),
2. candidate pairs of the same layer in ascending pair saliency, disjoint (:mod:`.saliency`),
3. each candidate's robustness impact at the output, score from L and ENT (:mod:`.impact`),
4. selection -- ``'stochastic'``: simulated-annealing acceptance (the paper's method);
   ``'impact'``: greedy best scores out of a pool; ``'baseline'``: lowest saliency, one shot,
5. accepted pairs are merged (:mod:`.merge`), intervals recomputed, the next layer handled;
   steps repeat until every pruned layer lost ``target`` of its original width.

Units are masked (dead, exactly equivalent) during the loop and physically removed at the end.
``prune`` returns the channel spec of the pruned module (like every pruner in ``PRUNERS``); the
per-step records are in ``pruner.records``.
"""
import math
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
from mmengine.logging import print_log
from tqdm import tqdm

from dfbf_mm.registry import PRUNERS
from ..channel_spec import extract_channel_spec, snapshot_shapes
from .chain import DenseChain, find_dense_chains, trace_leaves
from .conv_blocks import ConvBlock, find_conv_blocks, folded_affine
from .impact import DEFAULT_ALPHA, Downstream, impact_score, merge_delta, propagate_delta
from .intervals import (Box, act_box, interval_batchnorm, interval_conv, interval_linear, interval_module,
                        is_supported)
from .merge import merge_units, remove_units
from .saliency import disjoint_pairs, saliency_matrix
from ...utils import pattern_matches

MODES = ('stochastic', 'baseline', 'impact')
TEMPERATURES = ('linear', 'literal')
RangeLike = Union[float, Sequence[float], torch.Tensor]


@PRUNERS.register_module()
class PaodingPruner:
    """Prune hidden units of Linear+ReLU/Sigmoid layers by data-free pair merging.

    Args:
        target: fraction of each pruned layer's original width to remove, in (0, 1).
        step: fraction of the original width removed per progressive step (<= target);
            ignored by ``mode='baseline'`` (one shot).
        mode: 'stochastic' (simulated annealing, the paper), 'impact' (greedy over a pool of
            ``pool_multiplier`` x needed pairs) or 'baseline' (lowest saliency, one shot;
            disjoint pairs cap it at 50 %).
        alpha: weight of logistic(L) in the score; None = 0.75 for a ReLU layer, 0.05 for sigmoid.
        input_range: ``(lo, hi)``, scalars or per-feature tensors broadcastable to the input of
            the interval start (the model input, or the first Linear when the front cannot be
            propagated soundly -- see ``interval_start``).
        recursive: a unit that absorbed another may absorb / be merged again in a later step
            (needed to prune beyond 50 %); otherwise both units of a merged pair are frozen.
        seed: seeds the acceptance draws; same seed, model and arguments -> same merges.
        temperature: 'linear' = T = 1.01 - progress, progress = share of the layer's pruning
            target reached (the intended schedule); 'literal' = the authors' tool's expression,
            where progress is the share of the layer's units already touched or paired, which
            keeps T near 0.01 from the start.
        saliency_outgoing: 'removed' (default; the moved weights, as in Srinivas & Babu) or
            'kept' (the tool's choice) outgoing weights in the pair saliency.
        layers: fnmatch patterns of hidden Linear names to prune; None = every hidden layer.
        theta: similarity threshold of ENT.
        interval_start: 'auto' (from the model input when every op before the dense chain is
            sequential and supported, else from the first Linear), 'input' or 'dense'.
        conv_blocks: also prune the inner channels of ``conv -> [BN] -> ReLU/Sigmoid -> conv``
            blocks (our extension, see :mod:`.conv_blocks`; decisions use the BN folded into the
            conv, the model keeps its BN).

    Interface of ``PRUNERS``: ``spec = pruner.prune(module, example_input)`` prunes ``module``
    in place (a backbone, or a whole model such as an ``ImageClassifier`` to reach its head)
    and returns its channel spec; ``pruner.records`` holds the per-step records.
    """

    def __init__(self, target: float = 0.5, step: float = 0.05, mode: str = 'stochastic',
                 alpha: Optional[float] = None, input_range: Tuple[RangeLike, RangeLike] = (0.0, 1.0),
                 recursive: bool = False, seed: int = 42, temperature: str = 'linear',
                 saliency_outgoing: str = 'removed', layers: Optional[Sequence[str]] = None,
                 theta: float = 0.9, pool_multiplier: int = 2, interval_start: str = 'auto',
                 max_walks: int = 10, conv_blocks: bool = False):
        if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target < 1:
            raise ValueError(f'target: {target!r} must be a ratio strictly between 0 and 1')
        if mode not in MODES:
            raise ValueError(f'mode: {mode!r} is not one of {", ".join(MODES)}')
        if mode != 'baseline' and (isinstance(step, bool) or not isinstance(step, (int, float))
                                   or step <= 0):
            raise ValueError(f'step: {step!r} must be a positive ratio')
        if mode != 'baseline' and step > target:
            raise ValueError(f'step: {step} is larger than the target {target}')
        if alpha is not None and not 0 <= alpha <= 1:
            raise ValueError(f'alpha: {alpha!r} must lie in [0, 1]')
        if temperature not in TEMPERATURES:
            raise ValueError(f'temperature: {temperature!r} is not one of {", ".join(TEMPERATURES)}')
        if saliency_outgoing not in ('removed', 'kept'):
            raise ValueError(f"saliency_outgoing: {saliency_outgoing!r} is not one of 'removed', 'kept'")
        if interval_start not in ('auto', 'input', 'dense'):
            raise ValueError(f"interval_start: {interval_start!r} is not one of 'auto', 'input', 'dense'")
        if not isinstance(input_range, (tuple, list)) or len(input_range) != 2:
            raise ValueError(f'input_range: {input_range!r} must be a pair (lo, hi)')
        lo, hi = (torch.as_tensor(v, dtype=torch.float64) for v in input_range)
        if bool((lo > hi).any()):
            raise ValueError(f'input_range: lo must not exceed hi, got {input_range!r}')
        if pool_multiplier < 1:
            raise ValueError(f'pool_multiplier: {pool_multiplier!r} must be >= 1')
        if layers is not None and isinstance(layers, str):
            layers = [layers]
        self.target, self.step, self.mode, self.alpha = float(target), float(step), mode, alpha
        self.input_lo, self.input_hi = lo, hi
        self.recursive, self.seed, self.temperature = bool(recursive), int(seed), temperature
        self.saliency_outgoing, self.layers, self.theta = saliency_outgoing, layers, float(theta)
        self.pool_multiplier, self.interval_start, self.max_walks = int(pool_multiplier), interval_start, int(max_walks)
        self.conv_blocks = bool(conv_blocks)
        self._warned = set()
        self.records: List[dict] = []  # what the last prune() did, one record per step

    # ------------------------------------------------------------------ set-up
    def _example_input(self, model: nn.Module, example_input: Optional[torch.Tensor]) -> torch.Tensor:
        param = next(model.parameters())
        if example_input is not None:
            return example_input[:1].to(param.device, param.dtype)
        first = next((m for m in model.modules() if len(list(m.children())) == 0), None)
        if not isinstance(first, nn.Linear):
            raise ValueError('example_input: required for a model whose first layer is not nn.Linear')
        mid = ((self.input_lo + self.input_hi) / 2).expand(first.in_features)
        return mid.view(1, -1).to(param.device, param.dtype)

    def _prefix_box(self, steps, idx: int, x: torch.Tensor, name: str) -> Optional[Box]:
        """Box (float64, batch 1) of the input of ``steps[idx]`` propagated from the model input,
        or None when ``interval_start='dense'`` or the ops before it cannot be propagated soundly."""
        prefix = steps[:idx + 1]
        from_input = all(s.sequential for s in prefix) and all(is_supported(s.module) for s in prefix[:-1])
        if self.interval_start == 'input' and not from_input:
            bad = next((s for s in prefix if not s.sequential or not is_supported(s.module)), prefix[-1])
            raise ValueError(f'interval_start: cannot propagate intervals from the input through '
                             f'{bad.name!r} ({type(bad.module).__name__}); use interval_start="dense"')
        if self.interval_start == 'dense' or not from_input:
            if self.interval_start == 'auto' and name not in self._warned:
                self._warned.add(name)
                print_log(f'Paoding: the ops before {name!r} cannot be propagated soundly; '
                          f'input_range is taken as the range of its input', logger='current')
            return None
        try:
            lo, hi = (_per_channel(t, x.dim()).to(x.device) + torch.zeros_like(x, dtype=torch.float64)
                      for t in (self.input_lo, self.input_hi))
            lo, hi = lo.expand_as(x), hi.expand_as(x)
        except RuntimeError:
            raise ValueError(f'input_range: shape {tuple(self.input_lo.shape)} does not broadcast to '
                             f'the input shape {tuple(x.shape[1:])}') from None
        for s in prefix[:-1]:
            shape = (1, ) + tuple(s.in_shape[1:])
            lo, hi = interval_module(lo.reshape(shape), hi.reshape(shape), _double(s.module))
        shape = (1, ) + tuple(prefix[-1].in_shape[1:])
        return lo.reshape(shape), hi.reshape(shape)

    def _range_box(self, shape: tuple, per: int, name: str, device) -> Box:
        """``input_range`` broadcast to ``shape``; a 1-d range applies per feature/channel (dim 1)."""
        lo, hi = _per_channel(self.input_lo, len(shape)), _per_channel(self.input_hi, len(shape))
        try:
            return (lo.expand(shape[1:]).reshape(shape).clone().to(device),
                    hi.expand(shape[1:]).reshape(shape).clone().to(device))
        except RuntimeError:
            raise ValueError(f'input_range: shape {tuple(self.input_lo.shape)} does not fit the '
                             f'{per} inputs of {name!r}') from None

    def _chain_input_box(self, steps, chain: DenseChain, x: torch.Tensor) -> Box:
        """Box of the first Linear's input features (hull over tokens), float64."""
        first = chain.linears[0]
        box = self._prefix_box(steps, chain.first_step, x, chain.names[0])
        if box is None:
            lo, hi = self._range_box((1, first.in_features), first.in_features, chain.names[0],
                                     first.weight.device)
            return lo[0], hi[0]
        shape = (-1, first.in_features)
        return box[0].reshape(shape).min(0).values, box[1].reshape(shape).max(0).values

    def _conv_channel_box(self, steps, block: ConvBlock, x: torch.Tensor) -> Box:
        """Box of every conv1 output channel after the activation, hull over pixels."""
        box = self._prefix_box(steps, block.first_step, x, block.name)
        if box is None:
            shape = (1, ) + tuple(steps[block.first_step].in_shape[1:])
            box = self._range_box(shape, block.conv1.in_channels, block.name, block.conv1.weight.device)
        z = interval_conv(box[0], box[1], block.conv1)
        if block.bn is not None:
            z = interval_batchnorm(z[0], z[1], block.bn)
        h = act_box(z[0], z[1], block.act)
        return h[0].amin(dim=(0, 2, 3)), h[1].amax(dim=(0, 2, 3))

    # ------------------------------------------------------------------ intervals
    @staticmethod
    def _chain_boxes(chain: DenseChain, in_box: Box):
        """Pre-activation (z) and post-activation (h) boxes of every Linear of the chain."""
        zs, hs, x = [], [], in_box
        for k, lin in enumerate(chain.linears):
            w = lin.weight.detach().double()
            b = lin.bias.detach().double() if lin.bias is not None else None
            z = interval_linear(x[0], x[1], w, b)
            zs.append(z)
            x = act_box(z[0], z[1], chain.acts[k]) if k < len(chain.acts) else z
            hs.append(x)
        return zs, hs

    # ------------------------------------------------------------------ selection
    def _temperature(self, removed: int, accepted: int, need: int, touched: int, n: int) -> float:
        if self.temperature == 'linear':
            progress = (removed + accepted) / max(need, 1)
        else:  # the tool: share of units already manipulated (paired, merged or frozen)
            progress = touched / n
        return max(1.01 - progress, 0.01)

    def _select(self, pairs, quota, score_fn, state, rng) -> List[tuple]:
        """Accepted ``(removed, kept, saliency, score)`` tuples for one layer and one step.

        ``score_fn(pairs, cum)`` scores a batch of pairs, each on top of the change ``cum`` of
        the merges already accepted in this step, and returns (scores, change boxes).
        """
        if self.mode == 'baseline':
            return [(r, k, s, float('nan')) for r, k, s in pairs[:quota]]
        if self.mode == 'impact':
            pool = pairs[:quota * self.pool_multiplier]
            scores = score_fn(pool, None)[0].tolist()
            order = sorted(range(len(pool)), key=lambda i: (scores[i], i))[:quota]
            return [pool[i] + (scores[i], ) for i in order]
        accepted, cum, seen = [], None, {}
        touched = state['touched'] + 2 * len(pairs)
        for _ in range(self.max_walks):
            cand = [p for p in pairs if (p[0], p[1]) not in {(a[0], a[1]) for a in accepted}]
            pos, scores = 0, None
            while pos < len(cand) and len(accepted) < quota:
                if scores is None:  # (re)score the rest once the accumulated change moved
                    base = pos
                    scores, deltas = score_fn(cand[base:], cum)
                    scores = scores.tolist()
                r, k, s = cand[pos]
                score = scores[pos - base]
                seen[(r, k)] = (s, score)
                tgt = state['target_score']
                ok = tgt is None or score <= tgt
                if not ok:
                    t = self._temperature(state['removed'], len(accepted), state['need'], touched, state['n'])
                    ok = rng.random() < math.exp(-(score - tgt) / t)
                if ok:
                    state['target_score'] = score
                    accepted.append((r, k, s, score))
                    cum = (deltas[0][pos - base], deltas[1][pos - base])
                    scores = None
                pos += 1
            if len(accepted) >= quota:
                return accepted
        # walks exhausted: fill greedily with the best-scored rejected pairs (documented deviation)
        done = {(a[0], a[1]) for a in accepted}
        rest = sorted(((r, k, s, sc) for (r, k), (s, sc) in seen.items() if (r, k) not in done),
                      key=lambda t: t[3])
        return accepted + rest[:quota - len(accepted)]

    # ------------------------------------------------------------------ main
    def prune(self, model: nn.Module, example_input: Optional[torch.Tensor] = None,
              evaluate: Optional[Callable[[nn.Module], dict]] = None) -> dict:
        """Prune ``model`` in place; returns its channel spec (JSON-able, see ``channel_spec``).

        ``example_input``: one input batch in the model's (normalised) input space, used to
        trace the model; required unless the first layer is a Linear. ``evaluate(model)`` is
        called before pruning and after every step. ``self.records`` gets one record per step
        (step 0 = before pruning). Each record: ``step``, ``ratio`` (share of the pruned layers'
        original units removed), ``widths`` (live units per hidden layer), ``merged`` ({layer:
        [[removed, kept, score]]}, original indices) and ``metrics`` (``evaluate(model)`` if
        given). The last record also holds ``kept`` ({layer: kept original indices}) after
        physical removal.
        """
        if not isinstance(model, nn.Module) or not any(True for _ in model.parameters()):
            raise ValueError(f'model: expected an nn.Module with parameters, got {type(model).__name__}')
        if example_input is not None and not isinstance(example_input, torch.Tensor):
            raise ValueError(f'example_input: expected a torch.Tensor, got {type(example_input).__name__}')
        x = self._example_input(model, example_input)
        self._warned = set()
        before = snapshot_shapes(model)
        steps = trace_leaves(model, x)
        blocks = find_conv_blocks(steps, self.layers) if self.conv_blocks else []
        chains = find_dense_chains(steps, self.layers, required=not blocks)
        if self.layers is not None and blocks:
            names = [b.name for b in blocks] + [n for c in chains for n, ok in zip(c.names, c.prunable) if ok]
            for p in self.layers:
                if not any(pattern_matches(p, n) for n in names):
                    raise ValueError(f'layers: pattern {p!r} matches no prunable Linear or conv block')
        rng = np.random.default_rng(self.seed)

        layers = []  # per unit group (hidden Linear or conv1 of a block): modules, boxes, state
        for c in chains:
            for li, ok in enumerate(c.prunable):
                if ok:
                    def boxes(c=c, li=li):
                        zs, hs = self._chain_boxes(c, self._chain_input_box(steps, c, x))
                        return hs[li], Downstream(zs[li + 1:-1], c.acts[li + 1:],
                                                  [m.weight.detach().double() for m in c.linears[li + 2:]])
                    layers.append(dict(name=c.names[li], layer=c.linears[li], next=c.linears[li + 1],
                                       act=c.acts[li], boxes=boxes))
        for b in blocks:
            layers.append(dict(name=b.name, layer=b.conv1, norm=b.bn, next=b.conv2, act=b.act,
                               boxes=lambda b=b: (self._conv_channel_box(steps, b, x), Downstream([], [], []))))
        for st in layers:
            n = st['layer'].weight.shape[0]
            st.update(n=n, need=int(math.floor(self.target * n + 1e-9)), alive=torch.ones(n, dtype=torch.bool),
                      frozen=torch.zeros(n, dtype=torch.bool), removed=0, touched=0, target_score=None)
        total = sum(s['n'] for s in layers)
        if self.target > 0.5 and (self.mode == 'baseline' or not self.recursive):
            print_log(f'Paoding: target {self.target} > 0.5 but disjoint merges without recursive '
                      f'mode stop at 50 % of each layer', logger='current', level=30)

        def record(k, merged):
            rec = dict(step=k, ratio=sum(s['removed'] for s in layers) / total,
                       widths={s['name']: int(s['alive'].sum()) for s in layers}, merged=merged)
            rec['metrics'] = evaluate(model) if evaluate is not None else None
            return rec

        records = [record(0, {})]
        n_steps = 1 if self.mode == 'baseline' else math.ceil(self.target / self.step - 1e-9)
        bar = tqdm(total=n_steps, desc=f'Paoding {self.mode}', leave=False)
        k = 0
        while True:
            k += 1
            merged = {}
            for st in layers:
                if st['removed'] >= st['need']:
                    continue
                quota = st['need'] - st['removed']
                if self.mode != 'baseline':
                    quota = min(math.ceil(self.step * st['n'] - 1e-9), quota)
                acc = self._prune_layer(st, quota, rng)
                if acc:
                    merged[st['name']] = [[r, kk, sc] for r, kk, _, sc in acc]
            bar.update(1)
            if not merged:
                break  # nothing left that can be merged
            records.append(record(k, merged))
            if self.mode == 'baseline' or all(s['removed'] >= s['need'] for s in layers):
                break
        bar.close()

        kept = {}
        for st in layers:
            keep = torch.nonzero(st['alive']).flatten().tolist()
            kept[st['name']] = keep
            if len(keep) < st['n']:
                remove_units(st['layer'], st['next'], keep, norm=st.get('norm'))
        records[-1]['kept'] = kept
        self.records = records
        spec = extract_channel_spec(model, before)
        # given a whole model (a classifier: backbone and head), the spec is of the model
        spec['root'] = 'model' if isinstance(getattr(model, 'backbone', None), nn.Module) else 'backbone'
        return spec

    def _prune_layer(self, st: dict, quota: int, rng) -> List[tuple]:
        """Select and merge up to ``quota`` pairs in one unit group; updates ``st``."""
        lin, nxt = st['layer'], st['next']
        eligible = st['alive'] & ~st['frozen']
        # a unit's incoming map: its filter and bias, with a conv block's BN folded in
        w_in, bias = folded_affine(lin, st.get('norm'))
        # units on dim 0 of the layer's weight, dim 1 of the next one's (Linear or conv)
        w_out = nxt.weight.detach().double()
        s = saliency_matrix(w_in.flatten(1), bias, w_out.transpose(0, 1).flatten(1).T,
                            self.saliency_outgoing)
        pairs = disjoint_pairs(s, eligible.to(s.device))
        if not pairs:
            return []
        h, down = st['boxes']()
        alpha = self.alpha if self.alpha is not None else DEFAULT_ALPHA[st['act']]

        def score_fn(batch, cum):
            removed = torch.tensor([p[0] for p in batch], device=w_out.device)
            kept = torch.tensor([p[1] for p in batch], device=w_out.device)
            d = merge_delta(h, w_out, removed, kept)
            if cum is not None:  # impact of each merge on top of those accepted in this step
                d = (d[0] + cum[0], d[1] + cum[1])
            return impact_score(propagate_delta(d, down), alpha, self.theta)[0], d

        acc = self._select(pairs, quota, score_fn, st, rng)
        for r, kk, _, _ in acc:
            merge_units(lin, nxt, r, kk)
            st['alive'][r] = False
            st['removed'] += 1
            if not self.recursive:
                st['frozen'][kk] = True
        st['touched'] = int((~st['alive']).sum() + st['frozen'].sum())
        return acc


def _per_channel(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """A 1-d range applies per channel (dim 1) of an input with spatial dims (``ndim`` > 2)."""
    return t.view(-1, *([1] * (ndim - 2))) if t.dim() == 1 and ndim > 2 else t


def _double(module: nn.Module) -> nn.Module:
    """A float64 view of ``module`` for interval propagation (copies parameters once)."""
    import copy
    return copy.deepcopy(module).double()
