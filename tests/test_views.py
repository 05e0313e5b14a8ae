"""dfbf.views: random augmented views of a training batch, the same view to teacher and student."""
import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MessageHub

import dfbf_mm  # noqa: F401
import dfbf_mm.distillation.distiller as distiller_module
from dfbf_mm.distillation.views import BatchViews
from dfbf_mm.registry import MODELS
from dfbf_mm.schema import DFBF, VIEWS
from dfbf_mm.stock_model import build_stock_model, stock_model_cfg

RANGE = (torch.tensor([-2.0, -1.5, -1.0]).view(3, 1, 1), torch.tensor([2.0, 2.5, 3.0]).view(3, 1, 1))


def batch(n=6, h=16, w=20):
    lo, hi = RANGE
    return lo + (hi - lo) * torch.rand(n, 3, h, w)


@pytest.mark.parametrize('mix', [None, 'mixup', 'cutmix'])
def test_views_are_seeded_shaped_and_in_range(mix):
    x = batch()
    views = BatchViews(RANGE, mix=mix, mix_prob=1.0, seed=3)
    a, b = views(x, step=5), views(x, step=5)
    assert a.shape == x.shape and torch.equal(a, b)  # the same (seed, step): the same view
    assert not torch.allclose(a, views(x, step=6))  # another step, another view
    assert not torch.allclose(a, BatchViews(RANGE, mix=mix, mix_prob=1.0, seed=4)(x, step=5))
    assert not torch.allclose(a, x)
    lo, hi = RANGE
    assert (a >= lo - 1e-5).all() and (a <= hi + 1e-5).all()


def test_views_off_leave_the_batch_unchanged():
    x = batch()
    assert torch.equal(BatchViews(RANGE, flip=0, crop=1, jitter=0, mix=None)(x, step=0), x)


def test_flip_alone_mirrors_and_cutmix_pastes_from_the_batch():
    x = batch(n=4)
    flipped = BatchViews(RANGE, flip=1, crop=1, jitter=0)(x, step=0)
    assert torch.allclose(flipped, x.flip(-1), atol=1e-5)
    mixed = BatchViews(RANGE, flip=0, crop=1, jitter=0, mix='cutmix', mix_prob=1.0)(x, step=1)
    for i in range(len(x)):  # every pixel is the image's own or another batch image's
        own = (mixed[i] == x[i]).all(0)
        from_other = torch.stack([(mixed[i] == x[j]).all(0) for j in range(len(x)) if j != i]).any(0)
        assert (own | from_other).all()


def test_schema_reads_views():
    assert DFBF.read_option('views', None) is None
    assert DFBF.read_option('views', False) is None
    assert DFBF.read_option('views', True) == VIEWS.defaults()
    assert DFBF.read_option('views', dict(mix='cutmix'))['mix'] == 'cutmix'
    with pytest.raises(ValueError, match=r"dfbf\.views\.mix: 'blend' is not one of None, mixup, cutmix"):
        DFBF.read_option('views', dict(mix='blend'))
    with pytest.raises(ValueError, match=r'dfbf\.views\.crop: must be a number in \(0, 1\]'):
        DFBF.read_option('views', dict(crop=0))


STOCK = """
default_scope = 'mmpretrain'
model = dict(type='ImageClassifier',
             data_preprocessor=dict(mean=[120.0, 110.0, 100.0], std=[60.0, 50.0, 40.0]),
             backbone=dict(type='ResNet_CIFAR', depth=18, stem_channels=8, base_channels=8),
             neck=dict(type='GlobalAveragePooling'),
             head=dict(type='LinearClsHead', num_classes=3, in_channels=64))
"""


@pytest.mark.slow
def test_distiller_gives_teacher_and_student_the_same_view(tmp_path, monkeypatch):
    cfg = Config.fromstring(STOCK, '.py')
    torch.save({'state_dict': build_stock_model(cfg).state_dict()}, tmp_path / 't.pth')
    args = dict(type='DataFreeDistiller', model=stock_model_cfg(cfg),
                teacher_checkpoint=str(tmp_path / 't.pth'),
                pruner=dict(type='L1FilterPruner', sparsity=0.5), input_size=(32, 32))
    seen = []
    real = distiller_module.backbone_features
    monkeypatch.setattr(distiller_module, 'backbone_features',
                        lambda net, images, taps: seen.append(images) or real(net, images, taps))
    x = torch.randn(4, 3, 32, 32)
    plain = MODELS.build(args).train()
    plain(x, mode='loss')
    assert torch.equal(seen[0], x) and torch.equal(seen[1], x)  # off: the batch as given
    seen.clear()
    viewed = MODELS.build(dict(args, views=dict(mix='cutmix'))).train()
    MessageHub.get_current_instance().update_info('iter', 7)
    try:
        viewed(x, mode='loss')
        viewed(x, mode='loss')  # the same iteration: the same view
    finally:
        MessageHub.get_current_instance().update_info('iter', None)
    teacher_in, student_in = seen[0], seen[1]
    assert teacher_in is student_in and not torch.allclose(teacher_in, x)
    assert torch.equal(seen[2], teacher_in)


def test_seeds_report_lists_every_seed_and_the_mean(tmp_path):
    import json
    from tools.benchmarks.run import seeds_report
    base = dict(task='det', rule='macs', sparsity=0.7, budget='full', macs=30.0, macs_teacher=100.0,
                finetune_s=10.0)
    for seed, metrics in enumerate([(40.0, 30.0, 45.0), (42.0, 31.0, 47.0)]):
        d = tmp_path / f's{seed}'
        d.mkdir()
        rows = {f'full|det|macs|s0.7|{m}': dict(base, method=m, metric=v, seed=seed)
                for m, v in zip(('dfbf+mix', 'dfbf', 'real'), metrics)}
        rows['full|det|teacher'] = dict(metric=50.0)
        (d / 'results.json').write_text(json.dumps(rows))
    table = seeds_report([str(tmp_path / 's0'), str(tmp_path / 's1')])
    row = next(line for line in table.splitlines() if '| dfbf+mix |' in line)
    assert '| 40.00 (0), 42.00 (1) | 41.00 | 82.0 | -5.00 |' in row  # real mean 46.0
    assert '| 70.0 % |' in row


def test_benchmark_seed_and_epochs_reach_the_run_config(tmp_path):
    import argparse
    from tools.benchmarks.run import task_config
    args = argparse.Namespace(data=str(tmp_path / 'digits'), quick=False, out=str(tmp_path),
                              seed=2, epochs=320)
    cfg = task_config('det', args, 'macs', 0.7, 'dfbf+mix', str(tmp_path / 'run'))
    assert cfg.dfbf['schedule']['epochs'] == 320 and cfg.dfbf['schedule']['lr_steps'] == [256]
    assert cfg.randomness['seed'] == 2 and cfg.dfbf['views']['seed'] == 2
    assert cfg.dfbf['views']['mix'] == 'cutmix'
    plain = task_config('det', argparse.Namespace(data=args.data, quick=False, out=str(tmp_path)),
                        'macs', 0.7, 'dfbf', str(tmp_path / 'run'))
    assert plain.dfbf['schedule']['epochs'] == 160 and plain.randomness['seed'] == 0
    assert not plain.dfbf.get('views')
