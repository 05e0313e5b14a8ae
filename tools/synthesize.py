"""Synthesise DeepInversion images from a teacher and write them as PNGs plus grid.png.

    python tools/synthesize.py CONFIG CHECKPOINT --num-images N --out DIR [--seed S]
        [--batch-size B] [--cfg-options KEY=VALUE ...]

CONFIG is a dfbf config: a stock mmdet/mmpose/mmpretrain config plus a ``dfbf`` block with
``synthesizer`` and ``synthetic_data`` (image_size, batch_size, seed, cache_dir). Batches are
cached (default cache: DIR/cache), so a rerun or a killed run resumes.
"""
import argparse
import os.path as osp
import sys

import torch
from mmengine.config import Config, DictAction

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from dfbf_mm.stock_model import (TASK_OF_SCOPE, build_stock_model, config_scope,  # noqa: E402
                                 load_weights, normalization)
from dfbf_mm.synthesis import SyntheticImageDataset, save_grid, save_pngs, to_uint8  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='dfbf config (stock config + dfbf block)')
    parser.add_argument('checkpoint', help='teacher checkpoint')
    parser.add_argument('--num-images', type=int, required=True, help='images to write')
    parser.add_argument('--out', required=True, help='output directory')
    parser.add_argument('--seed', type=int, default=None, help='overrides synthetic_data.seed')
    parser.add_argument('--batch-size', type=int, default=None, help='overrides synthetic_data.batch_size')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help='override config keys, e.g. dfbf.synthesizer.iterations=100')
    return parser.parse_args(argv)


def main(argv=None) -> str:
    args = parse_args(argv)
    if not osp.isfile(args.config):
        raise FileNotFoundError(f'config: file not found: {args.config!r}')
    cfg = Config.fromfile(args.config)
    cfg.merge_from_dict(args.cfg_options)
    dfbf = cfg.get('dfbf')
    if dfbf is None or 'synthesizer' not in dfbf or 'synthetic_data' not in dfbf:
        raise ValueError('dfbf: the config needs dfbf = dict(synthesizer=..., synthetic_data=...)')
    data = dfbf.synthetic_data.to_dict()
    data['num_images'] = args.num_images
    if args.seed is not None:
        data['seed'] = args.seed
    if args.batch_size is not None:
        data['batch_size'] = args.batch_size
    data.setdefault('cache_dir', osp.join(args.out, 'cache'))
    if 'image_size' in data:
        data['image_size'] = tuple(data['image_size'])
    task = TASK_OF_SCOPE[config_scope(cfg)]

    model = build_stock_model(cfg)
    load_weights(model, args.checkpoint, field='checkpoint')
    model.to(args.device)
    dataset = SyntheticImageDataset(synthesizer=dfbf.synthesizer.to_dict(), **data)
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
    main()
