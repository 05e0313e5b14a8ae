"""Prune the backbone of a trained mmdet / mmpose / mmpretrain model (no data needed).

    python tools/prune.py CONFIG CHECKPOINT [--sparsity 0.5 | --target-macs 0.5] [--pruner-cfg KEY=VALUE ...]
        [--input-size H W] [--trace-time-limit 60] [--compile] [--onnx] --out DIR

The pruner is a PRUNERS config: the config's ``dfbf.pruner`` when it has one, else
``L1FilterPruner(sparsity=0.5)``; ``--pruner-cfg`` sets any of its arguments
(``type=PaodingPruner``, ``layer_dependent=True``, ``norm=2``, ``min_channels=8``,
``round_to=8``, ``ignore="['backbone.stem*']"`` ...), ``--sparsity`` and
``--trace-time-limit`` are shorthands for two of them. A re-parameterisable backbone (RepVGG,
MobileOne) is fused to its deploy form first and exported as a ``deploy=True`` config.

--target-macs F (--target-params, --target-latency) prunes to a cost instead of a ratio: the
pruner's ``target=dict(macs=F)``, F the fraction of the backbone's MACs to remove; the ratio
that reaches it is found and printed (``--pruner-cfg ranking=global`` ranks channels across
layers instead of one ratio everywhere).

Writes DIR/pruned.py (deploy config), DIR/pruned.pth (strict-loadable checkpoint),
DIR/pruned_channel_spec.json, and where the cut went: DIR/pruned_groups.md (kept channels per
prunable group) and DIR/pruned_groups.png (its plot); prints the teacher-vs-pruned profile table.

Example input size (tracing and profiling): --input-size, else taken from the config --
mmpose ``codec.input_size`` (W, H), else the test pipeline's crop / resize scale
(CenterCrop crop_size, Resize/RandomResize scale as (W, H)), else 32x32 for CIFAR datasets
(their pipelines do not resize), else 224x224. The longer side is
capped at 640 (aspect kept, multiples of 32) so CPU profiling stays short; pruning itself
does not depend on the size.

--trace-time-limit SECONDS bounds the pruner's dependency tracing, group search and channel
removal (the pruner's ``trace_time_limit``, 60 s by default; ``none`` or 0 turns the limit
off): past it the tool stops with a one-line error instead of hanging.

--compile adds latency rows for both backbones compiled as PyTorch 2 deploys them
(``torch.compile``, Inductor, frozen weights; compiling takes a minute or two on CPU and needs a
C++ compiler). Eager batch-1 CPU latency keeps per-op costs that pruning cannot remove, so the
compiled rows show better what the removed FLOPs buy in a deployed model.

--onnx also writes DIR/pruned.onnx (the whole pruned model in tensor mode: raw head outputs,
no data preprocessor) or, where the whole model does not export, DIR/pruned_backbone.onnx,
checks it in onnxruntime against PyTorch (see dfbf_mm/export/onnx.py for the tolerance), prints
the max abs difference, and adds onnxruntime CPU latency rows for both backbones to the table.
"""
import argparse
import copy
import os.path as osp
import time

import torch
from mmengine.config import Config

import dfbf_mm  # noqa: F401  (registers dfbf types, safe checkpoint loading)
from dfbf_mm.cli import ArgumentParser, CfgOptionsAction, run_cli
from dfbf_mm.export import export_pruned_model, profile_backbones
from dfbf_mm.pruning import reparameterize
from dfbf_mm.registry import PRUNERS
from dfbf_mm.schema import DFBF, build_checked
from dfbf_mm.stock_model import build_stock_model, get_backbone, input_channels, load_weights

MAX_SIDE = 640


def load_config(path: str) -> Config:
    """A stock config from a file or an ``mmdet::...`` / ``mmpose::...`` package path."""
    if '::' in path:
        from mmengine.hub import get_config
        try:
            return get_config(path)
        except Exception as e:
            raise FileNotFoundError(f'config: cannot load {path!r} ({type(e).__name__}: {e})') from None
    if not osp.isfile(path):
        raise FileNotFoundError(f'config: file not found: {path!r}')
    return Config.fromfile(path)


def _scale_hw(t: dict):
    for key in ('crop_size', 'scale', 'img_scale'):
        v = t.get(key)
        if isinstance(v, int):
            return v, v
        if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(s, int) for s in v):
            # CenterCrop crop_size and Resize scale are (W, H) in OpenMMLab.
            return v[1], v[0]
    return None


def default_input_size(cfg: Config):
    """(H, W) for the example input, derived from the config (see module docstring)."""
    hw = None
    codec = cfg.get('codec')
    if isinstance(codec, dict) and isinstance(codec.get('input_size'), (tuple, list)):
        hw = (codec['input_size'][1], codec['input_size'][0])
    if hw is None:
        pipes = []
        for key in ('test_dataloader', 'val_dataloader'):
            dl = cfg.get(key)
            pipe = dl.get('dataset', {}).get('pipeline') if isinstance(dl, dict) else None
            if pipe:
                pipes.append(pipe)
        pipes.append(cfg.get('test_pipeline') or [])
        for pipe in pipes:
            for t in reversed(list(pipe)):  # the last resize/crop decides the size
                if isinstance(t, dict) and (hw := _scale_hw(t)):
                    break
            if hw:
                break
    if hw is None:
        dl = cfg.get('test_dataloader') or {}
        dataset = str(dl.get('dataset', {}).get('type', '')) if isinstance(dl, dict) else ''
        hw = (32, 32) if dataset.upper().startswith('CIFAR') else (224, 224)
    h, w = hw
    scale = min(1.0, MAX_SIDE / max(h, w))
    if scale < 1:
        h, w = (max(32, int(round(s * scale / 32)) * 32) for s in (h, w))
    return int(h), int(w)


def _time_limit(text: str):
    """``--trace-time-limit``: seconds > 0, or ``none`` / 0 for no limit (None)."""
    if text.strip().lower() in ('none', 'off'):
        return None
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not a number of seconds (or none)') from None
    if v != v or v < 0:
        raise argparse.ArgumentTypeError(f'{text!r} is not a number of seconds >= 0 (or none)')
    return None if v == 0 else v


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config', help='stock mmdet/mmpose/mmpretrain config file or pkg::path')
    p.add_argument('checkpoint', help='trained checkpoint of that config')
    p.add_argument('--sparsity', type=float, default=None,
                   help='base fraction of channels removed (pruner sparsity; default 0.5)')
    p.add_argument('--target-macs', type=float, default=None, metavar='F',
                   help='remove this fraction of the backbone MACs; the sparsity is found '
                        '(pruner target=dict(macs=F))')
    p.add_argument('--target-params', type=float, default=None, metavar='F',
                   help='likewise for the parameters (target=dict(params=F))')
    p.add_argument('--target-latency', type=float, default=None, metavar='F',
                   help='likewise for the CPU latency measured here (target=dict(latency=F))')
    p.add_argument('--pruner-cfg', nargs='+', action=CfgOptionsAction, default={},
                   help='arguments of the pruner, KEY=VALUE (type=..., layer_dependent=True, ...)')
    p.add_argument('--input-size', type=int, nargs=2, metavar=('H', 'W'), default=None)
    p.add_argument('--trace-time-limit', type=_time_limit, default=False, metavar='SECONDS',
                   help='stop tracing / group search / channel removal after this long with an error '
                        '(default 60; none or 0: no limit)')
    p.add_argument('--latency-runs', type=int, default=5, help='timed forwards per measurement')
    p.add_argument('--batch-sizes', type=int, nargs='+', default=[1, 8])
    p.add_argument('--compile', action='store_true',
                   help='also time both backbones under torch.compile (Inductor, frozen weights)')
    p.add_argument('--onnx', action='store_true',
                   help='also export DIR/NAME.onnx (or NAME_backbone.onnx), check it in onnxruntime '
                        'and time both backbones there')
    p.add_argument('--name', default='pruned', help='file stem of the outputs')
    p.add_argument('--out', required=True, help='output folder')
    return p.parse_args(argv)


def pruner_config(cfg: Config, args) -> dict:
    """The PRUNERS config: the config's ``dfbf.pruner`` (or L1 at 0.5) with the flags applied."""
    dfbf = cfg.get('dfbf')
    base = (DFBF.read_option('pruner', dfbf['pruner']) if isinstance(dfbf, dict) and dfbf.get('pruner')
            else dict(type='L1FilterPruner', sparsity=0.5))
    pruner = dict(base, **args.pruner_cfg)
    if args.sparsity is not None:
        pruner['sparsity'] = args.sparsity
    if args.trace_time_limit is not False:
        pruner['trace_time_limit'] = args.trace_time_limit
    targets = {k: getattr(args, f'target_{k}') for k in ('macs', 'params', 'latency')
               if getattr(args, f'target_{k}') is not None}
    if len(targets) > 1:
        raise ValueError(f'--target-*: give one of --target-macs / --target-params / --target-latency, '
                         f'not {len(targets)}')
    if targets:
        pruner['target'] = targets
    return DFBF.read_option('pruner', pruner)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config)
    pruner_cfg = pruner_config(cfg, args)
    pruner = build_checked(PRUNERS, pruner_cfg, 'pruner')
    model = build_stock_model(cfg)
    ckpt = load_weights(model, args.checkpoint, 'checkpoint')
    model.eval()
    if reparameterize(model, cfg):
        print(f'{type(model.backbone).__name__}: fused to its deploy form (deploy=True) for pruning')
    backbone = get_backbone(model)
    teacher = copy.deepcopy(backbone)
    h, w = args.input_size or default_input_size(cfg)
    if h < 1 or w < 1:
        raise ValueError(f'input_size: {h}x{w} is not positive')
    device = next(backbone.parameters()).device
    channels = input_channels(model)
    x = torch.randn(1, channels, h, w, device=device)

    t = time.perf_counter()
    spec = pruner.prune(backbone, x)
    seconds = time.perf_counter() - t
    rep = getattr(pruner, 'report', None)
    if rep:
        print(f'pruned {len(rep["groups"])} channel groups ({len(rep["skipped"])} kept: they reach '
              f'an output or are not prunable) in {seconds:.1f} s on input {h}x{w}')
        if rep.get('target'):
            t = rep['target']
            print(f'target: {t["metric"]} -{t["target"]:.1%}, reached -{t["reached"]:.1%} '
                  f'({rep.get("ranking", "uniform")} ranking, sparsity {t["sparsity"]:.3f})')
    else:
        print(f'pruned by {type(pruner).__name__} in {seconds:.1f} s on input {h}x{w}')

    meta = dict(dfbf_mm=dict(stage='pruned', pruner=pruner_cfg,
                             source_checkpoint=osp.abspath(args.checkpoint)))
    src_meta = ckpt.get('meta') if isinstance(ckpt, dict) else None
    if isinstance(src_meta, dict) and 'dataset_meta' in src_meta:
        meta['dataset_meta'] = src_meta['dataset_meta']
    paths = export_pruned_model(model, cfg, spec, args.out, meta=meta, name=args.name)
    if args.onnx:
        from dfbf_mm.export.onnx import ONNX_TOL, export_checked
        paths['onnx'], what, diff, why = export_checked(model, backbone, x, args.out, args.name)
        if why:
            print(f'onnx: the whole model did not export ({why}); exported the backbone')
        print(f'onnx: {what} matches PyTorch in onnxruntime, max abs diff {diff:.2e} '
              f'(tolerance {ONNX_TOL:g} x max(1, max |output|))')
    if rep and rep.get('groups') is not None:  # where the cut went
        from dfbf_mm.pruning.report import groups_table, plot_groups
        paths['groups_table'] = osp.join(args.out, f'{args.name}_groups.md')
        with open(paths['groups_table'], 'w') as f:
            f.write(groups_table(rep))
        png = plot_groups(rep, osp.join(args.out, f'{args.name}_groups.png'),
                          f'{type(backbone).__name__}: kept channels per prunable group')
        if png:
            paths['groups_plot'] = png
    for k, v in paths.items():
        print(f'{k}: {v}')
    _, table = profile_backbones(teacher, backbone, (h, w), batch_sizes=args.batch_sizes, in_channels=channels,
                                 runs=args.latency_runs, compile_options={} if args.compile else None,
                                 onnx=args.onnx)
    print(table)
    return paths


if __name__ == '__main__':
    run_cli(main)
