"""The main job on the embedded default: data-free pruning of the digits classifier, offline.

    python -m tools.demo [--work-dir work_dirs/demo] [--sparsity 0.6]

1. generates the digits data (scikit-learn's 1,797 real scans; seconds) if missing;
2. evaluates the committed teacher (checkpoints/digits_cls_teacher.pth) on the test split;
3. prunes its backbone (L1, real channel removal) and evaluates the pruned model as it is;
4. inverts the teacher into synthetic images and fine-tunes the pruned backbone on them
   (DataFreeDistillRunner: no real training image is read);
5. evaluates the recovered model, exports it as a stock mmpretrain model, and prints
   teacher / pruned / recovered top-1, the FLOPs cut and the measured CPU speed-up.
A report with the numbers and the synthetic-image grid is written to the work dir.
"""
if not __package__:  # it imports its sibling modules through the package
    raise SystemExit('run it from the repository root as: python -m tools.demo ARGS')
import argparse
import os
import os.path as osp
import time

from mmengine.config import Config
from mmengine.runner import Runner

import dfbf_mm  # noqa: F401
from dfbf_mm.cli import run_cli
from dfbf_mm.engine import DataFreeDistillRunner
from tools.benchmarks import make_digits
from tools.benchmarks.train_teacher import set_data_root

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))

CONFIG = osp.join(REPO, 'configs', 'benchmarks', 'dfbf_digits_cls.py')
TEACHER_CONFIG = osp.join(REPO, 'configs', 'benchmarks', 'digits_cls_teacher.py')
METRIC = 'accuracy/top1'


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--data', default='data/digits', help='digits data folder (made if missing)')
    parser.add_argument('--sparsity', type=float, help='override dfbf.pruner.sparsity')
    return parser.parse_args()


def ensure_data(root: str) -> None:
    if osp.isfile(osp.join(root, 'cls', 'test.txt')):
        return
    print(f'[demo] generating the digits data into {root}')
    make_digits.build(root, seed=0, tasks=('cls', ))


def profile_value(rows, prefix):
    return next(r for r in rows if r['metric'].startswith(prefix))


def main():
    args = parse_args()
    start = time.time()
    ensure_data(args.data)
    os.makedirs(args.work_dir, exist_ok=True)

    teacher_cfg = set_data_root(Config.fromfile(TEACHER_CONFIG), args.data)
    teacher_cfg.work_dir = osp.join(args.work_dir, 'teacher_eval')
    teacher_cfg.load_from = osp.join(REPO, 'checkpoints', 'digits_cls_teacher.pth')
    teacher = Runner.from_cfg(teacher_cfg).test()[METRIC]

    cfg = set_data_root(Config.fromfile(CONFIG), args.data)
    cfg.work_dir = args.work_dir
    cfg.dfbf.teacher_checkpoint = osp.join(REPO, cfg.dfbf.teacher_checkpoint)
    if args.sparsity is not None:
        cfg.dfbf.pruner.sparsity = args.sparsity
    runner = DataFreeDistillRunner.from_cfg(cfg)
    pruned = runner.val()[METRIC]
    runner.train()
    recovered = runner.val_loop.run()[METRIC]

    rows = runner.message_hub.get_info('dfbf_profile')
    paths = runner.message_hub.get_info('dfbf_export')
    macs, params = profile_value(rows, 'MACs'), profile_value(rows, 'params')
    latency = profile_value(rows, 'latency ms (batch 8')
    lines = [
        '# dfbf_mm demo: data-free pruning of the digits classifier',
        '',
        f'Config: `{osp.relpath(CONFIG, REPO)}` (sparsity {cfg.dfbf.pruner.sparsity}, '
        f'{cfg.dfbf.synthetic_data.num_images} synthetic images, no real training image).',
        '',
        '| model | test top-1 (%) |',
        '|---|---|',
        f'| teacher (unpruned) | {teacher:.2f} |',
        f'| pruned, no fine-tuning | {pruned:.2f} |',
        f'| pruned + DFBF (data-free) | {recovered:.2f} ({100 * recovered / teacher:.1f} % of teacher) |',
        '',
        f'Backbone: FLOPs (MACs) cut {100 * (1 - macs["ratio"]):.1f} %, params cut '
        f'{100 * (1 - params["ratio"]):.1f} %, CPU latency at batch 8 '
        f'{latency["teacher"]:.2f} ms → {latency["pruned"]:.2f} ms '
        f'(speed-up ×{latency["teacher"] / latency["pruned"]:.2f}).',
        '',
        f'Exported stock model: `{paths["config"]}`, `{paths["checkpoint"]}`; evaluate with',
        f'`python tools/test.py {paths["config"]} {paths["checkpoint"]}`.',
        '',
        'Synthetic images the student was trained on: `synthetic_images.png`.',
        '',
        f'Wall time: {time.time() - start:.0f} s.',
    ]
    report = osp.join(args.work_dir, 'report.md')
    with open(report, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    print('\n'.join(lines[4:]))
    print(f'\n[demo] report: {report}')


if __name__ == '__main__':
    run_cli(main)
