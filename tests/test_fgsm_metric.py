"""FGSMRobustness: the attack itself, and the metric inside a stock mmengine ValLoop."""
import numpy as np
import pytest
import torch
import torch.nn as nn
from mmengine.dataset import BaseDataset

from dfbf_mm.evaluation import FGSMRobustness, fgsm_attack, fgsm_counts
from dfbf_mm.registry import DATASETS


@DATASETS.register_module(force=True)
class _TinyGrayImages(BaseDataset):
    """In-memory 32x32 grayscale images with given labels (test only)."""

    def __init__(self, images, labels, **kw):
        self._images, self._labels = images, labels
        super().__init__(**kw)

    def load_data_list(self):
        return [dict(img=img, gt_label=int(lb)) for img, lb in zip(self._images, self._labels)]


def test_attack_moves_by_eps_and_clips():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 3))
    x = torch.full((4, 6), 0.5)
    y = torch.tensor([0, 1, 2, 0])
    adv = fgsm_attack(model, x, y, 0.1, 0.0, 1.0)
    assert torch.allclose((adv - x).abs(), torch.full_like(x, 0.1))
    adv = fgsm_attack(model, x, y, 2.0, 0.0, 1.0)
    assert set(adv.unique().tolist()) <= {0.0, 1.0}
    correct, survived = fgsm_counts(model, x, y, [0.0, 0.1, 2.0])
    assert survived[0.0] == correct and survived[2.0] <= correct


def test_metric_errors():
    with pytest.raises(ValueError, match=r'^epsilons: '):
        FGSMRobustness(epsilons=[-0.1])
    with pytest.raises(RuntimeError, match=r'^model: '):
        FGSMRobustness().process({}, [])


@pytest.mark.slow
def test_metric_in_stock_val_loop(tmp_path):
    from mmengine.runner import Runner
    from mmpretrain.models import ImageClassifier
    from mmengine.registry import init_default_scope
    init_default_scope('mmpretrain')
    torch.manual_seed(0)
    model = ImageClassifier(
        backbone=dict(type='LeNet5'), neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=4, in_channels=120),
        data_preprocessor=dict(type='ClsDataPreprocessor', mean=[127.5], std=[60.0]))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (32, 32, 1), dtype=np.uint8) for _ in range(24)]
    with torch.no_grad():  # labels = the model's own predictions: every sample is correct
        x = (torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() - 127.5) / 60.0
        labels = model(x, mode='tensor').argmax(1).tolist()
    runner = Runner(
        model=model, work_dir=str(tmp_path), default_scope='mmpretrain',
        val_dataloader=dict(dataset=dict(type='_TinyGrayImages', images=images, labels=labels,
                                         pipeline=[dict(type='PackInputs')]),
                            sampler=dict(type='DefaultSampler', shuffle=False), batch_size=8),
        val_evaluator=[dict(type='Accuracy', topk=1),
                       dict(type='FGSMRobustness', epsilons=[0.0, 0.01, 0.5])],
        val_cfg=dict(), custom_hooks=[dict(type='FGSMRobustnessHook')],
        default_hooks=dict(logger=dict(type='LoggerHook', interval=100)),
        log_level='WARNING')
    metrics = runner.val()
    assert metrics['accuracy/top1'] == pytest.approx(100.0)
    assert metrics['fgsm/clean_correct'] == 24
    assert metrics['fgsm/eps_0'] == 1.0
    assert metrics['fgsm/eps_0.01'] <= 1.0
    assert metrics['fgsm/eps_0.5'] < 1.0  # a large attack flips some predictions
