"""Online synthesis (dfbf.online): the adversarial term, the growing pool, resume, rank shares."""
import os.path as osp
import re
import shutil

import pytest
import torch
from mmengine.config import Config

import dfbf_mm  # noqa: F401
from dfbf_mm.pruning import L1FilterPruner
from dfbf_mm.registry import DATASETS
from dfbf_mm.schema import read_dfbf
from dfbf_mm.stock_model import build_stock_model, pixel_range
from dfbf_mm.synthesis import DeepInversionSynthesizer, FeatureAdversary, OnlinePool, inversion_target

from test_generator_synthesis import MODEL, PRE, SYNTH
from test_walking_skeleton import STOCK_CFG
from tiny_data import imagenet_style_folder

torch.set_num_threads(1)

TAPS = ['layer1.0.bn2', 'layer2.0.bn2']


@pytest.fixture(scope='module')
def pair():
    """A tiny classifier teacher and a 0.5-pruned copy of its backbone."""
    import copy
    torch.manual_seed(0)
    teacher = build_stock_model(Config(dict(default_scope='mmpretrain', model=MODEL, data_preprocessor=PRE)))
    student = copy.deepcopy(teacher)
    L1FilterPruner(sparsity=0.5).prune(student.backbone, torch.zeros(1, 3, 8, 8))
    return teacher.eval(), student


def _train(cfg_file, work_dir, resume=False):
    from dfbf_mm.engine import DataFreeDistillRunner
    cfg = Config.fromfile(cfg_file)
    cfg.work_dir = work_dir
    cfg.resume = resume
    runner = DataFreeDistillRunner.from_cfg(cfg)
    runner.train()
    return runner


def l1(s_taps, t_taps, s_outs, t_outs):
    return sum((s - t).abs().mean() for s, t in zip(s_taps, t_taps))


def test_adversary_term_is_the_feature_distance_and_leaves_the_student_alone(pair):
    teacher, student = pair
    student.train()
    adversary = FeatureAdversary(teacher.backbone, student.backbone, TAPS, l1, weight=2.0)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    with pytest.raises(RuntimeError, match='inside `with adversary:`'):
        adversary.term(x)
    with adversary:
        with pytest.raises(RuntimeError, match='did not run the teacher backbone'):
            adversary.term(x)
        teacher(x, mode='tensor')  # the synthesizer's own teacher forward
        term = adversary.term(x)
        assert not student.backbone.training and not any(p.requires_grad for p in student.backbone.parameters())
    assert student.backbone.training and all(p.requires_grad for p in student.backbone.parameters())  # restored
    t_feats, s_feats = {}, {}
    hooks = [dict(teacher.backbone.named_modules())[n].register_forward_hook(
        lambda m, i, o, n=n: t_feats.__setitem__(n, o)) for n in TAPS]
    hooks += [dict(student.backbone.named_modules())[n].register_forward_hook(
        lambda m, i, o, n=n: s_feats.__setitem__(n, o)) for n in TAPS]
    with torch.no_grad():
        teacher.backbone(x)
        student.eval().backbone(x)
    for h in hooks:
        h.remove()
    assert term.item() == pytest.approx(l1([s_feats[n] for n in TAPS], [t_feats[n] for n in TAPS], (), ()).item(), rel=1e-5)
    term.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # it can move the images
    assert all(p.grad is None for p in student.backbone.parameters())
    with pytest.raises(ValueError, match='adv_weight: must be a positive number'):
        FeatureAdversary(teacher.backbone, student.backbone, TAPS, l1, weight=0)


def test_adversarial_term_raises_the_distance_and_counts_student_passes(pair):
    teacher, student = pair
    lo_hi = pixel_range(teacher)
    target = inversion_target(teacher, 'classification')
    di = DeepInversionSynthesizer(preset='fast', iterations=15, half_res_iterations=0, coarse_iterations=0)
    plain, stats = di.synthesize(target, 4, (8, 8), lo_hi, seed=0, progress=False)
    assert stats['student_passes'] == 0
    adversary = FeatureAdversary(teacher.backbone, student.backbone, TAPS, l1, weight=50.0)
    with adversary:
        hard, stats = di.synthesize(target, 4, (8, 8), lo_hi, seed=0, progress=False, adversary=adversary)
    assert stats['student_passes'] == stats['teacher_passes'] == 15
    with adversary, torch.no_grad():
        distances = []
        for images in (plain, hard):
            teacher.backbone(images)
            distances.append(adversary.term(images).item())
    assert distances[1] > distances[0]


def _dataset(cache_dir, **kw):
    return DATASETS.build(dict(type='SyntheticImageDataset', num_images=4, batch_size=2, image_size=(8, 8),
                               synthesizer=dict(SYNTH, **kw), cache_dir=str(cache_dir), seed=0))


def test_pool_schedule_resample_and_rank_shares(tmp_path, pair):
    teacher, student = pair
    target = inversion_target(teacher, 'classification')

    def pool(cache, rank=0, world_size=1, resumed=False, epoch=0):
        ds = _dataset(cache)
        ds.prepare(teacher, 'classification', progress=False)
        p = OnlinePool(ds, interval=2, batches=2, begin=1, epochs=6)
        p.open(str(tmp_path / 'pool'), 'k', epoch, resumed, torch.device('cpu'), rank, world_size)
        return ds, p

    ds, p = pool(tmp_path / 'c')
    assert [p.round_at(e) for e in range(6)] == [None, 0, None, 1, None, 2]
    assert [p.rounds_before(e) for e in range(7)] == [0, 0, 1, 1, 2, 2, 3]
    assert p.stream.done == 2  # continues the offline meta generator (2 batches): no warm-up again
    # two ranks make their own shares; every rank then reads both
    _, p1 = pool(tmp_path / 'c', rank=1, world_size=2)
    _, p0 = pool(tmp_path / 'c', rank=0, world_size=2)
    assert p0.make_round(0, target, pixel_range(teacher)) == dict(generated=1, reused=0)
    assert p1.make_round(0, target, pixel_range(teacher)) == dict(generated=1, reused=0)
    added = p0.load_round(0)
    assert len(added) == 2 and not torch.equal(added[0], added[1])
    assert ds.pool_size == 4  # p0's dataset, not ds: ds has no rounds
    d0 = p0.dataset
    assert d0.pool_size == 8
    d0.resample(1, newest=4)
    assert d0.index_map.tolist() == [4, 5, 6, 7]  # all four new images this epoch
    d0.resample(2, newest=0)
    drawn = d0.index_map.tolist()
    assert len(set(drawn)) == 4 and all(0 <= i < 8 for i in drawn)
    d0.resample(2, newest=0)
    assert d0.index_map.tolist() == drawn  # seeded by the epoch: a resumed run draws the same
    assert torch.equal(d0[drawn.index(5)]['inputs'], added[0][1])
    stats = p0.stats()
    assert stats['images'] == 8 and stats['teacher_passes_per_image'] == pytest.approx((3 + 2 + 2 + 2) / 4)
    # a resumed run whose earlier round lost a batch file goes on with what is left
    import os
    os.remove(p0.cache.path(p0.index(0, 1)))
    d3, p3 = pool(tmp_path / 'c', resumed=True, epoch=2)
    assert len(d3.pool) == 1 and torch.equal(d3.pool[0], added[0])
    with pytest.raises(RuntimeError, match='batch 1 of round 1 is missing'):
        p0.make_round(1, target, pixel_range(teacher))
        p0.load_round(1)


def test_pool_needs_the_generator_stream(tmp_path, pair):
    """Online batches continue the offline generator stream; a DeepInversion dataset is refused
    in one line naming the field."""
    teacher, _ = pair
    ds = DATASETS.build(dict(type='SyntheticImageDataset', num_images=4, batch_size=2, image_size=(8, 8),
                             synthesizer=dict(type='DeepInversionSynthesizer', preset='fast', iterations=1),
                             cache_dir=str(tmp_path / 'c'), seed=0))
    with pytest.raises(ValueError, match="^dfbf.synthesizer: dfbf.online needs type 'GeneratorSynthesizer' "
                                         r'\(its stream makes the online batches\), got DeepInversionSynthesizer$'):
        OnlinePool(ds, interval=1, batches=1, begin=0, epochs=2)


def test_online_rejects_settings_that_cannot_work():
    base = dict(teacher_checkpoint='t.pth', pruner=dict(type='L1FilterPruner', sparsity=0.5),
                synthesizer=dict(type='GeneratorSynthesizer'))
    assert read_dfbf(dict(base, online=True))['online'] == dict(interval=2, batches=1, begin=2,
                                                                 adv_weight=1.0, grid_images=64)
    assert read_dfbf(dict(base, online=False))['online'] is None
    for online, extra, match in (
            (True, dict(train_data='noise'), "dfbf.online: grows the synthetic pool; dfbf.train_data is 'noise'"),
            (True, dict(synthesizer=dict(type='DeepInversionSynthesizer')),
             "dfbf.online: needs dfbf.synthesizer of type 'GeneratorSynthesizer' (its stream makes the "
             "online batches), got 'DeepInversionSynthesizer'"),
            (dict(warm_steps=3), {}, 'dfbf.online: unknown key'),
            (dict(interval=0), {}, 'dfbf.online.interval: must be an integer >= 1'),
            (dict(adv_weight=-1), {}, 'dfbf.online.adv_weight: must be'),
            (dict(every=2), {}, 'dfbf.online: unknown key')):
        with pytest.raises(ValueError, match=re.escape(match)):
            read_dfbf(dict(base, online=online, **extra))


BLOCK = """
runner_type = 'DataFreeDistillRunner'
default_hooks = dict(logger=dict(type='LoggerHook', interval=1),
                     checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=5))
dfbf = dict(teacher_checkpoint='{teacher}',
    pruner=dict(type='L1FilterPruner', sparsity=0.5),
    synthesizer=dict(type='GeneratorSynthesizer', preset='classification', steps=2, first_steps=3),
    synthetic_data=dict(num_images=8, batch_size=4, image_size=(32, 32), seed=0),
    schedule=dict(epochs=3, lr=0.01, lr_steps=[2]),
    export=dict(profile=False), online=dict(interval=1, batches=2, begin=1, adv_weight=1.0))
"""


@pytest.mark.slow
def test_online_run_grows_the_pool_checkpoints_its_key_and_resumes(tmp_path):
    data = imagenet_style_folder(str(tmp_path / 'val'))
    stock = tmp_path / 'stock.py'
    stock.write_text(STOCK_CFG.format(data=data))
    torch.save({'state_dict': build_stock_model(Config.fromfile(str(stock))).state_dict()}, tmp_path / 'teacher.pth')
    cfg_file = tmp_path / 'dfbf.py'
    cfg_file.write_text(STOCK_CFG.format(data=data) + BLOCK.format(teacher=tmp_path / 'teacher.pth'))
    work = str(tmp_path / 'work')
    runner = _train(str(cfg_file), work)
    ds = runner.train_dataloader.dataset
    assert len(ds) == 8 and ds.pool_size == 8 + 2 * 2 * 4  # rounds at epochs 1 and 2
    assert ds.index_map.tolist() == list(range(16, 24))  # the last epoch: its round's images
    hook = next(h for h in runner.hooks if type(h).__name__ == 'OnlineSynthesisHook')
    stats = hook.pool.stats()
    assert stats['student_passes_per_image'] > 0 and stats['teacher_passes_per_image'] <= 20
    assert osp.isfile(osp.join(work, 'online_images.png'))
    key = torch.load(osp.join(work, 'epoch_1.pth'), map_location='cpu', weights_only=False)['meta']['dfbf_online_pool']
    assert key == hook.key and osp.isdir(osp.join(work, 'online_pool', key))
    pool = [t.clone() for t in ds.pool]

    # --resume after epoch 2: round 0 is read back, round 1 (made at epoch 2) is reused
    # from the cache, as the stream state says, not made again
    shutil.rmtree(osp.join(work, 'export'))
    with open(osp.join(work, 'last_checkpoint'), 'w') as f:
        f.write(osp.join(work, 'epoch_2.pth'))
    resumed = _train(str(cfg_file), work, resume=True)
    rds = resumed.train_dataloader.dataset
    assert len(rds.pool) == len(pool) and all(torch.equal(a, b) for a, b in zip(rds.pool, pool))
    log = open(osp.join(resumed.log_dir, osp.basename(resumed.log_dir) + '.log')).read()
    assert '2 batches of earlier rounds' in log  # round 0, read back
    assert 'restarts from the offline generator' not in log
    assert osp.isfile(osp.join(work, 'export', 'pruned.pth'))


@pytest.mark.parametrize('name, extra', [
    ('dfbf_yolox_coco.py', []),
    # a two-stage detector inverted whole (backbone + neck + RPN); its random boxes scored
    ('dfbf_faster_rcnn_r50_coco.py', ['dfbf.synthetic_data.invert=model', 'model.test_cfg.rcnn.score_thr=0.0'])])
@pytest.mark.slow
def test_online_at_the_real_architecture(name, extra, tmp_path):
    """A shipped detection config with online rounds, switched to the generator as a user would
    (--cfg-options on the stock train tool): random teacher, 64 px, two epochs, one round."""
    from test_shipped_configs import REPO, run, tiny_budget
    from tiny_val_sets import all_val_sets
    path = osp.join(REPO, 'configs', name)
    cfg = Config.fromfile(path)
    cfg.dfbf.synthesizer = dict(type='GeneratorSynthesizer', preset='detection')
    switch = ['dfbf.synthesizer.type=GeneratorSynthesizer', 'dfbf.synthesizer.preset=detection']
    teacher = str(tmp_path / 'teacher.pth')
    torch.save({'state_dict': build_stock_model(cfg).state_dict()}, teacher)
    options = tiny_budget(cfg, teacher) + extra + switch + [
        'dfbf.synthetic_data.image_size=[64,64]', 'dfbf.schedule.epochs=2', 'dfbf.schedule.lr_steps=[2]',
        'dfbf.schedule.val_interval=2', 'dfbf.online.interval=1', 'dfbf.online.batches=1', 'dfbf.online.begin=1']
    work = tmp_path / 'work'
    out = run([osp.join(REPO, 'tools', 'train.py'), path, '--work-dir', str(work), '--cfg-options', *options],
              all_val_sets(str(tmp_path / 'val')), tmp_path / 'train.log')
    # offline: 1 + 1 refinement step; the round: 1 + 1 with a student pass each
    assert 'online synthesis: round 0 (epoch 1): +1 batches, pool 4 images; 2.0 teacher and 1.0 student' in out
    assert osp.isfile(work / 'online_images.png') and osp.isfile(work / 'export' / 'pruned.pth')
