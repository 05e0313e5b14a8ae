"""Evaluate a checkpoint like the OpenMMLab test tools (stock or pruned deploy configs).

    python tools/test.py work_dirs/x/export/pruned.py work_dirs/x/export/pruned.pth
        [--work-dir DIR] [--cfg-options ...] [--out results.pkl]

Prints the metrics of the config's ``test_evaluator``; the exported deploy config of a dfbf run
is an ordinary mm config, so the stock ``tools/test.py`` of its package gives the same numbers.
"""
import argparse

from mmengine.config import DictAction
from mmengine.runner import Runner

import dfbf_mm  # noqa: F401  (registers PrunedBackbone etc.)
from dfbf_mm.cli import load_config, run_cli


def parse_args():
    parser = argparse.ArgumentParser(description='Test (and evaluate) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save logs and metrics')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings in the config, key=value')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    return parser.parse_args()


def main():
    args = parse_args()
    cfg = load_config(args)
    cfg.load_from = args.checkpoint
    cfg.pop('runner_type', None)  # testing needs the plain runner, also for dfbf configs
    runner = Runner.from_cfg(cfg)
    metrics = runner.test()
    print(metrics)


if __name__ == '__main__':
    run_cli(main)
