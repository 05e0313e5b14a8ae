"""ProgressivePruningHook: prune the student further at the start of each progressive step.

``dfbf.progressive=dict(steps=K)`` splits the fine-tuning epochs into K steps. The student is
built pruned to 1/K of the pruner's target cut (``dfbf_config.to_runner_config`` gives the
distiller that target); at the first epoch of step k this hook prunes ``model.student``'s
backbone to k/K of the cut, measured against the unpruned teacher backbone, so the last step
ends at the target. Each step then fine-tunes through the same loop as a one-shot run.

What keeps MMEngine consistent after parameters change shape: the optimizer is the same
object (the param schedulers and the optim wrapper hold it), only its param groups get the new
``Parameter`` objects in place of the replaced ones (by name) and their momentum buffers are
dropped; the lr restarts at its initial value (each step's MultiStep milestones are in the
scheduler already). ``model.channel_spec`` becomes the spec of the new student against the stock
backbone, so the next checkpoint (ChannelSpecHook) and a ``--resume`` from it hold the spec of
the step in progress, and the export is the last step's student. Taps whose width changed are
chosen again. Distributed runs are refused (DDP's buckets are fixed at wrap time).
"""
from typing import List, Optional, Sequence

import torch
from mmengine.dist import get_world_size
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from ...registry import HOOKS, PRUNERS
from ...stock_model import input_channels


def step_epochs(steps: int, epochs: Optional[Sequence[int]], total: int) -> List[int]:
    """Epochs of each step: ``epochs`` when given, else ``total`` split evenly (the first
    steps get the remainder)."""
    if epochs is not None:
        return list(epochs)
    return [total // steps + (1 if k < total % steps else 0) for k in range(steps)]


def step_plan(progressive: dict, pruner: dict, schedule: dict) -> dict:
    """``dict(metric, targets, begins, milestones)`` of a progressive run: the cut of every
    step (k/K of the target), the epoch each step begins at, and the lr milestones of the
    whole run (``schedule.lr_steps``, given in epochs of the whole schedule, scaled into each step)."""
    (metric, goal), = pruner['target'].items()
    k = progressive['steps']
    lengths = step_epochs(k, progressive['epochs'], schedule['epochs'])
    begins = [sum(lengths[:i]) for i in range(k)]
    milestones = set()
    for b, n in zip(begins, lengths):
        for m in schedule['lr_steps']:
            at = int(round(m * n / schedule['epochs']))
            if 0 < at < n:
                milestones.add(b + at)
    return dict(metric=metric, targets=[goal * (i + 1) / k for i in range(k)], begins=begins,
                milestones=sorted(milestones))


@HOOKS.register_module()
class ProgressivePruningHook(Hook):
    """Re-prunes the student at the first epoch of steps 2..K (see the module docstring).

    Args:
        pruner: the PRUNERS config of the run (its ``target`` is replaced by each step's).
        metric: the target's metric ('macs', 'params', 'latency').
        targets: the cut of every step, of the unpruned backbone (the last one: the target).
        begins: the epoch (0-based) every step begins at.
        input_size: (H, W) the pruner measures on.
    """

    priority = 'ABOVE_NORMAL'

    def __init__(self, pruner: dict, metric: str, targets: Sequence[float], begins: Sequence[int],
                 input_size: Sequence[int]):
        self.pruner, self.metric = dict(pruner), metric
        self.targets, self.begins = list(targets), list(begins)
        self.input_size = tuple(input_size)

    def before_train(self, runner) -> None:
        if get_world_size() > 1:
            raise ValueError('dfbf.progressive: not supported in distributed runs (the student changes '
                             'shape between steps); train on one process')

    def before_train_epoch(self, runner) -> None:
        if runner.epoch not in self.begins[1:]:
            return
        from ...pruning import extract_channel_spec, snapshot_shapes
        from ...schema import build_checked
        k = self.begins.index(runner.epoch)
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        device = next(model.student.backbone.parameters()).device
        example = torch.zeros(1, input_channels(model.teacher), *self.input_size, device=device)
        cfg = dict(self.pruner, target={self.metric: self.targets[k]})
        pruner = build_checked(PRUNERS, cfg, 'dfbf.pruner')
        names = {id(p): n for n, p in model.named_parameters()}
        student, teacher = model.student.backbone, model.teacher.backbone
        pruner.prune(student, example, reference=teacher)
        spec = extract_channel_spec(student, snapshot_shapes(teacher))
        spec['backbone'] = type(student).__name__
        model.channel_spec = spec
        self._new_taps(runner, model, example)
        self._rebind_optimizer(runner, model, names)
        reached = pruner.report.get('target', {}).get('reached')
        runner.message_hub.update_info(f'dfbf_progressive_step{k + 1}', reached)
        runner.logger.info(
            f'progressive pruning: step {k + 1}/{len(self.begins)} at epoch {runner.epoch}: student '
            f'backbone pruned to -{reached:.1%} {self.metric} of the teacher backbone (step target '
            f'-{self.targets[k]:.1%}); {len(spec["modules"])} modules narrower than stock')

    @staticmethod
    def _new_taps(runner, model, example) -> None:
        """The distiller's taps again: the default ones are layers at full width."""
        from ...distillation.feature_taps import select_taps
        mcfg = runner.cfg.model
        model.taps = select_taps(model.teacher.backbone, model.student.backbone, example,
                                 (mcfg.get('distill') or {}).get('taps'))
        sp = mcfg.get('sp_loss')
        if sp and model.sp_loss is not None:
            taps = sp.get('taps', 'features')
            model.sp_taps = (model.taps if taps == 'features' else model._pruned_layers() if taps == 'layers'
                             else select_taps(model.teacher.backbone, model.student.backbone, example, taps))

    @staticmethod
    def _rebind_optimizer(runner, model, names: dict) -> None:
        """Put the student's new parameters into the optimizer's groups in place of the old ones
        (same optimizer object, so schedulers keep working); lr back to its initial value."""
        optimizer = runner.optim_wrapper.optimizer
        params = dict(model.named_parameters())
        for group in optimizer.param_groups:
            new = []
            for p in group['params']:
                q = params.get(names.get(id(p)), p)
                if q is not p:
                    optimizer.state.pop(p, None)  # momentum of the old shape
                new.append(q)
            group['params'] = new
            if 'initial_lr' in group:
                group['lr'] = group['initial_lr']
