"""SyntheticImageDataset: cache, resume, sharding, corrupt files, MMEngine data loading; the tool."""
import glob
import logging
import os
import os.path as osp

import cv2
import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import DefaultSampler, pseudo_collate
from mmengine.logging import MMLogger
from torch.utils.data import DataLoader

from dfbf_mm.registry import DATASETS
from dfbf_mm.stock_model import build_stock_model, normalization
from dfbf_mm.synthesis import SyntheticImageDataset, from_uint8

torch.set_num_threads(1)  # the test machine is shared; oversubscribed threads are 20x slower

MODEL = dict(type='ImageClassifier',
             backbone=dict(type='ResNet_CIFAR', depth=18, stem_channels=4, base_channels=4),
             neck=dict(type='GlobalAveragePooling'),
             head=dict(type='LinearClsHead', num_classes=5, in_channels=32))
PRE = dict(type='ClsDataPreprocessor', mean=[120., 110., 100.], std=[60., 50., 40.], to_rgb=True)
SYNTH = dict(type='DeepInversionSynthesizer', preset='fast', iterations=2, warmup_iters=1)


@pytest.fixture(scope='module')
def teacher():
    torch.manual_seed(0)
    return build_stock_model(Config(dict(default_scope='mmpretrain', model=MODEL, data_preprocessor=PRE)))


def make(cache_dir, **kw):
    args = dict(type='SyntheticImageDataset', num_images=7, batch_size=2, image_size=(8, 8),
                synthesizer=SYNTH, cache_dir=str(cache_dir), seed=0)
    args.update(kw)
    return DATASETS.build(args)


def test_items_loader_and_reuse(tmp_path, teacher):
    ds = make(tmp_path)
    with pytest.raises(RuntimeError, match='prepare'):
        ds[0]
    assert ds.prepare(teacher, 'classification', progress=False) == dict(generated=4, reused=0)
    assert len(ds) == 7 and ds[6]['inputs'].shape == (3, 8, 8) and ds[6]['inputs'].dtype == torch.float32
    loader = DataLoader(ds, batch_size=3, collate_fn=pseudo_collate,
                        sampler=DefaultSampler(ds, shuffle=True, seed=0))
    batches = list(loader)
    assert sum(len(b['inputs']) for b in batches) == 7
    again = make(tmp_path)
    assert again.prepare(teacher, 'classification', progress=False) == dict(generated=0, reused=4)
    assert torch.equal(again[5]['inputs'], ds[5]['inputs'])
    record = torch.load(again.cache.path(0), weights_only=True)
    assert record['labels'].tolist() == [0, 1]  # balanced labels continue across batches
    other = make(tmp_path, seed=1)
    other.prepare(teacher, 'classification', progress=False)
    assert other.cache.dir != ds.cache.dir and not torch.equal(other[0]['inputs'], ds[0]['inputs'])


def test_sharded_then_resumed(tmp_path, teacher):
    rank0 = make(tmp_path, num_images=8)
    assert rank0.prepare(teacher, 'classification', rank=0, world_size=2, progress=False)['generated'] == 2
    assert sorted(osp.basename(p) for p in glob.glob(osp.join(rank0.cache.dir, '*'))) == \
        ['batch_00000.pt', 'batch_00002.pt']
    with pytest.raises(RuntimeError, match='batch 1 is missing'):
        rank0[2]
    resumed = make(tmp_path, num_images=8)
    assert resumed.prepare(teacher, 'classification', progress=False) == dict(generated=2, reused=2)
    with pytest.raises(ValueError, match='^rank: '):
        resumed.prepare(teacher, 'classification', rank=2, world_size=2)


def test_interrupted_run_loses_only_batch_in_progress(tmp_path, teacher):
    ds = make(tmp_path, num_images=8)
    real = ds.synthesizer.synthesize
    calls = []

    def dies_on_third(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # stands in for kill -9 during the third batch
        return real(*a, **k)

    ds.synthesizer.synthesize = dies_on_third
    with pytest.raises(KeyboardInterrupt):
        ds.prepare(teacher, 'classification', progress=False)
    assert len(glob.glob(osp.join(ds.cache.dir, '*'))) == 2
    assert make(tmp_path, num_images=8).prepare(teacher, 'classification', progress=False)['generated'] == 2


def test_corrupt_and_mismatched_files_regenerated(tmp_path, teacher, caplog):
    ds = make(tmp_path, num_images=6)
    ds.prepare(teacher, 'classification', progress=False)
    good = ds[0]['inputs'].clone()
    with open(ds.cache.path(0), 'wb') as f:
        f.write(b'not a torch file')
    torch.save(dict(key=ds.cache.key, index=1, images=torch.zeros(2, 3, 4, 4)), ds.cache.path(1))
    logger = MMLogger.get_current_instance()
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        again = make(tmp_path, num_images=6)
        assert again.prepare(teacher, 'classification', progress=False) == dict(generated=2, reused=1)
    finally:
        logger.removeHandler(handler)
    warnings = [r.getMessage() for r in records
                if r.levelno == logging.WARNING and r.getMessage().startswith('synthetic_data:')]
    assert len(warnings) == 2 and all('\n' not in w for w in warnings)
    assert 'batch_00000.pt is invalid (unreadable: UnpicklingError)' in warnings[0]
    assert 'expected float32 (2, 3, 8, 8)' in warnings[1]
    assert torch.equal(again[0]['inputs'], good)  # regenerated with the same seed


@pytest.mark.parametrize('synth, key', [
    (SYNTH, 'ce76daaa1ae5f9e8'),
    (dict(type='DeepInversionSynthesizer', preset='detection'), 'a42a6ad983b564be'),
    (dict(type='DeepInversionSynthesizer', preset='fast', first_bn_multiplier=10.0), '701dddc9befd9225'),
    (dict(type='GeneratorSynthesizer', preset='detection'), 'e1772e01fe1734c1'),
    (dict(type='GeneratorSynthesizer', preset='detection', tv_weight=1e-3), '312028acb6b7204f'),
])
def test_cache_keys_of_kept_settings_stay(tmp_path, teacher, synth, key):
    """Caches made before settings were added or retired keep hitting: these keys are pinned."""
    from dfbf_mm.stock_model import pixel_range
    from dfbf_mm.synthesis import inversion_target
    lo, hi = pixel_range(teacher)
    target = inversion_target(teacher, 'classification')
    assert make(tmp_path, synthesizer=synth)._cache_key(teacher, target, 'classification', 5, lo, hi) == key


def test_invert_choice_is_part_of_the_cache_key(tmp_path, teacher):
    """A detector inverted whole ('model') caches apart from one inverted by its backbone."""

    class AsDetector(torch.nn.Module):  # tensor mode of a classifier stands in for a detector
        def __init__(self, model):
            super().__init__()
            self.backbone, self.model = model.backbone, model
            self.data_preprocessor = model.data_preprocessor

        def forward(self, x, data_samples=None, mode='tensor'):
            return self.model(x, data_samples, mode=mode)

    det = AsDetector(teacher)
    auto = make(tmp_path, num_images=2)
    auto.prepare(det, 'detection', progress=False)
    whole = make(tmp_path, num_images=2, invert='model')
    whole.prepare(det, 'detection', progress=False)
    assert whole.cache.dir != auto.cache.dir
    assert not torch.equal(whole[0]['inputs'], auto[0]['inputs'])
    with pytest.raises(ValueError, match="^invert: 'head' is not one of auto, backbone, model$"):
        make(tmp_path, invert='head')


def test_bad_arguments(tmp_path, teacher):
    with pytest.raises(ValueError, match='^batch_size: '):
        make(tmp_path, batch_size=1)
    with pytest.raises(ValueError, match='^num_images: '):
        make(tmp_path, num_images=0)
    with pytest.raises(ValueError, match="^task: 'segmentation' is not one of"):
        make(tmp_path).prepare(teacher, 'segmentation')


def test_fewer_images_than_a_batch_synthesise_only_those(tmp_path, teacher):
    few = make(tmp_path, num_images=3, batch_size=64)
    assert (few.batch_size, few.num_batches) == (3, 1)
    few.prepare(teacher, 'classification', progress=False)
    assert few.cache.load(0, few._shape)['images'].shape[0] == 3 and len(few) == 3
    assert make(tmp_path, num_images=1, batch_size=8).batch_size == 2  # BN statistics need 2
    # num_images >= batch_size: the batches (and so the cache key) are as before
    full = make(tmp_path, num_images=7, batch_size=2)
    assert (full.batch_size, full.num_batches) == (2, 4)


def test_synthesize_tool_writes_pngs_that_read_back(tmp_path, teacher):
    from tools.synthesize import main
    ckpt = tmp_path / 'teacher.pth'
    torch.save(dict(state_dict=teacher.state_dict()), ckpt)
    cfg = tmp_path / 'dfbf_tiny.py'
    cfg.write_text(f'default_scope = "mmpretrain"\nmodel = {MODEL!r}\ndata_preprocessor = {PRE!r}\n'
                   f'dfbf = dict(teacher_checkpoint={str(ckpt)!r}, synthesizer={SYNTH!r},\n'
                   f'            synthetic_data=dict(num_images=100, batch_size=2, image_size=(8, 8), seed=0))\n')
    out = tmp_path / 'out'
    grid = main([str(cfg), str(ckpt), '--num-images', '3', '--out', str(out), '--seed', '4',
                 '--cfg-options', 'dfbf.synthesizer.iterations=1'])
    pngs = sorted(glob.glob(str(out / '0*.png')))
    assert len(pngs) == 3 and osp.isfile(grid) and cv2.imread(grid) is not None
    ds = make(out / 'cache', num_images=3, seed=4, synthesizer=dict(SYNTH, iterations=1))
    ds.prepare(teacher, 'classification', progress=False)
    mean, std, rgb = normalization(teacher)
    bgr = cv2.imread(pngs[2])
    png = torch.from_numpy((bgr[:, :, ::-1] if rgb else bgr).copy()).permute(2, 0, 1)
    back = from_uint8(png[None], mean, std)[0]
    assert (back - ds[2]['inputs']).abs().max() <= (0.5 / std).max() + 1e-5
    with pytest.raises(FileNotFoundError, match='^config: '):
        main([str(tmp_path / 'nope.py'), str(ckpt), '--num-images', '1', '--out', str(out)])
