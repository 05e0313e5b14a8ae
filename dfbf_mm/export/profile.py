"""Teacher vs pruned backbone: parameters, FLOPs, measured latency, per-stage channels.

FLOPs are counted by ``dfbf_mm.cost.count_macs_params`` (``torch_pruning.utils.count_ops_and_params``:
forward hooks on conv / linear / norm / activation / pooling layers, subclasses included; it
reports multiply-accumulates, shown as MACs), as the pruner's targets count them. Latency is
the median wall time of ``runs`` forwards of the same input after ``warmup`` forwards, in inference mode, on the backbone's
device, teacher and pruned taking turns (one forward each per round).
``speed-up / FLOPs-ratio`` = (t_teacher / t_pruned) / (MACs_teacher / MACs_pruned): 1.0 means
the removed FLOPs turned fully into time.

Eager PyTorch at batch 1 on CPU pays a fixed cost per op (dispatch, oneDNN layout changes,
element-wise BN / activation passes over the unpruned input and output widths) that pruning
does not remove, so the ratio is lower there than for a deployed model. ``compile_options``
additionally times both backbones as PyTorch 2 deploys them: ``torch.compile`` (Inductor) with
weight freezing, one static graph per batch size; compilation happens in the untimed warm-up.
``onnx`` times both exported to ONNX and run by onnxruntime on the CPU, with as many threads as
PyTorch uses.

Load: the table header names the machine (CPU model, CPUs, threads), and a latency row whose
repeated timings spread more than ``SPREAD_BOUND`` (20 %, as (p90 - p10) / median) is marked as
measured on a loaded machine, with a note under the table.
"""
import contextlib
import os
import platform
import statistics
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..compat import compile_fn
from ..cost import SPREAD_BOUND, count_macs_params, measure_latencies, time_in_turns, timing_spread

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def compile_for_inference(model: nn.Module, **options) -> nn.Module:
    """``torch.compile(model, dynamic=False, **options)``; time it under :func:`inference_config`."""
    return compile_fn(model, 'compile_options', **{'dynamic': False, **options})


def inference_config(options: dict):
    """Inductor settings for a deployed model: weights frozen into the graph as constants
    (lets it fold BN into convs and pre-pack conv weights). A no-op for other backends."""
    if options.get('backend', 'inductor') != 'inductor':
        return contextlib.nullcontext()
    import torch._inductor.config as inductor_config
    return inductor_config.patch(freezing=True)


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


def machine_description(device: torch.device = torch.device('cpu')) -> str:
    """CPU model (``/proc/cpuinfo``, else ``platform``), its logical CPUs, PyTorch's threads and,
    for a CUDA device, the GPU: the line that says where a profile's latencies come from."""
    cpu = ''
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next((ln.split(':', 1)[1].strip() for ln in f if ln.startswith('model name')), '')
    except OSError:
        pass
    text = f'{cpu or platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, ' \
           f'torch {torch.get_num_threads()} threads'
    if device.type == 'cuda':
        text += f', {torch.cuda.get_device_name(device)}'
    return text


def _reason(e: Exception) -> str:
    return f'{type(e).__name__}: {(str(e).strip().splitlines() or [""])[0][:200]}'


def profile_backbones(teacher: nn.Module, pruned: nn.Module, input_size: Sequence[int],
                      batch_sizes: Sequence[int] = (1, 8), runs: int = 5, warmup: int = 2,
                      in_channels: int = 3, seed: int = 0,
                      compile_options: Optional[dict] = None, onnx: bool = False,
                      spread_bound: float = SPREAD_BOUND) -> Tuple[List[dict], str]:
    """Compare ``teacher`` and ``pruned``; returns (rows, markdown table).

    Each row: ``dict(metric, teacher, pruned, ratio)`` with ratio = pruned / teacher (for the
    speed-up / FLOPs-ratio rows, the value itself in ``pruned``). ``compile_options`` (a dict of
    ``torch.compile`` arguments, ``{}`` for the defaults) adds the same latency rows for the
    compiled backbones, marked ``compiled``; if compiling fails (e.g. no C++ compiler for
    Inductor) one row says why and the eager rows stand. ``onnx`` adds them for both exported
    to ONNX and run in onnxruntime on the CPU (:mod:`dfbf_mm.export.onnx`), after a row with
    the max abs difference of its outputs to PyTorch's; a failing export or mismatch leaves one
    ``not measured`` row instead.

    Load: latency rows carry ``spread`` (the larger :func:`timing_spread` of the two); the table
    header names the machine, and a row whose spread exceeds ``spread_bound`` is marked, with a
    note under the table, since its timings moved while it was measured (other load).
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

    def add_latency(b, mark, where, lt, lp, spreads):
        rows.append(dict(metric=f'latency ms (batch {b}, {where}{mark})', teacher=lt * 1e3,
                         pruned=lp * 1e3, ratio=lp / lt, spread=max(spreads)))
        rows.append(dict(metric=f'speed-up / FLOPs-ratio (batch {b}{mark})', teacher=None,
                         pruned=(lt / lp) / (macs_t / macs_p), ratio=None))

    def latency_rows(models, mark, timing_context):
        with timing_context:
            for b, xb in zip(batch_sizes, inputs):
                spreads = []
                lt, lp = measure_latencies(models, xb, runs, warmup, spreads)
                add_latency(b, mark, device.type, lt, lp, spreads)

    latency_rows([teacher, pruned], '', contextlib.nullcontext())
    if compile_options is not None:
        try:
            latency_rows([compile_for_inference(m, **compile_options) for m in (teacher, pruned)],
                         ', compiled', inference_config(compile_options))
        except Exception as e:  # noqa: BLE001 -- any backend failure: keep the eager rows
            rows.append(dict(metric='compiled latency', teacher=None, pruned=None, ratio=None,
                             note=f'not measured: torch.compile failed ({_reason(e)})'))
    if onnx:
        from .onnx import ONNX_TOL, compare_onnx, onnx_runner, onnx_sessions
        try:
            sessions = onnx_sessions((teacher, pruned), x1)
            diffs = [max(compare_onnx(m, s, xb) for xb in inputs) for m, s in zip((teacher, pruned), sessions)]
        except Exception as e:  # noqa: BLE001 -- exporter / onnxruntime failure: keep the other rows
            rows.append(dict(metric='onnxruntime latency', teacher=None, pruned=None, ratio=None,
                             note=f'not measured: ONNX export or check failed ({_reason(e)})'))
        else:
            rows.append(dict(metric=f'onnxruntime max abs diff vs PyTorch (tol {ONNX_TOL:g} x scale)',
                             teacher=diffs[0], pruned=diffs[1], ratio=None, fmt='.1e'))
            for b, xb in zip(batch_sizes, inputs):
                times = time_in_turns([onnx_runner(s, xb) for s in sessions], runs, warmup)
                lt, lp = (statistics.median(t) for t in times)
                add_latency(b, ', onnxruntime', 'cpu', lt, lp, [timing_spread(t) for t in times])
    return rows, format_profile(rows, machine_description(device), spread_bound)


def format_profile(rows: List[dict], machine: str, spread_bound: float = SPREAD_BOUND) -> str:
    """The markdown table of :func:`profile_backbones`' rows (see there)."""
    lines = [f'| metric (on {machine}) | teacher | pruned | pruned/teacher |', '|---|---|---|---|']
    noisy = []
    for r in rows:
        metric = r['metric']
        if r.get('spread', 0) > spread_bound:
            noisy.append(r)
            metric += f' (spread {r["spread"] * 100:.0f} %: loaded)'
        if 'note' in r:
            lines.append(f'| {metric} | {r["note"]} | | |')
        elif r['teacher'] is None:
            lines.append(f'| {metric} | | {r["pruned"]:.3f} | |')
        elif 'fmt' in r:
            lines.append(f'| {metric} | {r["teacher"]:{r["fmt"]}} | {r["pruned"]:{r["fmt"]}} | |')
        else:
            lines.append(f'| {metric} | {_fmt(r["teacher"])} | {_fmt(r["pruned"])} | {r["ratio"]:.3f} |')
    if noisy:
        lines.append(f'\nnote: {len(noisy)} latency row(s) marked "loaded": their repeated timings spread more '
                     f'than {spread_bound * 100:.0f} % ((p90 - p10) / median), so the machine was busy while they were '
                     f'measured; take them as rough.')
    return '\n'.join(lines)
