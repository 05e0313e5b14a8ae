"""What a backbone costs, measured once for pruning targets and the export's profile alike.

MACs and params are counted by :func:`count_macs_params` (Torch-Pruning's counter, layers
matched by ``isinstance``); :class:`CostModel` estimates them for a choice of kept channels per
prunable group from the same per-layer count (the pruner's MACs / params targets,
``pruning/target.py``); :func:`measure_latencies` times models in turns (latency targets and the
profile table, ``export/profile.py``). Pruning and export both import it; it imports neither.
"""
import contextlib
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning.utils import op_counter

from .utils import eval_mode


def _subclass_hooks(model: nn.Module) -> dict:
    """{type: counter hook} for the layer types of ``model`` that are subclasses of a type
    Torch-Pruning's counter knows but not such a type themselves (it matches ``type(m)``
    exactly, so e.g. mmcv's ``Linear`` of transformer FFNs or the ``Conv2dAdaptivePadding`` of
    EfficientNet would count 0 MACs); each gets the hook of its nearest known base class."""
    known = op_counter.MODULES_MAPPING
    extra = {}
    for m in model.modules():
        t = type(m)
        if t in known or t in extra:
            continue
        base = next((b for b in t.__mro__[1:] if b in known), None)
        if base is not None:
            extra[t] = known[base]
    return extra


@contextlib.contextmanager
def _attention_inputs_by_keyword(model: nn.Module):
    """Torch-Pruning's ``nn.MultiheadAttention`` counter unpacks ``(q, k, v)`` from the
    positional inputs; mmcv's attention (PVT, DETR-style necks) passes them as keywords, so
    the counter would fail. Inside, such calls are counted from their keyword q/k/v."""
    known = op_counter.MODULES_MAPPING[nn.MultiheadAttention]
    calls, handles = {}, []

    def remember(module, args, kwargs):
        calls[id(module)] = args if len(args) >= 3 else tuple(
            [*args, *(kwargs.get(k) for k in ('query', 'key', 'value')[len(args):])])

    def count(module, inputs, output):
        return known(module, inputs if len(inputs) >= 3 else calls.get(id(module), inputs), output)

    for m in model.modules():
        if isinstance(m, nn.MultiheadAttention):
            handles.append(m.register_forward_pre_hook(remember, with_kwargs=True))
    try:
        yield {nn.MultiheadAttention: count} if handles else {}
    finally:
        for h in handles:
            h.remove()


def _linear_hook(images: int):
    """Torch-Pruning's ``nn.Linear`` count with the bias once per image instead of once per call
    (as at batch 1), so that a token model's MACs per image do not depend on the batch."""
    def count(module, inputs, output):
        op_counter.linear_flops_counter_hook(module, inputs, output)
        if module.bias is not None:
            module.__flops__ += (images - 1) * output.shape[-1]
    return count


def _count(backbone: nn.Module, inputs: torch.Tensor, layer_wise: bool = False):
    """``torch_pruning.utils.count_ops_and_params`` with layers matched by ``isinstance`` (the one
    place MACs are counted): a subclass of a counted layer type (conv, linear, norm, activation,
    pooling ...) is counted like its base class, and keyword-called attention from its q/k/v. A
    counted layer is counted once per call, as itself: the layers inside it are not added again,
    so a conv subclass that wraps another conv counts once. Eval mode, no gradients. MACs per
    image, the per-layer ones too (Torch-Pruning divides only the total by the batch)."""
    saved, images = op_counter.CUSTOM_MODULES_MAPPING, len(inputs)
    hooks = {nn.Linear: op_counter.linear_flops_counter_hook, **_subclass_hooks(backbone)}
    linear = _linear_hook(images)
    try:
        with eval_mode(backbone), torch.no_grad(), _attention_inputs_by_keyword(backbone) as attention:
            # count_ops_and_params reads this module global and resets it to {} when it is done
            op_counter.CUSTOM_MODULES_MAPPING = {
                **{t: linear if h is op_counter.linear_flops_counter_hook else h for t, h in hooks.items()},
                **attention, **saved}
            out = tp.utils.count_ops_and_params(backbone, inputs, layer_wise=layer_wise)
    finally:
        op_counter.CUSTOM_MODULES_MAPPING = saved
    if layer_wise:
        macs, params, layer_macs, layer_params = out
        out = macs, params, {m: v if v is None else v / images for m, v in layer_macs.items()}, layer_params
    return out


def count_macs_params(backbone: nn.Module, inputs: torch.Tensor) -> Tuple[int, int]:
    """(MACs, params) of one forward of ``inputs`` (see :func:`_count`)."""
    macs, params = _count(backbone, inputs)
    return int(macs), int(params)


def _counter_types(backbone: nn.Module) -> dict:
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

    Each counted layer's MACs (:func:`_count` per layer, as :func:`count_macs_params` counts)
    and each parameter tensor are scaled by the kept fraction of the layer's output channels
    times that of its input channels (a depthwise conv,
    BN or bias by one of them); a parameter-free layer (activation, pooling) follows the layer
    that produced its input. Which group removes which layer's channels, and how many of them
    per group channel, comes from the group's Torch-Pruning items.
    """

    def __init__(self, backbone: nn.Module, example: torch.Tensor, trace):
        types = _counter_types(backbone)
        macs, params, layer_macs, _ = _count(backbone, example, layer_wise=True)  # per image
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


SPREAD_BOUND = 0.2


def time_in_turns(fns: Sequence[Callable[[], object]], runs: int = 5, warmup: int = 2,
                  sync: Callable[[], None] = lambda: None) -> List[List[float]]:
    """Seconds of each of ``runs`` calls of every function in ``fns``, after ``warmup`` untimed
    rounds. The functions take turns, one call each per round, so drift of the machine (other
    load, clocks, caches) hits all of them alike instead of biasing whichever runs later."""
    times = [[] for _ in fns]
    for i in range(warmup + runs):
        for k, fn in enumerate(fns):
            sync()
            t = time.perf_counter()
            fn()
            sync()
            if i >= warmup:
                times[k].append(time.perf_counter() - t)
    return times


def timing_spread(times: Sequence[float]) -> float:
    """(p90 - p10) / median of repeated timings (0 for fewer than 2): how much the machine moved
    while measuring; above ``SPREAD_BOUND`` the profile table flags the row."""
    if len(times) < 2:
        return 0.0
    p10, p50, p90 = np.percentile(np.asarray(times, dtype=float), [10, 50, 90])
    return float((p90 - p10) / p50) if p50 > 0 else 0.0


def measure_latencies(models: Sequence[nn.Module], inputs: torch.Tensor, runs: int = 5,
                      warmup: int = 2, spreads: Optional[list] = None) -> List[float]:
    """Median seconds per forward of ``inputs`` for each model (in inference mode), measured in
    turns by :func:`time_in_turns`; ``spreads``, a list, receives each model's
    :func:`timing_spread`."""
    was = [m.training for m in models]
    for m in models:
        m.eval()
    sync = torch.cuda.synchronize if inputs.is_cuda else (lambda: None)
    try:
        with torch.inference_mode():
            times = time_in_turns([lambda m=m: m(inputs) for m in models], runs, warmup, sync)
    finally:
        for m, w in zip(models, was):
            m.train(w)
    if spreads is not None:
        spreads.extend(timing_spread(t) for t in times)
    return [statistics.median(t) for t in times]
