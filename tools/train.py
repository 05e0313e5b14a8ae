"""Train like the OpenMMLab tools do; a config with a ``dfbf`` block runs data-free distillation.

    python tools/train.py configs/dfbf_yolox_coco.py [--work-dir DIR] [--resume [CKPT]] [--amp]
        [--cfg-options dfbf.pruner.sparsity=0.3 ...] [--launcher pytorch]

Any stock mmdet/mmpose/mmpretrain config works too (it then trains as the stock tool would).
"""
import os

from mmengine.registry import RUNNERS
from mmengine.runner import Runner

import dfbf_mm  # noqa: F401  (registers the dfbf types)
from dfbf_mm.cli import ArgumentParser, add_cfg_options, load_config, run_cli


def parse_args(argv=None):
    parser = ArgumentParser(description='Train a model (data-free with a dfbf block)')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision (GPU)')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from CKPT, or from the latest checkpoint in the work dir')
    add_cfg_options(parser)
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args)
    if args.amp:
        cfg.optim_wrapper = dict(cfg.get('optim_wrapper') or {}, type='AmpOptimWrapper',
                                 loss_scale='dynamic')
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    if 'dfbf' in cfg and 'runner_type' not in cfg:
        cfg.runner_type = 'DataFreeDistillRunner'
    runner = RUNNERS.build(cfg) if 'runner_type' in cfg else Runner.from_cfg(cfg)
    return runner.train()


if __name__ == '__main__':
    run_cli(main)
