"""How fast can DeepInversion reach the reference's image quality? One teacher, several schedules.

    python tools/benchmarks/synthesis_speed.py [--config C --checkpoint P] [--batch-size 16]
        [--image-size 32] [--seeds 0 1] [--out-md docs/synthesis_speed.md]

Every mode synthesises the same batches (same seeds) from the same teacher with the
classification loss weights; we report teacher forward+backward passes per batch, wall time
and the final BN-statistics loss (sum over BN layers, measured on the final images at full
resolution without jitter, so modes are comparable). The goal is the reference's final BN
loss with at most 1/10 of its passes.
"""
import argparse
import os
import os.path as osp
import sys
import time

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

from mmengine.config import Config  # noqa: E402

from dfbf_mm.stock_model import build_stock_model, load_weights, pixel_range  # noqa: E402
from dfbf_mm.synthesis import DeepInversionSynthesizer, inversion_target  # noqa: E402

# (name, preset, overrides, warm_start): warm_start starts the batch from an earlier batch
# (fast preset, another seed), shuffled, rolled and flipped, instead of noise.
MODES = [
    ('reference (classification preset)', 'classification', {}, False),
    ('fast preset: 200 it, lr 0.25, cosine', 'fast', {}, False),
    ('200 it, lr 0.1 (reference lr), cosine', 'fast', dict(lr=0.1), False),
    ('200 it, lr 0.25, constant', 'fast', dict(lr_schedule='constant', warmup_iters=0), False),
    ('two-phase: 150 half-res + 50 full, lr 0.25', 'fast',
     dict(iterations=50, half_res_iterations=150, warmup_iters=5), False),
    ('100 it, lr 0.5, cosine', 'fast', dict(iterations=100, lr=0.5, warmup_iters=5), False),
    ('warm start from previous batch, 100 it, lr 0.25', 'fast', dict(iterations=100, warmup_iters=5), True),
    ('warm start from previous batch, 200 it, lr 0.25', 'fast', {}, True),
]


def fresh_start(images: torch.Tensor, seed: int) -> torch.Tensor:
    """Earlier images, shuffled, randomly rolled and flipped: a warm start with fresh jitter."""
    g = torch.Generator().manual_seed(seed)
    x = images[torch.randperm(len(images), generator=g)]
    dy, dx = torch.randint(-4, 5, (2,), generator=g).tolist()
    x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    return torch.flip(x, dims=(3,)) if torch.rand(1, generator=g).item() < 0.5 else x


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--config', default='configs/benchmarks/digits_cls_teacher.py')
    parser.add_argument('--checkpoint', default='checkpoints/digits_cls_teacher.pth',
                        help="teacher weights; 'none' = random init (BN stats then trivial)")
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--image-size', type=int, default=32)
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1])
    parser.add_argument('--threads', type=int, default=1, help='torch CPU threads')
    parser.add_argument('--modes', type=int, nargs='+', default=None, help='indices into MODES')
    parser.add_argument('--out-md', default=None, help='also write the table here')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    cfg = Config.fromfile(args.config)
    model = build_stock_model(cfg)
    if args.checkpoint != 'none':
        load_weights(model, args.checkpoint)
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    model.to(device).eval()
    target = inversion_target(model, 'classification')
    prange = pixel_range(model)
    size = (args.image_size, args.image_size)

    rows = []
    previous = {}  # seed -> earlier batch that warm-start modes start from
    for idx, (name, preset, overrides, warm) in enumerate(MODES):
        if args.modes is not None and idx not in args.modes:
            continue
        synth = DeepInversionSynthesizer(preset, **overrides)
        bn, secs = [], 0.0
        for i, seed in enumerate(args.seeds):
            init = None
            if warm:
                # Every warm mode starts from the same earlier batch: fast preset, seed - 1000.
                if seed not in previous:
                    previous[seed], _ = DeepInversionSynthesizer('fast').synthesize(
                        target, args.batch_size, size, prange, seed=seed - 1000, progress=False)
                init = fresh_start(previous[seed].cpu(), seed)
            images, stats = synth.synthesize(target, args.batch_size, size, prange, seed=seed,
                                             progress=True, init=init)
            bn.append(stats['bn_eval'])
            secs += stats['seconds']
        rows.append((name, synth.passes_per_batch, secs / len(args.seeds), sum(bn) / len(bn)))
        print(f'{name}: passes {rows[-1][1]}, {rows[-1][2]:.1f} s/batch, BN loss {rows[-1][3]:.3f}', flush=True)

    ref = rows[0] if rows and args.modes in (None, [0]) or (args.modes and 0 in args.modes) else None
    lines = [f'Teacher: `{args.config}` + `{args.checkpoint}`; batch {args.batch_size}, '
             f'{args.image_size}x{args.image_size} px, seeds {args.seeds}, device {device}, '
             f'{args.threads} CPU thread(s). BN loss: mean over seeds, final images, no jitter.', '',
             '| mode | teacher passes / batch | wall s / batch | final BN loss | passes vs reference |',
             '|---|---|---|---|---|']
    for name, passes, secs, bn in rows:
        frac = f'{passes / ref[1]:.3f}' if ref else '-'
        lines.append(f'| {name} | {passes} | {secs:.1f} | {bn:.3f} | {frac} |')
    table = '\n'.join(lines)
    print(table)
    if args.out_md:
        os.makedirs(osp.dirname(osp.abspath(args.out_md)), exist_ok=True)
        with open(args.out_md, 'w') as f:
            f.write('# DeepInversion synthesis speed\n\nProduced by `python tools/benchmarks/'
                    f'synthesis_speed.py {" ".join(argv or sys.argv[1:])}`.\n\n{table}\n')
    return rows


if __name__ == '__main__':
    t0 = time.time()
    main()
    print(f'total {time.time() - t0:.0f} s')
