"""Evaluate a checkpoint like the OpenMMLab test tools (stock or pruned deploy configs).

    python tools/test.py work_dirs/x/export/pruned.py work_dirs/x/export/pruned.pth
        [--work-dir DIR] [--cfg-options ...] [--non-strict]

Prints the metrics of the config's ``test_evaluator``; the exported deploy config of a dfbf run
is an ordinary mm config, so the stock ``tools/test.py`` of its package gives the same numbers.
The checkpoint must fit the model (every key, every shape; MMEngine alone would only warn and
report a wrong metric); ``--non-strict`` allows missing / unexpected keys.
"""
from mmengine.runner import Runner

import dfbf_mm  # noqa: F401  (registers PrunedBackbone etc.)
from dfbf_mm.cli import ArgumentParser, add_cfg_options, load_config, run_cli
from dfbf_mm.engine.hooks.strict_checkpoint_hook import check_checkpoint, pruned_backbone_spec
from dfbf_mm.stock_model import build_stock_model, read_checkpoint


def parse_args(argv=None):
    parser = ArgumentParser(description='Test (and evaluate) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save logs and metrics')
    parser.add_argument('--non-strict', action='store_true',
                        help='allow checkpoint keys the model lacks and model keys the checkpoint '
                             'lacks (shapes must still match)')
    add_cfg_options(parser)
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args)
    # The checkpoint is checked against the model first, before the runner writes a work dir and
    # reads the test data; a deploy config's own StrictCheckpointHook is then redundant.
    _, state = read_checkpoint(args.checkpoint, 'checkpoint')
    check_checkpoint(build_stock_model(cfg), args.checkpoint, 'checkpoint', strict=not args.non_strict,
                     channel_spec=pruned_backbone_spec(cfg.get('model')), state=state)
    del state
    cfg.load_from = args.checkpoint
    cfg.pop('runner_type', None)  # testing needs the plain runner, also for dfbf configs
    cfg.custom_hooks = [h for h in cfg.get('custom_hooks') or []
                        if not (isinstance(h, dict) and h.get('type') == 'StrictCheckpointHook')]
    runner = Runner.from_cfg(cfg)
    metrics = runner.test()
    print(metrics)
    return metrics


if __name__ == '__main__':
    run_cli(main)
