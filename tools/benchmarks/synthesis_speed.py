"""How fast can DeepInversion reach the reference's image quality? One teacher, several modes.

    python -m tools.benchmarks.synthesis_speed [--config C --checkpoint P] [--batch-size 16]
        [--image-size 32] [--batches 8] [--reference-batches 1] [--modes 0 1 ...]
        [--accuracy 0 5 --ft-epochs 10] [--work-dir work_dirs/synthesis_speed]
        [--out-md docs/synthesis_speed.md]

Every mode fills a ``SyntheticImageDataset`` (the class training uses, so labels and
seeds are exactly what a DFBF run gets) from the same teacher with the classification loss
weights; batches are cached under ``--work-dir`` (a re-run reuses them and reports the wall
time recorded when they were made). Per mode we report teacher forward+backward passes per
batch, wall time per batch and the final
BN-statistics loss (sum over BN layers, on the final images at full resolution without jitter,
mean over the batches). The goal is the reference's final BN loss with at most 1/10 of its
passes. ``--accuracy`` fine-tunes the pruned digits student (configs/benchmarks/
dfbf_digits_cls.py, short schedule) on each listed mode's images and reports test top-1.
"""
import argparse
import os
import os.path as osp
import sys
import time

import torch

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmengine.config import Config

from dfbf_mm.stock_model import build_stock_model, load_weights
from dfbf_mm.synthesis import SyntheticImageDataset

# (name, preset, overrides)
_OLD_FAST = dict(iterations=200, lr=0.25, warmup_iters=10)
MODES = [
    ('reference (classification preset)', 'classification', {}),
    ("old 'fast': 200 it, lr 0.25, cosine, jitter 2 throughout", 'classification', _OLD_FAST),
    ("'fast' preset: as old, no jitter in the last 100 it", 'fast', {}),
    ('200 it, lr 0.25, no jitter at all', 'classification', dict(_OLD_FAST, jitter=0)),
    ('200 it, lr 0.5, betas (0.5, 0.9), jitter 2 throughout', 'classification',
     dict(_OLD_FAST, lr=0.5, betas=(0.5, 0.9))),
    ('coarse: 100 it on 16x16 upsampled + 100 full, jitter 2', 'classification',
     dict(_OLD_FAST, iterations=100, coarse_iterations=100, coarse_factor=2)),
]


def synthesize_mode(model, mode, args, cache_root):
    """The mode's dataset, prepared; and (passes, seconds, BN loss) per batch from the cache."""
    name, preset, overrides = mode
    batches = args.reference_batches if preset == 'classification' and not overrides else args.batches
    ds = SyntheticImageDataset(
        num_images=batches * args.batch_size, batch_size=args.batch_size,
        image_size=(args.image_size, args.image_size), cache_dir=cache_root, seed=args.seed,
        num_classes=10,
        synthesizer=dict(type='DeepInversionSynthesizer', preset=preset, **overrides))
    ds.prepare(model, 'classification', progress=True)
    stats = [ds.cache.load(b, ds._shape)['stats'] for b in range(ds.num_batches)]
    return ds, stats


def finetune_accuracy(mode, ds, args, work_dir):
    """Test top-1 of the pruned digits student fine-tuned on the mode's first ``--ft-images``
    (cached) images, before and after.

    Runner._init_model_weights re-initialises the distiller's freshly loaded teacher and student
    (mmengine's init_weights on modules never marked initialised); skipping that step keeps the
    checkpoint weights, so this measures the images, not that defect.
    """
    from mmengine.runner import Runner
    from dfbf_mm.engine.dfbf_config import to_runner_config
    name, preset, overrides = mode
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'benchmarks', 'dfbf_digits_cls.py'))
    for split in ('val_dataloader', 'test_dataloader', 'train_dataloader'):
        cfg[split].dataset.data_root = args.data
    cfg.work_dir = work_dir
    cfg.dfbf.teacher_checkpoint = args.checkpoint
    cfg.dfbf.synthesizer = dict(type='DeepInversionSynthesizer', preset=preset, **overrides)
    cfg.dfbf.synthetic_data = dict(num_images=min(args.ft_images, ds.num_images), batch_size=args.batch_size,
                                   image_size=(args.image_size, args.image_size), seed=args.seed,
                                   num_classes=10, cache_dir=ds.cache_dir)
    cfg.dfbf.schedule = dict(epochs=args.ft_epochs, lr=0.01, lr_steps=[max(1, args.ft_epochs * 3 // 4)],
                             checkpoint_interval=args.ft_epochs)
    cfg.dfbf.export = dict(profile=False)  # latency profiling is not what this measures
    runner_cfg = to_runner_config(cfg)
    runner_cfg.default_hooks.logger = dict(type='LoggerHook', interval=50)
    runner = Runner.from_cfg(runner_cfg)
    runner._init_model_weights = lambda: None  # see the docstring
    pruned = runner.val()['accuracy/top1']
    runner.train()
    return pruned, runner.val_loop.run()['accuracy/top1']


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--config', default='configs/benchmarks/digits_cls_teacher.py')
    parser.add_argument('--checkpoint', default='checkpoints/digits_cls_teacher.pth')
    parser.add_argument('--data', default='data/digits', help='digits data (for --accuracy)')
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--image-size', type=int, default=32)
    parser.add_argument('--batches', type=int, default=4, help='batches per mode')
    parser.add_argument('--reference-batches', type=int, default=1,
                        help='batches of the reference mode (2000 passes each)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=1, help='torch CPU threads')
    parser.add_argument('--modes', type=int, nargs='+', default=None, help='indices into MODES')
    parser.add_argument('--accuracy', type=int, nargs='*', default=[],
                        help='indices of modes whose images fine-tune the pruned student')
    parser.add_argument('--ft-epochs', type=int, default=40)
    parser.add_argument('--ft-images', type=int, default=16,
                        help='images each fine-tuning uses (the first ones of the mode)')
    parser.add_argument('--work-dir', default='work_dirs/synthesis_speed')
    parser.add_argument('--out-md', default=None, help='also write the table here')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    cfg = Config.fromfile(args.config)
    model = build_stock_model(cfg)
    load_weights(model, args.checkpoint)
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    model.to(device).eval()

    rows = []
    for idx, mode in enumerate(MODES):
        if args.modes is not None and idx not in args.modes:
            continue
        ds, stats = synthesize_mode(model, mode, args, osp.join(args.work_dir, 'cache'))
        n = len(stats)
        row = dict(idx=idx, name=mode[0], batches=n,
                   passes=sum(s['teacher_passes'] for s in stats) / n,
                   secs=sum(s['seconds'] for s in stats) / n,
                   bn=sum(s['bn_eval'] for s in stats) / n,
                   bn_per_batch=[s['bn_eval'] for s in stats], acc=None)
        if idx in args.accuracy:
            row['pruned'], row['acc'] = finetune_accuracy(
                mode, ds, args, osp.join(args.work_dir, f'finetune_mode{idx}'))
        rows.append(row)
        print(f"[{idx}] {mode[0]}: {row['passes']:.0f} passes/batch, {row['secs']:.1f} s/batch, BN loss "
              f"{row['bn']:.3f} (per batch {', '.join(f'{v:.2f}' for v in row['bn_per_batch'])})"
              + (f", top-1 {row['acc']:.2f}" if row['acc'] is not None else ''), flush=True)

    ref = next((r for r in rows if r['idx'] == 0), None)
    lines = [f'Teacher: `{args.config}` + `{args.checkpoint}`; batch {args.batch_size}, '
             f'{args.image_size}x{args.image_size} px, dataset seed {args.seed}, device {device}, '
             f'{args.threads} CPU thread(s). BN loss: mean over the mode\'s batches, final images, '
             'no jitter.', '',
             '| mode | batches | teacher passes / batch | wall s / batch | final BN loss | '
             'passes vs reference | top-1 after fine-tuning (%) |',
             '|---|---|---|---|---|---|---|']
    for r in rows:
        frac = f"{r['passes'] / ref['passes']:.3f}" if ref else '-'
        acc = f"{r['acc']:.2f}" if r['acc'] is not None else '-'
        lines.append(f"| {r['name']} | {r['batches']} | {r['passes']:.0f} | {r['secs']:.1f} | "
                     f"{r['bn']:.3f} | {frac} | {acc} |")
    if any(r['acc'] is not None for r in rows):
        pruned = next(r['pruned'] for r in rows if r['acc'] is not None)
        lines += ['', f'Pruned student before fine-tuning: top-1 {pruned:.2f} %; fine-tuning: '
                  f'{args.ft_epochs} epochs over the first {args.ft_images} images of each mode (SGD lr 0.01).']
    table = '\n'.join(lines)
    print(table)
    if args.out_md:
        os.makedirs(osp.dirname(osp.abspath(args.out_md)), exist_ok=True)
        with open(args.out_md, 'w') as f:
            f.write('# DeepInversion synthesis speed\n\nProduced by `python -m tools.benchmarks.'
                    f'synthesis_speed {" ".join(argv or sys.argv[1:])}`.\n\n{table}\n')
    return rows


if __name__ == '__main__':
    t0 = time.time()
    main()
    print(f'total {time.time() - t0:.0f} s')
