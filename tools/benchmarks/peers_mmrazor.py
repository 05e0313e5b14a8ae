"""One mmrazor 1.0.0 data-free distillation run (DAFL, DFAD or ZSKT) on the digits classifier.

Started by ``python -m tools.benchmarks.peers`` as one process under the pytorch launcher:

    python -m torch.distributed.run --nproc_per_node 1 -m tools.benchmarks.peers_mmrazor \
        --method dfad --student STUDENT.pth --init pruned --iters 320 --seed 0 --result OUT.json

mmrazor's own config of the method (shipped in its wheel, ``configs/distill/mmcls/<method>``)
is read without its ``mmcls::`` bases and changed only where the digits teacher needs it:
the teacher (the committed digits ResNet-18 checkpoint instead of CIFAR ResNet-34, so ZSKT's
teacher taps move to the last block of each stage of a depth-18 net), the student (the pruned
model pickled by ``peers``: its weights, or re-initialised as in their configs), the digits
mean/std, the train dataloader (mmrazor's ``train_step`` reads from a batch only its size and
labels for a loss it throws away; the images themselves are never used), the iteration count
(the schedule's milestones and warm-up scaled to it at the same fractions), and DDP on CPU
(gloo, ``device_ids=None``). Writes the student's test top-1 and the run's counts to --result.
"""
if not __package__:
    raise SystemExit('run it from the repository root as: python -m tools.benchmarks.peers_mmrazor ARGS')
import argparse
import json
import os
import os.path as osp
import re
import time

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIGS = {
    'dafl': 'dafl/dafl_logits_resnet34_resnet18_8xb256_cifar10.py',
    'dfad': 'dfad/dfad_logits_resnet34_resnet18_8xb32_cifar10.py',
    'zskt': 'zskt/zskt_backbone_logits_resnet34_resnet18_8xb16_cifar10.py',
}
# ZSKT's teacher taps: the last block of each stage of ResNet-34 (3, 4, 6, 3 blocks) ->
# of the depth-18 digits teacher (2 blocks per stage)
ZSKT_TEACHER_TAPS = {'layer1.2': 'layer1.1', 'layer2.3': 'layer2.1', 'layer3.5': 'layer3.1',
                     'layer4.2': 'layer4.1'}


def teacher_passes_per_iter(method: str, batch_size: int, student_iter: int) -> int:
    """Teacher forward passes (images through the teacher) of one mmrazor ``train_step``.

    DAFL: the generator's batch goes through the teacher twice (generator loss, then distillation
    on the detached images). DFAD / ZSKT (``DataFreeDistillation``): one generator step and
    ``student_iter`` student steps, each on a fresh batch.
    """
    if method == 'dafl':
        return 2 * batch_size
    return (student_iter + 1) * batch_size


def patch_torch_ao_names() -> None:
    """mmrazor 1.0.0's quantization backend configs (imported by ``mmrazor.models``, unused by
    distillation) build tables at import time from torch.ao names that torch 2.x renamed
    (``reverse2`` -> ``_reverse2`` ...) or removed; alias them so the import succeeds."""
    import torch.ao.quantization.backend_config.utils  # noqa: F401  (an attribute mmrazor reads)
    import torch.ao.quantization.fuser_method_mappings as fmm
    from torch.ao.quantization.backend_config import BackendPatternConfig

    def reverse_sequential_wrapper2(sequential):
        def fuser_method(is_qat, x, y):
            return sequential(y, x)
        return fuser_method

    for name, value in dict(reverse2=getattr(fmm, '_reverse2', None),
                            reverse3=getattr(fmm, '_reverse3', None),
                            reverse_sequential_wrapper2=reverse_sequential_wrapper2).items():
        if not hasattr(fmm, name) and value is not None:
            setattr(fmm, name, value)
    for name in ('_set_overwrite_output_fake_quantize', '_set_overwrite_output_observer',
                 '_set_input_output_observed'):
        if not hasattr(BackendPatternConfig, name):
            setattr(BackendPatternConfig, name, lambda self, *a: self)


def mmrazor_config(method: str) -> dict:
    """mmrazor's shipped config of ``method`` as a dict, its ``mmcls::`` ``_base_`` list dropped."""
    import mmrazor
    from mmengine.config import Config
    path = osp.join(osp.dirname(mmrazor.__file__), '.mim', 'configs', 'distill', 'mmcls',
                    CONFIGS[method])
    with open(path) as f:
        text = f.read()
    text = re.sub(r"_base_ = \[.*?\]\n", '', text, count=1, flags=re.S)
    return _no_delete(Config.fromstring(text, file_format='.py').to_dict())


def _no_delete(node):
    """The config without its ``_delete_`` markers (there is no base left to delete from)."""
    if isinstance(node, dict):
        return {k: _no_delete(v) for k, v in node.items() if k != '_delete_'}
    if isinstance(node, list):
        return [_no_delete(v) for v in node]
    return node


def scale_schedule(schedulers, factor: float):
    """Milestones / begin / end of mmrazor's iteration schedule scaled by ``factor``."""
    if isinstance(schedulers, dict) and 'type' not in schedulers:
        return {k: scale_schedule(v, factor) for k, v in schedulers.items()}
    if isinstance(schedulers, list):
        return [scale_schedule(s, factor) for s in schedulers]
    s = dict(schedulers)
    for key in ('begin', 'end'):
        if key in s:
            s[key] = max(1, round(s[key] * factor)) if s[key] else 0
    if 'milestones' in s:
        s['milestones'] = [max(1, round(m * factor)) for m in s['milestones']]
    return s


def adapt(cfg: dict, method: str, student, teacher_model: dict, teacher_ckpt: str,
          mean, std, iters: int) -> dict:
    """mmrazor's config with the digits teacher / student / budget (see the module docstring)."""
    model = cfg['model']
    model.pop('_scope_', None)
    model['architecture'] = student
    model['teachers']['res34'] = dict(build_cfg=teacher_model, ckpt_path=teacher_ckpt)
    model['data_preprocessor'].update(mean=list(mean), std=list(std))
    if method == 'zskt':
        for rec in model['distiller']['teacher_recorders'].values():
            for old, new in ZSKT_TEACHER_TAPS.items():
                rec['source'] = rec['source'].replace(f'.{old}.', f'.{new}.')
    factor = iters / cfg['train_cfg']['max_iters']
    cfg['param_scheduler'] = scale_schedule(cfg['param_scheduler'], factor)
    cfg['train_cfg'].update(max_iters=iters, val_interval=iters)
    cfg['model_wrapper_cfg']['device_ids'] = None  # CPU modules under DDP
    cfg['default_hooks']['checkpoint'].update(interval=iters, max_keep_ckpts=1)
    cfg['default_hooks']['logger']['interval'] = max(1, min(50, iters // 5))
    return cfg


def WallTimeBudget(seconds: float):
    """A hook that ends training after the iteration that spends ``seconds`` of wall time."""
    from mmengine.hooks import Hook

    class _WallTimeBudget(Hook):
        priority = 'LOWEST'

        def before_train(self, runner):
            self.start = time.perf_counter()

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            if time.perf_counter() - self.start >= seconds:
                runner.train_loop.stop_training = True

    return _WallTimeBudget()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--method', required=True, choices=list(CONFIGS))
    p.add_argument('--student', required=True, help='the pruned student, a pickled nn.Module')
    p.add_argument('--init', required=True, choices=['pruned', 'scratch'])
    p.add_argument('--iters', type=int, required=True,
                   help='iterations the schedule is laid out for (milestones scaled to them)')
    p.add_argument('--max-seconds', type=float, default=None,
                   help='stop training once this much wall time is spent (a wall-time budget)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--data', default='data/digits')
    p.add_argument('--teacher-config', default='configs/benchmarks/digits_cls_teacher.py')
    p.add_argument('--teacher', default='checkpoints/digits_cls_teacher.pth')
    p.add_argument('--work-dir', required=True)
    p.add_argument('--result', required=True)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        raise SystemExit('run it under the pytorch launcher: python -m torch.distributed.run '
                         '--nproc_per_node 1 -m tools.benchmarks.peers_mmrazor ...')
    import torch
    import torch.distributed as dist
    from mmengine.config import Config
    from mmengine.runner import Runner
    from tools.benchmarks.train_teacher import set_data_root
    patch_torch_ao_names()
    from mmrazor.registry import MODELS
    from tools.benchmarks.peers import evaluate, reinitialise

    torch.manual_seed(args.seed)
    student = torch.load(args.student, weights_only=False)
    if args.init == 'scratch':
        reinitialise(student)
    tcfg = set_data_root(Config.fromfile(osp.join(REPO, args.teacher_config)), args.data)
    pre = tcfg.data_preprocessor  # what mmpretrain's Runner would put into the model
    teacher_model = dict(tcfg.model.to_dict(), type='mmpretrain.ImageClassifier',
                         data_preprocessor=dict(pre.to_dict(), type='mmpretrain.ClsDataPreprocessor'))
    cfg = adapt(mmrazor_config(args.method), args.method, student, teacher_model,
                osp.join(REPO, args.teacher), pre.mean, pre.std, args.iters)
    batch = cfg['train_dataloader']['batch_size']
    algorithm = MODELS.build(cfg['model'])
    if args.init == 'pruned':  # Runner.train() calls init_weights(): keep the pruned weights
        algorithm.architecture._is_init = True
    # one gloo process group, as torchrun describes it (MMEngine's init_dist would set a CUDA device)
    dist.init_process_group(backend='gloo')
    train_loader = dict(tcfg.train_dataloader.to_dict(), batch_size=batch,
                        sampler=dict(type='InfiniteSampler', shuffle=True))
    runner = Runner(
        model=algorithm, work_dir=args.work_dir, train_dataloader=train_loader,
        train_cfg=cfg['train_cfg'], optim_wrapper=cfg['optim_wrapper'],
        param_scheduler=cfg['param_scheduler'], default_hooks=cfg['default_hooks'],
        log_processor=cfg['log_processor'], launcher='pytorch',
        env_cfg=dict(dist_cfg=dict(backend='gloo')),
        randomness=dict(seed=args.seed, diff_rank_seed=True), default_scope='mmpretrain',
        experiment_name=f'{args.method}_{args.init}_{time.time_ns()}',
        cfg=dict(model_wrapper_cfg=cfg['model_wrapper_cfg'],
                 find_unused_parameters=cfg.get('find_unused_parameters', False)))
    if args.max_seconds:
        runner.register_hook(WallTimeBudget(args.max_seconds))
    start = time.perf_counter()
    runner.train()
    wall = time.perf_counter() - start
    done = runner.iter
    # MMSeparateDistributedDataParallel wrapped the trained parts of the algorithm in place
    student = getattr(algorithm.architecture, 'module', algorithm.architecture)
    top1 = evaluate(student, tcfg.test_dataloader.to_dict())
    teacher_top1 = evaluate(algorithm.teachers['res34'], tcfg.test_dataloader.to_dict())
    per_iter = teacher_passes_per_iter(args.method, batch, cfg['model'].get('student_iter', 1))
    record = dict(metric=top1, teacher_check=teacher_top1, wall_s=wall, iters=done,
                  schedule_iters=args.iters, max_seconds=args.max_seconds,
                  batch_size=batch, teacher_passes=per_iter * done,
                  images=done * (batch if args.method == 'dafl' else per_iter),
                  method=args.method, init=args.init, seed=args.seed,
                  config=CONFIGS[args.method])
    with open(args.result, 'w') as f:
        json.dump(record, f, indent=1)
    dist.destroy_process_group()


if __name__ == '__main__':
    main()
