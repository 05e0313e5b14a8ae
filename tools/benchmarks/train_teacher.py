"""Train a teacher of the digits benchmark and write its slim checkpoint.

    python -m tools.benchmarks.train_teacher {cls,det,pose,vit,convnext} [--data data/digits]
        [--work-dir work_dirs/teachers/<task>] [--out checkpoints/digits_<task>_teacher.pth]
    python -m tools.benchmarks.train_teacher cls --test-only checkpoints/digits_cls_teacher.pth

Training is MMEngine's stock ``Runner`` on ``configs/benchmarks/digits_<task>_teacher.py``
(stock train/val loops; the stock evaluator on the test split). The committed checkpoint keeps
only what a user of the teacher needs: ``state_dict`` and a small ``meta`` (task, config,
dataset meta, the final test metrics, wall time, versions); the optimizer and message hub of
the full MMEngine checkpoint (kept in the work dir) would multiply its size.
"""
import argparse
import copy
import os
import os.path as osp
import sys
import time

import torch
from mmengine.config import Config, DictAction
from mmengine.hooks import Hook
from mmengine.runner import Runner

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TASKS = {
    'cls': ('configs/benchmarks/digits_cls_teacher.py', 'cls/train.txt'),
    'det': ('configs/benchmarks/digits_det_teacher.py', 'det/annotations/train.json'),
    'pose': ('configs/benchmarks/digits_pose_teacher.py', 'pose/annotations/train.json'),
    'vit': ('configs/benchmarks/digits_vit_teacher.py', 'cls/train.txt'),
    'convnext': ('configs/benchmarks/digits_convnext_teacher.py', 'cls/train.txt'),
}
DEFAULT_ROOT = 'data/digits'


def set_data_root(cfg: Config, root: str) -> Config:
    """Point every dataset (``data_root``) and evaluator ``ann_file`` of ``cfg`` at ``root``.

    The configs spell paths as ``data_root + '...'``, which MMEngine resolves when the file is
    read; this rewrites the resolved prefix, so any dataloader or evaluator follows.
    """
    old = cfg.get('data_root', DEFAULT_ROOT + '/')
    new = root.rstrip('/') + '/'

    def visit(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == 'data_root' and isinstance(value, str):
                    node[key] = new
                elif key == 'ann_file' and isinstance(value, str) and value.startswith(old):
                    node[key] = new + value[len(old):]
                else:
                    visit(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                visit(value)

    visit(cfg._cfg_dict)
    cfg.data_root = new
    return cfg


def load_task_config(task: str, data: str, work_dir: str = None, options: dict = None) -> Config:
    """The teacher config of ``task`` with data root, work dir and ``--cfg-options`` applied."""
    if task not in TASKS:
        raise ValueError(f'task: {task!r} is not one of {", ".join(TASKS)}')
    cfg = Config.fromfile(osp.join(REPO, TASKS[task][0]))
    set_data_root(cfg, data)
    if options:
        cfg.merge_from_dict(options)
    cfg.work_dir = work_dir or osp.join('work_dirs', 'teachers', task)
    return cfg


class KeepMetrics(Hook):
    """Remember the metrics of the last validation epoch (the final test-split evaluation)."""

    priority = 'LOWEST'

    def __init__(self):
        self.metrics = {}

    def after_val_epoch(self, runner, metrics=None):
        self.metrics = dict(metrics or {})


def slim_checkpoint(model: torch.nn.Module, meta: dict) -> dict:
    """``state_dict`` (float tensors on CPU) and ``meta``; nothing else."""
    model = getattr(model, 'module', model)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return dict(state_dict=state, meta=plain_tree(meta))


def _plain(value):
    """Metrics as plain floats (numpy / tensor scalars do not belong in the meta)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def plain_tree(node):
    """``node`` with only builtin containers and scalars, so ``torch.load(weights_only=True)``
    reads the meta without any allow-listed class (str subclasses such as TorchVersion, numpy
    scalars and tuples of them become str / float / list)."""
    if isinstance(node, dict):
        return {str(k): plain_tree(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [plain_tree(v) for v in node]
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int) and type(node) is int:
        return node
    if isinstance(node, str):
        return str(node)
    if hasattr(node, 'item') and getattr(node, 'size', 1) == 1:
        return plain_tree(node.item())
    if isinstance(node, float):
        return float(node)
    if hasattr(node, 'tolist'):
        return plain_tree(node.tolist())
    return str(node)


def train(task: str, data: str, work_dir: str, out: str, options: dict = None) -> dict:
    """Train ``task``'s teacher, write the slim checkpoint to ``out``; returns its meta."""
    cfg = load_task_config(task, data, work_dir, options)
    runner = Runner.from_cfg(cfg)
    keep = KeepMetrics()
    runner.register_hook(keep)
    t0, c0 = time.time(), time.process_time()
    model = runner.train()
    wall, cpu = time.time() - t0, time.process_time() - c0
    if runner.train_loop.max_epochs % cfg.train_cfg.get('val_interval', 1) != 0 or not keep.metrics:
        keep.metrics = runner.val_loop.run()  # make sure the metric is of the final weights
    meta = dict(
        task=task,
        config=TASKS[task][0],
        command=' '.join(['python', '-m', 'tools.benchmarks.train_teacher'] + sys.argv[1:]),
        epochs=runner.train_loop.max_epochs,
        iterations=runner.iter,
        test_metrics={k: _plain(v) for k, v in keep.metrics.items()},
        train_wall_s=round(wall, 1),
        train_cpu_s=round(cpu, 1),  # this process's CPU time: wall minus waiting on a shared CPU
        torch_threads=torch.get_num_threads(),
        device=str(next(model.parameters()).device),
        dataset_meta=copy.deepcopy(dict(runner.train_dataloader.dataset.metainfo)),
        versions=dict(torch=torch.__version__, mmengine=__import__('mmengine').__version__),
        cfg=cfg.pretty_text,
    )
    meta = plain_tree(meta)
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    torch.save(slim_checkpoint(model, meta), out)
    return meta


def test_only(task: str, data: str, work_dir: str, checkpoint: str, options: dict = None) -> dict:
    """Evaluate ``checkpoint`` on the test split with the stock Runner; returns the metrics."""
    if not osp.isfile(checkpoint):
        raise FileNotFoundError(f'--test-only: checkpoint not found: {checkpoint}')
    cfg = load_task_config(task, data, work_dir, options)
    cfg.load_from = checkpoint
    return Runner.from_cfg(cfg).test()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('task', choices=sorted(TASKS))
    p.add_argument('--data', default=DEFAULT_ROOT, help='root made by make_digits.py')
    p.add_argument('--work-dir', default=None, help='default work_dirs/teachers/<task>')
    p.add_argument('--out', default=None, help='default checkpoints/digits_<task>_teacher.pth')
    p.add_argument('--test-only', metavar='CHECKPOINT', default=None,
                   help='only evaluate this checkpoint on the test split')
    p.add_argument('--threads', type=int, default=1,
                   help='torch CPU threads (default 1: on a shared, loaded CPU one thread is '
                        'faster than two that wait for each other)')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, default=None,
                   help='override config fields, e.g. train_cfg.max_epochs=2')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(max(args.threads, 1))
    import dfbf_mm  # noqa: F401  (torch.load of MMEngine checkpoints with weights_only)
    probe = osp.join(args.data, TASKS[args.task][1])
    if not osp.isfile(probe):
        sys.exit(f'--data: {probe} not found; generate the sets first: '
                 f'python -m tools.benchmarks.make_digits --out {args.data}')
    if args.test_only:
        metrics = test_only(args.task, args.data, args.work_dir, args.test_only, args.cfg_options)
        print({k: _plain(v) for k, v in metrics.items()})
        return
    out = args.out or osp.join('checkpoints', f'digits_{args.task}_teacher.pth')
    meta = train(args.task, args.data, args.work_dir, out, args.cfg_options)
    print(f'{args.task}: test metrics {meta["test_metrics"]}, training {meta["train_wall_s"]} s wall '
          f'({meta["train_cpu_s"]} s CPU), '
          f'wrote {out} ({osp.getsize(out) / 1e6:.1f} MB)')


if __name__ == '__main__':
    main()
