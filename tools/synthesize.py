"""Synthesise images from a teacher (DeepInversion or the generator) and write PNGs plus grid.png.

    python tools/synthesize.py CONFIG CHECKPOINT --num-images N --out DIR [--seed S]
        [--batch-size B] [--cfg-options KEY=VALUE ...]

CONFIG is a dfbf config: a stock mmdet/mmpose/mmpretrain config plus a ``dfbf`` block with
``synthesizer`` and ``synthetic_data`` (image_size, batch_size, seed, cache_dir). Batches are
cached (default cache: DIR/cache), so a rerun or a killed run resumes.
"""
import os.path as osp

import torch
from mmengine.config import Config


from dfbf_mm.cli import ArgumentParser, add_cfg_options, merge_cfg_options, run_cli
from dfbf_mm.registry import SYNTHESIZERS
from dfbf_mm.schema import DFBF, SYNTHETIC_DATA, build_checked
from dfbf_mm.stock_model import (TASK_OF_SCOPE, build_stock_model, config_scope,
                                 load_weights, normalization)
from dfbf_mm.synthesis import SyntheticImageDataset, save_grid, save_pngs, to_uint8


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='dfbf config (stock config + dfbf block)')
    parser.add_argument('checkpoint', help='teacher checkpoint')
    parser.add_argument('--num-images', type=int, required=True, help='images to write')
    parser.add_argument('--out', required=True, help='output directory')
    parser.add_argument('--seed', type=int, default=None, help='overrides synthetic_data.seed')
    parser.add_argument('--batch-size', type=int, default=None, help='overrides synthetic_data.batch_size')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    add_cfg_options(parser, help='override config keys, e.g. dfbf.synthesizer.iterations=100')
    return parser.parse_args(argv)


def _named(field: str, error: Exception) -> ValueError:
    """``error`` (a ``'key: ...'`` message) re-raised under the config path ``field``."""
    return ValueError(f'{field}.{error}' if not str(error).startswith(field) else str(error))


def main(argv=None) -> str:
    args = parse_args(argv)
    if args.num_images < 1:
        raise ValueError(f'--num-images: must be a positive integer, got {args.num_images}')
    if args.batch_size is not None and args.batch_size < 2:
        raise ValueError(f'--batch-size: DeepInversion needs at least 2 images per batch, '
                         f'got {args.batch_size}')
    if not osp.isfile(args.config):
        raise FileNotFoundError(f'config: file not found: {args.config!r}')
    cfg = Config.fromfile(args.config)
    merge_cfg_options(cfg, args.cfg_options)
    dfbf = cfg.get('dfbf')
    if dfbf is None or 'synthesizer' not in dfbf:
        raise ValueError('dfbf: the config needs dfbf = dict(synthesizer=..., synthetic_data=...)')
    overrides = dict(num_images=args.num_images, seed=args.seed, batch_size=args.batch_size)
    data = SYNTHETIC_DATA.read(dict(dfbf.get('synthetic_data') or {},
                                    **{k: v for k, v in overrides.items() if v is not None}))
    data['cache_dir'] = data['cache_dir'] or osp.join(args.out, 'cache')
    data.pop('train_batch_size')  # a fine-tuning setting
    task = TASK_OF_SCOPE[config_scope(cfg)]
    # the settings are checked before the model is built and the checkpoint read
    synthesizer = build_checked(SYNTHESIZERS, DFBF.read_option('synthesizer', dfbf.get('synthesizer')),
                                'dfbf.synthesizer')
    try:
        dataset = SyntheticImageDataset(synthesizer=synthesizer, **data)
    except ValueError as e:
        raise _named('dfbf.synthetic_data', e) from None

    model = build_stock_model(cfg)
    load_weights(model, args.checkpoint, field='checkpoint')
    model.to(args.device)
    dataset.prepare(model, task)

    mean, std, bgr_to_rgb = normalization(model)
    images = torch.stack([dataset[i]['inputs'] for i in range(len(dataset))])
    pixels = to_uint8(images, mean, std)
    # bgr_to_rgb: the model sees RGB channels; otherwise it sees the BGR order cv2 writes.
    save_pngs(pixels, args.out, rgb=bgr_to_rgb)
    grid = save_grid(pixels, osp.join(args.out, 'grid.png'), rgb=bgr_to_rgb)
    print(f'wrote {len(pixels)} images and {grid} (cache: {dataset.cache.dir})')
    return grid


if __name__ == '__main__':
    run_cli(main)
