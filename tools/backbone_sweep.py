"""Sweep L1FilterPruner over registered backbones of mmdet, mmpose and mmpretrain.

    python tools/backbone_sweep.py [--sparsity 0.5] [--out docs/backbone_sweep.md] [--only NAME ...]
                                   [--merge] [--readme README.md]

Each backbone is built from its registry (random weights: the structure is what matters),
pruned at the given sparsity on a 1x3xSxS input, and either prunes with every output shape
unchanged and forward running, or is refused with the pruner's one-line error. Params and
MACs (dfbf_mm.export.count_macs_params, the counter of tools/prune.py's profile) are compared
before/after; the markdown table goes to stdout and to --out. ``--only A B --merge`` re-runs
some backbones and replaces just their rows in the existing --out (the other rows are kept as
they are, the re-run is noted above the table); ``--readme`` also rewrites the short table
under "## Which backbones prune" in README.md.
"""
import argparse
import copy
import os
import os.path as osp
import re
import shlex
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
    ('ShuffleNetV2 (mmpose)', 'mmpose', dict(type='ShuffleNetV2'), 64),
    ('ShuffleNetV1', 'mmpretrain', dict(type='ShuffleNetV1'), 64),
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
    ('Swin-T (mmpretrain)', 'mmpretrain', dict(type='SwinTransformer', arch='tiny', img_size=64, pad_small_map=True), 64),
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


COLUMNS = ('backbone', 'registry', 'prunable', 'groups', 'params_cut', 'macs_cut', 'note')
README_HEADING = '## Which backbones prune'
RERUN_PREFIX = 'Rows re-run with '


def parse_table(text: str):
    """(sparsity, rows) of a sweep markdown written by :func:`main` (rows as dicts, no seconds)."""
    m = re.search(r'\| MACs cut \(s=([0-9.]+)\) \|', text)
    if not m:
        raise ValueError('--merge: the existing --out has no sweep table')
    rows = []
    for line in text[m.end():].splitlines()[2:]:
        if not line.startswith('| '):
            break
        cells = [c.strip() for c in line.strip().strip('|').split(' | ')]
        if len(cells) != len(COLUMNS):
            raise ValueError(f'--merge: cannot read the table row {line[:60]!r}')
        rows.append(dict(zip(COLUMNS, cells)))
    return float(m.group(1)), rows


def merge_rows(old_rows, new_rows):
    """``old_rows`` with the rows of the same backbone replaced by ``new_rows``, in BACKBONES order
    (rows of backbones no longer listed stay at the end)."""
    new = {r['backbone']: r for r in new_rows}
    merged = [new.pop(r['backbone'], r) for r in old_rows] + list(new.values())
    order = {b[0]: i for i, b in enumerate(BACKBONES)}
    return sorted(merged, key=lambda r: order.get(r['backbone'], len(order)))


def rerun_notes(old_text: str, names, command: str):
    """The "Rows re-run with ..." lines of ``old_text`` minus ``names``, plus one for this run."""
    notes = []
    for line in old_text.splitlines():
        if not line.startswith(RERUN_PREFIX):
            continue
        head, _, listed = line.rpartition(': ')
        keep = [n for n in listed.rstrip('.').split(', ') if n and n not in names]
        if keep:
            notes.append(f'{head}: {", ".join(keep)}.')
    notes.append(f'{RERUN_PREFIX}`{command}`: {", ".join(names)}.')
    return notes


def readme_table(rows) -> str:
    """The short table of README.md's "Which backbones prune" section."""
    lines = ['| backbone | prunable | params cut | MACs cut |', '|---|---|---|---|']
    for r in rows:
        lines.append(f'| {r["backbone"]} | {r["prunable"]} | {r["params_cut"] or "—"} | {r["macs_cut"] or "—"} |')
    return '\n'.join(lines)


def update_readme(path: str, rows) -> None:
    """Replace the table under README_HEADING in ``path`` (nothing else)."""
    with open(path) as f:
        text = f.read()
    start = text.find(README_HEADING)
    if start < 0:
        raise ValueError(f'--readme: {path} has no "{README_HEADING}" section')
    m = re.compile(r'^\| backbone \| prunable \|.*\n(?:\|.*\n?)*', re.M).search(text, start)
    nxt = text.find('\n## ', start + len(README_HEADING))
    if not m or (nxt >= 0 and m.start() > nxt):
        raise ValueError(f'--readme: no backbone table under "{README_HEADING}" in {path}')
    table = readme_table(rows) + ('\n' if m.group(0).endswith('\n') else '')
    with open(path, 'w') as f:
        f.write(text[:m.start()] + table + text[m.end():])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--sparsity', type=float, default=0.5)
    p.add_argument('--out', default='docs/backbone_sweep.md')
    p.add_argument('--only', nargs='*', default=None, help='backbone names to run')
    p.add_argument('--time-limit', type=int, default=120, help='seconds per backbone')
    p.add_argument('--merge', action='store_true',
                   help='with --only: replace only these rows of the existing --out, keep the others')
    p.add_argument('--readme', default=None, help='also rewrite the backbone table of this README')
    args = p.parse_args(argv)
    unknown = sorted(set(args.only or []) - {b[0] for b in BACKBONES})
    if unknown:
        p.error(f'--only: unknown backbone(s) {unknown}; known: {[b[0] for b in BACKBONES]}')
    if args.merge and not (args.only and args.out and osp.isfile(args.out)):
        p.error('--merge needs --only NAME ... and an existing --out file')
    todo = [b for b in BACKBONES if not args.only or b[0] in args.only]
    try:
        from tqdm import tqdm
        todo_iter = tqdm(todo, desc='backbones', file=sys.stderr)
    except ImportError:
        todo_iter = todo
    rows = []
    for n, s, c, size in todo_iter:
        rows.append(sweep_backbone(n, s, c, size, args.sparsity, args.time_limit))
        print(f'{n}: {rows[-1]["prunable"]} ({rows[-1]["seconds"]:.2f} s pruning)', file=sys.stderr)
    notes = []
    if args.merge:
        with open(args.out) as f:
            old_text = f.read()
        old_sparsity, old_rows = parse_table(old_text)
        if old_sparsity != args.sparsity:
            p.error(f'--merge: {args.out} was made with --sparsity {old_sparsity}, not {args.sparsity}')
        command = 'python tools/backbone_sweep.py ' + ' '.join(shlex.quote(a) for a in (argv or sys.argv[1:]))
        notes = rerun_notes(old_text, [r['backbone'] for r in rows], command)
        rows = merge_rows(old_rows, rows)
    table = format_table(rows, args.sparsity)
    ok = sum(r['prunable'] == 'yes' for r in rows)
    timeouts = any(r['prunable'] == 'TIMEOUT' for r in rows)
    text = (f'# Backbone sweep\n\nGenerated by `python tools/backbone_sweep.py --sparsity {args.sparsity}`: '
            f'L1FilterPruner (uniform sparsity, residual streams and output widths kept) on '
            f'randomly initialised backbones, input 1x3xSxS (S=32 for CIFAR nets, else 64); '
            f'MACs from dfbf_mm.export.count_macs_params (torch_pruning.utils.count_ops_and_params with '
            f'subclasses of the layer types it counts, e.g. the mmcv Linear of transformer FFNs, '
            f'counted as their base type). '
            f'{ok} of {len(rows)} backbones '
            f'pruned with every output shape unchanged; the others were refused with the '
            f'message shown' + (' (TIMEOUT: stopped after the time shown on this machine)' if timeouts else '')
            + '.\n\n' + ''.join(n + '\n\n' for n in notes) + f'{table}\n')
    print(text)
    if args.out:
        os.makedirs(osp.dirname(args.out) or '.', exist_ok=True)
        with open(args.out, 'w') as f:
            f.write(text)
    if args.readme:
        update_readme(args.readme, rows)
    return rows


if __name__ == '__main__':
    main()
