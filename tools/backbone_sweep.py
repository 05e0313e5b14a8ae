"""Sweep L1FilterPruner over registered backbones of mmdet, mmpose and mmpretrain.

    python tools/backbone_sweep.py [--sparsity 0.5] [--out docs/backbone_sweep.md] [--only NAME ...]

Each backbone is built from its registry (random weights: the structure is what matters),
pruned at the given sparsity on a 1x3xSxS input, and either prunes with every output shape
unchanged and forward running, or is refused with the pruner's one-line error. Params and
MACs (torch_pruning.utils.count_ops_and_params) are compared before/after; the markdown table
goes to stdout and to --out.
"""
import argparse
import copy
import os
import os.path as osp
import signal
import sys
import time
import warnings

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from dfbf_mm.export.profile import count_macs_params  # noqa: E402
from dfbf_mm.pruning import L1FilterPruner, flatten_outputs  # noqa: E402
from dfbf_mm.registry import MODELS  # noqa: E402
from dfbf_mm.stock_model import enter_scope  # noqa: E402

HRNET_W18 = dict(
    stage1=dict(num_modules=1, num_branches=1, block='BOTTLENECK', num_blocks=(4,), num_channels=(64,)),
    stage2=dict(num_modules=1, num_branches=2, block='BASIC', num_blocks=(4, 4), num_channels=(18, 36)),
    stage3=dict(num_modules=4, num_branches=3, block='BASIC', num_blocks=(4, 4, 4), num_channels=(18, 36, 72)),
    stage4=dict(num_modules=3, num_branches=4, block='BASIC', num_blocks=(4, 4, 4, 4),
                num_channels=(18, 36, 72, 144)))
LITEHRNET_18 = dict(
    stem=dict(stem_channels=32, out_channels=32, expand_ratio=1),
    num_stages=3, stages_spec=dict(
        num_modules=(2, 4, 2), num_branches=(2, 3, 4), num_blocks=(2, 2, 2),
        module_type=('LITE', 'LITE', 'LITE'), with_fuse=(True, True, True),
        reduce_ratios=(8, 8, 8), num_channels=((40, 80), (40, 80, 160), (40, 80, 160, 320))),
    with_head=True)

# (name, scope, backbone cfg, input size)
BACKBONES = [
    ('ResNet-50', 'mmdet', dict(type='ResNet', depth=50), 64),
    ('ResNetV1d-50', 'mmpretrain', dict(type='ResNetV1d', depth=50), 64),
    ('ResNeXt-50 32x4d', 'mmdet', dict(type='ResNeXt', depth=50, groups=32, base_width=4), 64),
    ('Res2Net-50', 'mmdet', dict(type='Res2Net', depth=50), 64),
    ('ResNeSt-50', 'mmdet', dict(type='ResNeSt', depth=50), 64),
    ('SEResNet-50', 'mmpretrain', dict(type='SEResNet', depth=50), 64),
    ('ResNet_CIFAR-18', 'mmpretrain', dict(type='ResNet_CIFAR', depth=18), 32),
    ('RegNetX-400MF', 'mmdet', dict(type='RegNet', arch='regnetx_400mf', out_indices=(0, 1, 2, 3)), 64),
    ('MobileNetV2', 'mmpretrain', dict(type='MobileNetV2'), 64),
    ('MobileNetV3-small', 'mmpretrain', dict(type='MobileNetV3', arch='small'), 64),
    ('ShuffleNetV2', 'mmpretrain', dict(type='ShuffleNetV2'), 64),
    ('EfficientNet-b0', 'mmpretrain', dict(type='EfficientNet', arch='b0'), 64),
    ('HRNet-w18 (mmpose)', 'mmpose', dict(type='HRNet', extra=HRNET_W18), 64),
    ('HRNet-w18 (mmpretrain)', 'mmpretrain', dict(type='HRNet', arch='w18'), 64),
    ('LiteHRNet-18', 'mmpose', dict(type='LiteHRNet', extra=LITEHRNET_18), 64),
    ('CSPDarknet (YOLOX-s)', 'mmdet', dict(type='CSPDarknet', deepen_factor=0.33, widen_factor=0.5), 64),
    ('CSPNeXt-s', 'mmdet', dict(type='CSPNeXt', deepen_factor=0.33, widen_factor=0.5), 64),
    ('Darknet-53', 'mmdet', dict(type='Darknet', depth=53), 64),
    ('VGG-16-BN', 'mmpretrain', dict(type='VGG', depth=16, norm_cfg=dict(type='BN')), 64),
    ('DenseNet-121', 'mmpretrain', dict(type='DenseNet', arch='121'), 64),
    ('RepVGG-A0', 'mmpretrain', dict(type='RepVGG', arch='A0'), 64),
    ('ConvNeXt-T', 'mmpretrain', dict(type='ConvNeXt', arch='tiny'), 64),
    ('Swin-T (mmdet)', 'mmdet', dict(type='SwinTransformer'), 64),
    ('ViT deit-tiny', 'mmpretrain', dict(type='VisionTransformer', arch='deit-tiny', img_size=64, patch_size=16), 64),
    ('MobileOne-s0', 'mmpretrain', dict(type='MobileOne', arch='s0'), 64),
]


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def sweep_backbone(name: str, scope: str, cfg: dict, size: int, sparsity: float = 0.5,
                   time_limit: int = 120) -> dict:
    """Prune one backbone; returns a table row (status 'yes', 'refused', 'TIMEOUT' or 'CRASH').

    ``time_limit`` seconds bound the pruning (SIGALRM, main thread on POSIX only): Torch-Pruning's
    group search can run away on some graphs, and the sweep should report that, not hang.
    """
    row = dict(backbone=name, registry=f'{scope}.{cfg["type"]}', prunable='', groups='',
               params_cut='', macs_cut='', note='', seconds=0.0)
    enter_scope(scope)
    __import__(f'{scope}.models')
    torch.manual_seed(0)
    backbone = MODELS.build(copy.deepcopy(cfg))
    backbone.eval()
    x = torch.randn(1, 3, size, size)
    macs0, params0 = count_macs_params(backbone, x)
    pruner = L1FilterPruner(sparsity=sparsity)
    t = time.perf_counter()
    old = signal.signal(signal.SIGALRM, _alarm) if time_limit else None
    try:
        if time_limit:
            signal.alarm(time_limit)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            pruner.prune(backbone, x)
    except _Timeout:
        row.update(prunable='TIMEOUT', note=f'pruning did not finish within {time_limit} s '
                   '(Torch-Pruning dependency search)')
        return row
    except ValueError as e:
        row.update(prunable='refused', note=str(e))
        return row
    except Exception as e:  # a crash is a bug of ours: show it plainly
        row.update(prunable='CRASH', note=f'{type(e).__name__}: {str(e).splitlines()[0][:200]}')
        return row
    finally:
        if time_limit:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
    row['seconds'] = time.perf_counter() - t
    with torch.no_grad():
        flatten_outputs(backbone(x))  # forward runs (shapes were checked by the pruner)
    macs1, params1 = count_macs_params(backbone, x)
    rep = pruner.report
    reasons = sorted({r for _, r in rep['skipped']})
    row.update(prunable='yes' if rep['groups'] else 'nothing to prune',
               groups=f'{len(rep["groups"])} / {len(rep["skipped"])}',
               params_cut=f'{100 * (1 - params1 / params0):.1f} %',
               macs_cut=f'{100 * (1 - macs1 / macs0):.1f} %',
               note='kept: ' + '; '.join(reasons) if reasons else '')
    return row


def format_table(rows, sparsity: float, size_note: str = '') -> str:
    """Markdown table of sweep rows."""
    lines = [f'| backbone | registry type | prunable | groups pruned / kept | params cut | '
             f'MACs cut (s={sparsity}) | kept groups / reason refused |',
             '|---|---|---|---|---|---|---|']
    for r in rows:
        note = r['note'].replace('|', '/')
        lines.append(f'| {r["backbone"]} | {r["registry"]} | {r["prunable"]} | {r["groups"]} | '
                     f'{r["params_cut"]} | {r["macs_cut"]} | {note} |')
    return '\n'.join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--sparsity', type=float, default=0.5)
    p.add_argument('--out', default='docs/backbone_sweep.md')
    p.add_argument('--only', nargs='*', default=None, help='backbone names to run')
    p.add_argument('--time-limit', type=int, default=120, help='seconds per backbone')
    args = p.parse_args(argv)
    todo = [b for b in BACKBONES if not args.only or b[0] in args.only]
    try:
        from tqdm import tqdm
        todo_iter = tqdm(todo, desc='backbones', file=sys.stderr)
    except ImportError:
        todo_iter = todo
    rows = [sweep_backbone(n, s, c, size, args.sparsity, args.time_limit) for n, s, c, size in todo_iter]
    table = format_table(rows, args.sparsity)
    ok = sum(r['prunable'] == 'yes' for r in rows)
    text = (f'# Backbone sweep\n\nGenerated by `python tools/backbone_sweep.py --sparsity {args.sparsity}`: '
            f'L1FilterPruner (uniform sparsity, residual streams and output widths kept) on '
            f'randomly initialised backbones, input 1x3xSxS (S=32 for CIFAR nets, else 64); '
            f'MACs from torch_pruning.utils.count_ops_and_params. {ok} of {len(rows)} backbones '
            f'pruned with every output shape unchanged; the others were refused with the '
            f'message shown (TIMEOUT: stopped after {args.time_limit} s on this machine).\n\n{table}\n')
    print(text)
    if args.out:
        os.makedirs(osp.dirname(args.out) or '.', exist_ok=True)
        with open(args.out, 'w') as f:
            f.write(text)
    return rows


if __name__ == '__main__':
    main()
