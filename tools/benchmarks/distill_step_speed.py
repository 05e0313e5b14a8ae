"""Cost of one distillation step vs one plain training step of the student alone.

    python -m tools.benchmarks.distill_step_speed [--models yolox_s resnet50 faster_rcnn_r50 rtmdet_s]
        [--batch 8] [--size 256] [--steps 5] [--neck] [--out docs/distill_step_speed.md]

For each stock model (random weights: the cost does not depend on the values) the student is
the backbone-pruned model (L1, s=0.1, layer-dependent, as in the reference). Measured side by
side in one process, median over ``--steps`` after a warm-up:
- distill step: ``DataFreeDistiller.train_step`` on a batch of synthetic-format images
  (teacher backbone forward without grad + student backbone forward/backward + SGD step);
- plain step: the pruned student's own stock ``train_step`` on a labelled batch of the same
  size (full model with neck, head and task loss, backward, SGD step);
- with ``--neck`` (detectors), also the distill step with ``dfbf.distill.neck_weight=1`` (the
  frozen stock neck run on both backbones' outputs, as the shipped detection configs do).
"""
import argparse
import copy
import statistics
import tempfile
import time

import torch
from mmengine.hub import get_config
from mmengine.logging import MessageHub
from mmengine.optim import build_optim_wrapper

import dfbf_mm  # noqa: F401
from dfbf_mm.registry import MODELS
from dfbf_mm.stock_model import build_stock_model, config_scope, enter_scope, stock_model_cfg

MODELS_CFG = {
    'yolox_s': 'mmdet::yolox/yolox_s_8xb8-300e_coco.py',
    'resnet50': 'mmpretrain::resnet/resnet50_8xb32_in1k.py',
    'faster_rcnn_r50': 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py',
    'rtmdet_s': 'mmdet::rtmdet/rtmdet_s_8xb32-300e_coco.py',
}
DEFAULT_MODELS = ['yolox_s', 'resnet50']


def labelled_batch(scope, batch, size):
    if scope == 'mmdet':
        from mmdet.testing import demo_mm_inputs
        return demo_mm_inputs(batch, image_shapes=(3, size, size), num_items=[3] * batch,
                              num_classes=80)
    from mmpretrain.structures import DataSample
    return dict(inputs=[torch.randint(0, 255, (3, size, size), dtype=torch.uint8)
                        for _ in range(batch)],
                data_samples=[DataSample().set_gt_label(i % 1000) for i in range(batch)])


def timed(fns, steps, warmup=2):
    """Median seconds of each of ``fns``, run in turns so all see the same load."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(steps):
        for fn, t in zip(fns, times):
            start = time.perf_counter()
            fn()
            t.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def measure(name, batch, size, steps, neck=False):
    # stock batch augments (YOLOX's random resize) read the iteration from the message hub
    MessageHub.get_current_instance().update_info('iter', 0)
    cfg = get_config(MODELS_CFG[name])
    scope = config_scope(cfg)
    enter_scope(scope)
    teacher = build_stock_model(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = f'{tmp}/teacher.pth'
        torch.save({'state_dict': teacher.state_dict()}, ckpt)
        distillers = [MODELS.build(dict(
            type='DataFreeDistiller', model=stock_model_cfg(cfg), teacher_checkpoint=ckpt,
            pruner=dict(type='L1FilterPruner', sparsity=0.1, layer_dependent=True),
            input_size=(size, size), distill=dict(neck_weight=w))) for w in ((0, 1.0) if neck else (0,))]
    sgd = dict(optimizer=dict(type='SGD', lr=1e-4, momentum=0.9, weight_decay=5e-4))
    images = dict(inputs=[torch.randn(3, size, size) for _ in range(batch)])
    distill_steps = []
    for d in distillers:
        d.train()
        distill_steps.append(lambda d=d, o=build_optim_wrapper(d, sgd): d.train_step(images, o))
    # the plain step trains a separate copy of the pruned student with its own stock loss
    student = copy.deepcopy(distillers[0].student).train()
    student.requires_grad_(True)
    plain_optim = build_optim_wrapper(student, sgd)
    data = labelled_batch(scope, batch, size)
    t = timed([distill_steps[0], lambda: student.train_step(data, plain_optim), *distill_steps[1:]], steps)
    return dict(model=name, batch=batch, size=size, distill=t[0], plain=t[1],
                ratio=t[0] / t[1], neck=t[2] if neck else None)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--models', nargs='+', default=DEFAULT_MODELS, choices=list(MODELS_CFG))
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--size', type=int, default=256)
    parser.add_argument('--steps', type=int, default=5)
    parser.add_argument('--neck', action='store_true',
                        help='also time the distill step with neck_weight=1 (detectors)')
    parser.add_argument('--out', default=None, help='write the markdown table here too')
    args = parser.parse_args()
    rows = [measure(m, args.batch, args.size, args.steps, args.neck) for m in args.models]
    neck = ' | distill step + neck loss (s) | + neck / distill' if args.neck else ''
    lines = [f'Produced by `python -m tools.benchmarks.distill_step_speed --models {" ".join(args.models)} '
             f'--batch {args.batch} --size {args.size} --steps {args.steps}{" --neck" if args.neck else ""}` '
             f'on {torch.get_num_threads()} CPU thread(s); median seconds per step.', '',
             f'| model | batch | input | distill step (s) | plain student step (s) | ratio{neck} |',
             '|---|---|---|---|---|---|' + ('---|---|' if args.neck else '')]
    lines += [f'| {r["model"]} | {r["batch"]} | {r["size"]}x{r["size"]} | {r["distill"]:.3f} | '
              f'{r["plain"]:.3f} | {r["ratio"]:.2f} |'
              + (f' {r["neck"]:.3f} | {r["neck"] / r["distill"]:.2f} |' if args.neck else '') for r in rows]
    print('\n'.join(lines))
    if args.out:
        with open(args.out, 'w') as f:
            f.write('# Distillation step vs plain student training step\n\n' + '\n'.join(lines) + '\n')


if __name__ == '__main__':
    main()
