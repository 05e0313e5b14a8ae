"""Teacher vs pruned backbone: parameters, FLOPs, measured latency, per-stage channels.

FLOPs are counted by :func:`count_macs_params` (``torch_pruning.utils.count_ops_and_params``:
forward hooks on conv / linear / norm / activation / pooling layers, subclasses included; it
reports multiply-accumulates, shown as MACs). Latency is the median wall time of ``runs``
forwards of the same input after ``warmup`` forwards, in inference mode, on the backbone's
device, teacher and pruned taking turns (one forward each per round). ``speed-up / FLOPs-ratio`` = (t_teacher / t_pruned) /
(MACs_teacher / MACs_pruned): 1.0 means the removed FLOPs turned fully into time.

Eager PyTorch at batch 1 on CPU pays a fixed cost per op (dispatch, oneDNN layout changes,
element-wise BN / activation passes over the unpruned input and output widths) that pruning
does not remove, so the ratio is lower there than for a deployed model. ``compile_options``
additionally times both backbones as PyTorch 2 deploys them: ``torch.compile`` (Inductor) with
weight freezing, one static graph per batch size; compilation happens in the untimed warm-up.
"""
import contextlib
import statistics
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning.utils import op_counter

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


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


def count_macs_params(backbone: nn.Module, inputs: torch.Tensor) -> Tuple[int, int]:
    """(MACs, params) of one forward of ``inputs`` (eval mode).

    ``torch_pruning.utils.count_ops_and_params`` with layers matched by ``isinstance``: a
    subclass of a counted layer type (conv, linear, norm, activation, pooling ...) is counted
    like its base class. A counted layer is counted once per call, as itself: the layers inside
    it are not added again, so a conv subclass that wraps another conv counts once.
    """
    was = backbone.training
    backbone.eval()
    saved = op_counter.CUSTOM_MODULES_MAPPING
    # count_ops_and_params reads this module global and resets it to {} when it is done.
    op_counter.CUSTOM_MODULES_MAPPING = {**_subclass_hooks(backbone), **saved}
    try:
        with torch.no_grad():
            macs, params = tp.utils.count_ops_and_params(backbone, inputs)
    finally:
        op_counter.CUSTOM_MODULES_MAPPING = saved
        backbone.train(was)
    return int(macs), int(params)


def measure_latencies(models: Sequence[nn.Module], inputs: torch.Tensor, runs: int = 5,
                      warmup: int = 2) -> List[float]:
    """Median seconds per forward of ``inputs`` for each model, after ``warmup`` untimed rounds.

    The models take turns, one forward each per round, so drift of the machine (other load,
    clocks, caches) hits all of them alike instead of biasing whichever is measured later.
    """
    was = [m.training for m in models]
    for m in models:
        m.eval()
    sync = torch.cuda.synchronize if inputs.is_cuda else (lambda: None)
    times = [[] for _ in models]
    try:
        with torch.inference_mode():
            for i in range(warmup + runs):
                for k, m in enumerate(models):
                    sync()
                    t = time.perf_counter()
                    m(inputs)
                    sync()
                    if i >= warmup:
                        times[k].append(time.perf_counter() - t)
    finally:
        for m, w in zip(models, was):
            m.train(w)
    return [statistics.median(t) for t in times]


def compile_for_inference(model: nn.Module, **options) -> nn.Module:
    """``torch.compile(model, dynamic=False, **options)``; time it under :func:`inference_config`."""
    return torch.compile(model, **{'dynamic': False, **options})


def inference_config(options: dict):
    """Inductor settings for a deployed model: weights frozen into the graph as constants
    (lets it fold BN into convs and pre-pack conv weights). A no-op for other backends."""
    if options.get('backend', 'inductor') != 'inductor':
        return contextlib.nullcontext()
    import torch._inductor.config as inductor_config
    return inductor_config.patch(freezing=True)


def measure_latency(backbone: nn.Module, inputs: torch.Tensor, runs: int = 5, warmup: int = 2) -> float:
    """Median seconds per forward of ``inputs`` after ``warmup`` untimed forwards."""
    return measure_latencies([backbone], inputs, runs, warmup)[0]


def stage_channels(backbone: nn.Module) -> Dict[str, int]:
    """Sum of conv/linear output widths under each top-level child of the backbone."""
    out = {}
    for name, child in backbone.named_children():
        n = sum(m.out_features if isinstance(m, nn.Linear) else m.out_channels
                for m in child.modules() if isinstance(m, _CONV))
        if n:
            out[name] = n
    return out


def _fmt(v: float) -> str:
    if v >= 1e9:
        return f'{v / 1e9:.2f} G'
    if v >= 1e6:
        return f'{v / 1e6:.2f} M'
    if v >= 1e3:
        return f'{v / 1e3:.1f} k'
    return f'{v:g}'


def profile_backbones(teacher: nn.Module, pruned: nn.Module, input_size: Sequence[int],
                      batch_sizes: Sequence[int] = (1, 8), runs: int = 5, warmup: int = 2,
                      in_channels: int = 3, seed: int = 0,
                      compile_options: Optional[dict] = None) -> Tuple[List[dict], str]:
    """Compare ``teacher`` and ``pruned``; returns (rows, markdown table).

    Each row: ``dict(metric, teacher, pruned, ratio)`` with ratio = pruned / teacher (for the
    speed-up / FLOPs-ratio rows, the value itself in ``pruned``). ``compile_options`` (a dict of
    ``torch.compile`` arguments, ``{}`` for the defaults) adds the same latency rows for the
    compiled backbones, marked ``compiled``; if compiling fails (e.g. no C++ compiler for
    Inductor) one row says why and the eager rows stand.
    """
    if len(input_size) != 2 or any(int(s) < 1 for s in input_size):
        raise ValueError(f'input_size: {input_size!r} is not (H, W)')
    device = next(teacher.parameters()).device
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(1, in_channels, *input_size, generator=g).to(device)
    rows = []
    before, after = stage_channels(teacher), stage_channels(pruned)
    for k in before:
        rows.append(dict(metric=f'channels {k}', teacher=before[k], pruned=after.get(k, 0),
                         ratio=after.get(k, 0) / before[k]))
    macs_t, params_t = count_macs_params(teacher, x1)
    macs_p, params_p = count_macs_params(pruned, x1)
    rows.append(dict(metric='params', teacher=params_t, pruned=params_p, ratio=params_p / params_t))
    rows.append(dict(metric=f'MACs (1x{in_channels}x{input_size[0]}x{input_size[1]})',
                     teacher=macs_t, pruned=macs_p, ratio=macs_p / macs_t))
    inputs = [torch.randn(b, in_channels, *input_size, generator=g).to(device) for b in batch_sizes]

    def latency_rows(models, mark, timing_context):
        with timing_context:
            for b, xb in zip(batch_sizes, inputs):
                lt, lp = measure_latencies(models, xb, runs, warmup)
                rows.append(dict(metric=f'latency ms (batch {b}, {device.type}{mark})', teacher=lt * 1e3,
                                 pruned=lp * 1e3, ratio=lp / lt))
                rows.append(dict(metric=f'speed-up / FLOPs-ratio (batch {b}{mark})', teacher=None,
                                 pruned=(lt / lp) / (macs_t / macs_p), ratio=None))

    latency_rows([teacher, pruned], '', contextlib.nullcontext())
    if compile_options is not None:
        try:
            latency_rows([compile_for_inference(m, **compile_options) for m in (teacher, pruned)],
                         ', compiled', inference_config(compile_options))
        except Exception as e:  # noqa: BLE001 -- any backend failure: keep the eager rows
            first = (str(e).strip().splitlines() or [''])[0][:200]
            rows.append(dict(metric='compiled latency', teacher=None, pruned=None, ratio=None,
                             note=f'not measured: torch.compile failed ({type(e).__name__}: {first})'))
    lines = ['| metric | teacher | pruned | pruned/teacher |', '|---|---|---|---|']
    for r in rows:
        if 'note' in r:
            lines.append(f'| {r["metric"]} | {r["note"]} | | |')
        elif r['teacher'] is None:
            lines.append(f'| {r["metric"]} | | {r["pruned"]:.3f} | |')
        else:
            lines.append(f'| {r["metric"]} | {_fmt(r["teacher"])} | {_fmt(r["pruned"])} | {r["ratio"]:.3f} |')
    return rows, '\n'.join(lines)
