"""Pruning time and what real channel removal buys in CPU latency.

    python -m tools.benchmarks.pruning_speed [--sparsity 0.5] [--runs 15] [--no-compile]
        [--out docs/pruning_speed.md]

For mmdet's ResNet-50 (224 px) and CSPDarknet of YOLOX-s (320 px), randomly initialised (the
cost does not depend on the values): seconds to prune with L1FilterPruner, then the profile
table of teacher vs pruned backbone (params, MACs, median CPU latency at batch 1 and 8, and the
latency speed-up divided by the FLOPs ratio: 1.0 would turn every removed FLOP into time),
eager and -- unless --no-compile -- under torch.compile (Inductor, frozen weights).
"""
import argparse
import copy
import time

import torch

import dfbf_mm  # noqa: F401
from dfbf_mm.export import profile_backbones
from dfbf_mm.registry import MODELS, PRUNERS
from dfbf_mm.stock_model import enter_scope

BACKBONES = [
    ('ResNet-50', dict(type='ResNet', depth=50, out_indices=(0, 1, 2, 3)), 224),
    ('CSPDarknet (YOLOX-s)', dict(type='CSPDarknet', deepen_factor=0.33, widen_factor=0.5), 320),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sparsity', type=float, default=0.5)
    parser.add_argument('--runs', type=int, default=15)
    parser.add_argument('--no-compile', action='store_true', help='eager latency only')
    parser.add_argument('--out', default=None)
    args = parser.parse_args()
    enter_scope('mmdet')
    flags = f'--sparsity {args.sparsity} --runs {args.runs}' + (' --no-compile' if args.no_compile else '')
    lines = [f'Produced by `python -m tools.benchmarks.pruning_speed {flags}` on '
             f'{torch.get_num_threads()} CPU thread(s); uniform sparsity, random weights. Latency: median '
             f'of {args.runs} forwards per model, teacher and pruned in turns.', '']
    for name, cfg, size in BACKBONES:
        torch.manual_seed(0)
        teacher = MODELS.build(cfg)
        teacher.eval()  # mmdet backbones' train() returns None: do not chain it
        student = copy.deepcopy(teacher)
        start = time.perf_counter()
        PRUNERS.build(dict(type='L1FilterPruner', sparsity=args.sparsity)).prune(
            student, torch.randn(1, 3, size, size))
        seconds = time.perf_counter() - start
        student.eval()
        _, table = profile_backbones(teacher, student, (size, size), runs=args.runs,
                                     compile_options=None if args.no_compile else {})
        lines += [f'## {name}, {size}x{size}: pruned in {seconds:.1f} s', '', table, '']
    text = '\n'.join(lines)
    print(text)
    if args.out:
        with open(args.out, 'w') as f:
            f.write('# Pruning time and latency\n\n' + text)


if __name__ == '__main__':
    main()
