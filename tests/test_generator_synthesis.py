"""GeneratorSynthesizer: settings, the dataset cache, pass counts, repeatability, resume, ranks."""
import pytest
import torch
from mmengine.config import Config

from dfbf_mm.registry import DATASETS, SYNTHESIZERS
from dfbf_mm.stock_model import build_stock_model, pixel_range
from dfbf_mm.synthesis import GeneratorSynthesizer, inversion_target
from dfbf_mm.synthesis import generator as generator_module
from dfbf_mm.synthesis.inversion_target import check_phase_sizes

torch.set_num_threads(1)

MODEL = dict(type='ImageClassifier',
             backbone=dict(type='ResNet_CIFAR', depth=18, stem_channels=4, base_channels=4),
             neck=dict(type='GlobalAveragePooling'),
             head=dict(type='LinearClsHead', num_classes=5, in_channels=32))
PRE = dict(type='ClsDataPreprocessor', mean=[120., 110., 100.], std=[60., 50., 40.], to_rgb=True)
SYNTH = dict(type='GeneratorSynthesizer', preset='classification', steps=2, first_steps=3,
             channels=4, latent_dim=8)


@pytest.fixture(scope='module')
def teacher():
    torch.manual_seed(0)
    return build_stock_model(Config(dict(default_scope='mmpretrain', model=MODEL, data_preprocessor=PRE)))


def make(cache_dir, **kw):
    synth = dict(SYNTH, **kw.pop('synth', {}))
    args = dict(type='SyntheticImageDataset', num_images=8, batch_size=2, image_size=(8, 8),
                synthesizer=synth, cache_dir=str(cache_dir), seed=0)
    args.update(kw)
    return DATASETS.build(args)


def images(ds):
    return torch.stack([ds[i]['inputs'] for i in range(len(ds))])


def test_settings_errors():
    assert isinstance(SYNTHESIZERS.build(dict(type='GeneratorSynthesizer', preset='pose')), GeneratorSynthesizer)
    for kw, match in ((dict(preset='nope'), "preset: 'nope' is not a generator preset"),
                      (dict(stepz=3), 'stepz: not a GeneratorSynthesizer setting'),
                      (dict(steps=0), 'steps: must be an integer >= 1'),
                      (dict(meta='maml'), "meta: 'maml' is not"),
                      (dict(bn_momentum=1.0), r'bn_momentum: must be in \[0, 1\)'),
                      (dict(keep='first'), "keep: 'first'"),
                      (dict(lr=0), 'lr: must be positive'),
                      (dict(max_passes_per_image=5), r'max_passes_per_image: 5 is below steps \+ refine_steps = 10'),
                      (dict(refine_steps=-1), 'refine_steps: must be an integer >= 0'),
                      (dict(refine_lr=0), 'refine_lr: must be positive')):
        with pytest.raises(ValueError, match=match):
            GeneratorSynthesizer(**kw)
    assert GeneratorSynthesizer(meta_lr=None).settings['meta_lr'] is None


def test_cache_stats_repeatable_and_reused(tmp_path, teacher):
    ds = make(tmp_path / 'a')
    assert ds.prepare(teacher, 'classification', progress=False) == dict(generated=4, reused=0)
    # the stream's first batch takes first_steps, the others steps: (3 + 2 + 2 + 2) / 4
    assert ds.stats['teacher_passes_per_image'] == pytest.approx(9 / 4)
    assert ds.stats['student_passes_per_image'] == 0 and ds.stats['batches'] == 4
    x = images(ds)
    lo, hi = pixel_range(teacher)
    assert x.shape == (8, 3, 8, 8) and (x >= lo - 1e-5).all() and (x <= hi + 1e-5).all()
    assert not torch.equal(x[:2], x[2:4])  # batches differ
    record = torch.load(ds.cache.path(1), weights_only=True)
    assert record['labels'].tolist() == [2, 3] and record['stats']['teacher_passes'] == 2
    again = make(tmp_path / 'b')  # same seed and settings elsewhere: the same images on CPU
    again.prepare(teacher, 'classification', progress=False)
    assert torch.equal(images(again), x)
    reused = make(tmp_path / 'a')
    assert reused.prepare(teacher, 'classification', progress=False) == dict(generated=0, reused=4)
    assert torch.equal(images(reused), x)
    for kw in (dict(seed=1), dict(synth=dict(steps=3))):  # seed and settings are in the key
        other = make(tmp_path / 'a', **kw)
        other.prepare(teacher, 'classification', progress=False)
        assert other.cache.dir != ds.cache.dir and not torch.equal(images(other), x)


def test_resume_after_kill_continues_the_stream(tmp_path, teacher, monkeypatch):
    full = make(tmp_path / 'full')
    full.prepare(teacher, 'classification', progress=False)
    calls = []
    batch = generator_module._Stream.batch

    def dying(self, *a, **kw):
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed while making the third batch
        calls.append(1)
        return batch(self, *a, **kw)

    monkeypatch.setattr(generator_module._Stream, 'batch', dying)
    killed = make(tmp_path / 'killed')
    with pytest.raises(KeyboardInterrupt):
        killed.prepare(teacher, 'classification', progress=False)
    monkeypatch.setattr(generator_module._Stream, 'batch', batch)
    calls.clear()

    def counting(self, *a, **kw):
        calls.append(1)
        return batch(self, *a, **kw)

    monkeypatch.setattr(generator_module._Stream, 'batch', counting)
    resumed = make(tmp_path / 'killed')
    assert resumed.prepare(teacher, 'classification', progress=False) == dict(generated=2, reused=2)
    assert len(calls) == 2  # continued from the saved state, nothing recomputed
    assert torch.equal(images(resumed), images(full))
    # a lost early batch: the state is past it, so the stream restarts and remakes it exactly
    import os
    os.remove(resumed.cache.path(0))
    calls.clear()
    again = make(tmp_path / 'killed')
    assert again.prepare(teacher, 'classification', progress=False) == dict(generated=1, reused=3)
    assert len(calls) == 1 and torch.equal(images(again), images(full))
    # a corrupt state file: named in one warning line and deleted (as a corrupt cached batch),
    # the stream restarts from its first batch and makes the same images
    import glob
    import logging
    from mmengine.logging import MMLogger
    state, = glob.glob(str(tmp_path / 'killed' / '*' / 'generator_stream_0000.pt'))
    with open(state, 'wb') as f:
        f.write(b'not a torch file')
    os.remove(again.cache.path(3))
    calls.clear()
    records, handler = [], logging.Handler()
    handler.emit = records.append
    MMLogger.get_current_instance().addHandler(handler)
    try:
        corrupt = make(tmp_path / 'killed')
        assert corrupt.prepare(teacher, 'classification', progress=False) == dict(generated=1, reused=3)
    finally:
        MMLogger.get_current_instance().removeHandler(handler)
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert warnings == [f'synthetic_data: generator state {state} is invalid (unreadable: UnpicklingError); '
                        'the stream starts afresh']
    assert len(calls) == 4 and torch.equal(images(corrupt), images(full))
    assert torch.load(state, weights_only=True)['done'] == 4  # rewritten after each batch


def test_ranks_share_whole_streams(tmp_path, teacher):
    single = make(tmp_path / 'one', synth=dict(stream_batches=2))
    single.prepare(teacher, 'classification', progress=False)
    r0 = make(tmp_path / 'two', synth=dict(stream_batches=2))
    r1 = make(tmp_path / 'two', synth=dict(stream_batches=2))
    assert r0.prepare(teacher, 'classification', rank=0, world_size=2, progress=False)['generated'] == 2
    assert r1.prepare(teacher, 'classification', rank=1, world_size=2, progress=False)['generated'] == 2
    both = make(tmp_path / 'two', synth=dict(stream_batches=2))
    assert both.prepare(teacher, 'classification', progress=False) == dict(generated=0, reused=4)
    assert torch.equal(images(both), images(single))
    # the second stream starts afresh: its first batch takes first_steps
    assert both.stats['teacher_passes_per_image'] == pytest.approx((3 + 2) * 2 / 4)


def test_default_streams_split_over_ranks(tmp_path, teacher):
    """stream_batches=0: one stream per rank, so every DDP rank synthesises its share; the
    images are those of stream_batches=ceil(num_batches / world_size) on one process."""
    r0, r1 = make(tmp_path / 'ddp'), make(tmp_path / 'ddp')
    assert r0.prepare(teacher, 'classification', rank=0, world_size=2, progress=False)['generated'] == 2
    assert r1.prepare(teacher, 'classification', rank=1, world_size=2, progress=False)['generated'] == 2
    both = make(tmp_path / 'ddp')
    assert both.prepare(teacher, 'classification', progress=False) == dict(generated=0, reused=4)
    same_layout = make(tmp_path / 'one', synth=dict(stream_batches=2))
    same_layout.prepare(teacher, 'classification', progress=False)
    assert torch.equal(images(both), images(same_layout))
    single = make(tmp_path / 'single')  # one process: one stream of all 4, as before
    single.prepare(teacher, 'classification', progress=False)
    assert single.stats['teacher_passes_per_image'] == pytest.approx((3 + 2 + 2 + 2) / 4)
    assert torch.equal(images(single)[:4], images(both)[:4])  # stream 0's first 2 batches
    assert not torch.equal(images(single)[4:], images(both)[4:])
    # 4 ranks made the cache (4 streams of 1 batch), 2 ranks resume it: stream 1's saved state
    # (of batch 1) is not continued into stream 1 of 2 ranks (batches 2, 3), which restarts
    import os
    for rank in range(4):
        make(tmp_path / 'four').prepare(teacher, 'classification', rank=rank, world_size=4, progress=False)
    four = make(tmp_path / 'four')
    assert four.prepare(teacher, 'classification', progress=False)['reused'] == 4
    os.remove(four.cache.path(3))
    again = make(tmp_path / 'four')
    assert again.prepare(teacher, 'classification', rank=1, world_size=2, progress=False) == dict(generated=1, reused=1)
    assert torch.equal(images(again)[6:], images(both)[6:])


def test_errors_and_sizes(tmp_path, teacher):
    synth = GeneratorSynthesizer(**{k: v for k, v in SYNTH.items() if k != 'type'})
    assert synth.network_inputs() == [('generator (steps)', 1)]
    target = inversion_target(teacher, 'classification')
    check_phase_sizes(target, (8, 8), synth.network_inputs(), 3, 'cpu')
    x, stats = synth.synthesize(target, 2, (8, 8), pixel_range(teacher), seed=3,
                                labels=torch.tensor([0, 4]), progress=False)
    assert x.shape == (2, 3, 8, 8) and stats['teacher_passes'] == 3 and 'ce' in stats
    # a one-batch stream cannot amortise a warm-up: capped at max_passes_per_image
    capped = GeneratorSynthesizer(channels=4, latent_dim=8, steps=2, first_steps=30, max_passes_per_image=5)
    assert capped.synthesize(target, 2, (8, 8), pixel_range(teacher), seed=3,
                             progress=False)[1]['teacher_passes'] == 5


def test_tv_norm_is_honoured_as_in_deepinversion(teacher):
    """The generator's loss terms are DeepInversion's (one code path): ``tv_norm`` 'l1' is a
    setting that changes the images; 'l2', the generator's only norm before, stays out of the
    cache key."""
    from dfbf_mm.synthesis.priors import total_variation
    kw = dict(channels=4, latent_dim=8, steps=2, first_steps=2, tv_weight=1.0)
    target = inversion_target(teacher, 'classification')
    runs = {}
    for norm in ('l2', 'l1'):
        x, stats = GeneratorSynthesizer(tv_norm=norm, **kw).synthesize(
            target, 2, (8, 8), pixel_range(teacher), seed=3, labels=torch.tensor([0, 4]), progress=False)
        runs[norm] = x
        assert {'bn', 'tv', 'l2', 'ce'} <= set(stats)
    assert not torch.equal(runs['l1'], runs['l2'])
    assert 'tv_norm' not in GeneratorSynthesizer(**kw).config()
    assert GeneratorSynthesizer(tv_norm='l1', **kw).config()['tv_norm'] == 'l1'
    with pytest.raises(ValueError, match="^tv_norm: 'l3' is not one of l2, l1$"):
        GeneratorSynthesizer(tv_norm='l3')


def test_refine_steps_are_counted_and_lower_the_bn_loss(tmp_path, teacher):
    """Per-pixel DeepInversion steps after the generator's: counted, capped, and they move the
    images toward the BN statistics (the plain BN loss of the kept images, per batch)."""
    plain, refined = make(tmp_path / 'p'), make(tmp_path / 'r', synth=dict(refine_steps=4))
    for ds in (plain, refined):
        ds.prepare(teacher, 'classification', progress=False)
    assert refined.cache.key != plain.cache.key
    # (3 + 2 + 2 + 2) / 4 generator steps + 4 refinement steps per batch
    assert refined.stats['teacher_passes_per_image'] == pytest.approx(9 / 4 + 4)
    bn = [[ds.cache.load(b, ds._shape)['stats']['bn_eval'] for b in range(4)] for ds in (plain, refined)]
    assert all(r < p for p, r in zip(*bn)), bn
    # the cap counts the refinement: the first batch shrinks to (6 - 4) * 4 - 2 * 3 = 2 steps
    capped = make(tmp_path / 'c', synth=dict(refine_steps=4, first_steps=30, max_passes_per_image=6))
    capped.prepare(teacher, 'classification', progress=False)
    assert capped.stats['teacher_passes_per_image'] == pytest.approx((2 + 2 * 3) / 4 + 4)


def test_refinement_settings_stay_out_of_the_cache_key_when_off():
    """Caches made before refine_steps existed still hit: its settings are in the key only when on."""
    assert not {'refine_steps', 'refine_lr'} & set(GeneratorSynthesizer(preset='pose').config())
    on = GeneratorSynthesizer(preset='detection').config()
    assert on['refine_steps'] == 12 and on['steps'] == 5
    off = GeneratorSynthesizer(preset='detection', refine_steps=0, steps=10).config()
    assert 'refine_lr' not in off and off == GeneratorSynthesizer(preset='pose').config()
