"""A real, thin path through every stage on a tiny stock mmpretrain classifier (CPU).

prune → synthesize → distill (MMEngine iterations through DataFreeDistillRunner) → export →
evaluate with the stock Accuracy metric, and the stock mmpretrain tools/test.py agrees.
"""
import os.path as osp
import re
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config

import dfbf_mm  # noqa: F401
from dfbf_mm.engine import DataFreeDistillRunner
from dfbf_mm.stock_model import build_stock_model

from tiny_data import imagenet_style_folder

pytestmark = pytest.mark.slow  # every test reads one end-to-end run (skeleton_run)

STOCK_CFG = """
default_scope = 'mmpretrain'
custom_imports = dict(imports=['dfbf_mm'], allow_failed_imports=False)
model = dict(
    type='ImageClassifier',
    backbone=dict(type='ResNet_CIFAR', depth=18, stem_channels=16, base_channels=16),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes=3, in_channels=128,
              loss=dict(type='CrossEntropyLoss', loss_weight=1.0)))
data_preprocessor = dict(num_classes=3, mean=[125.3, 123.0, 113.9], std=[63.0, 62.1, 66.7],
                         to_rgb=False)
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
val_dataloader = dict(batch_size=4, num_workers=0,
                      dataset=dict(type='CustomDataset', data_root='{data}', pipeline=test_pipeline),
                      sampler=dict(type='DefaultSampler', shuffle=False))
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_dataloader = val_dataloader
test_evaluator = val_evaluator
val_cfg = dict()
test_cfg = dict()
default_hooks = dict(logger=dict(type='LoggerHook', interval=1),
                     checkpoint=dict(type='CheckpointHook', interval=1))
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)
"""

DFBF_BLOCK = """
runner_type = 'DataFreeDistillRunner'
dfbf = dict(
    teacher_checkpoint='{teacher}',
    pruner=dict(type='L1FilterPruner', sparsity=0.5, layer_dependent=False),
    synthesizer=dict(type='DeepInversionSynthesizer', preset='classification', iterations=30,
                     warmup_iters=2),
    synthetic_data=dict(num_images=16, batch_size=8, image_size=(32, 32), seed=0),
    distill=dict(weights=0),
    schedule=dict(epochs=3, lr=0.05, lr_steps=[2]))
"""


def calibrate_bn(model, data_root):
    """Give a random-init teacher the BN running statistics of real images (as training would):
    random-init statistics (mean 0, var 1) are not reachable by any image."""
    from mmengine.dataset import pseudo_collate
    from mmpretrain.datasets import CustomDataset
    dataset = CustomDataset(data_root=data_root, pipeline=[dict(type='LoadImageFromFile'),
                                                           dict(type='PackInputs')])
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        batch = model.data_preprocessor(pseudo_collate([dataset[i] for i in range(len(dataset))]))
        model(batch['inputs'], mode='tensor')
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.1
    model.eval()


@pytest.fixture(scope='module')
def skeleton_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('skeleton')
    data = imagenet_style_folder(str(tmp / 'val'))
    stock_file = tmp / 'stock.py'
    stock_file.write_text(STOCK_CFG.format(data=data))
    teacher = build_stock_model(Config.fromfile(str(stock_file)))
    calibrate_bn(teacher, data)
    torch.save({'state_dict': teacher.state_dict()}, tmp / 'teacher.pth')
    dfbf_file = tmp / 'dfbf.py'
    dfbf_file.write_text(STOCK_CFG.format(data=data)
                         + DFBF_BLOCK.format(teacher=tmp / 'teacher.pth'))
    cfg = Config.fromfile(str(dfbf_file))
    cfg.work_dir = str(tmp / 'work')
    runner = DataFreeDistillRunner.from_cfg(cfg)
    runner.train()
    metrics = runner.val_loop.run()
    return dict(tmp=tmp, runner=runner, metrics=metrics, teacher=teacher)


def test_student_is_really_smaller(skeleton_run):
    model = skeleton_run['runner'].model
    n_teacher = sum(p.numel() for p in model.teacher.backbone.parameters())
    n_student = sum(p.numel() for p in model.student.backbone.parameters())
    assert n_student < 0.8 * n_teacher
    # the head is the stock one, untouched
    assert model.student.head.fc.weight.shape == model.teacher.head.fc.weight.shape


def test_training_keeps_the_checkpoint_weights_of_the_teacher(skeleton_run):
    # Runner.train() calls init_weights(); it must not re-initialise the loaded networks
    saved = torch.load(skeleton_run['tmp'] / 'teacher.pth', weights_only=True)['state_dict']
    teacher = skeleton_run['runner'].model.teacher.state_dict()
    assert all(torch.equal(teacher[k], v) for k, v in saved.items())


def test_synthesis_reduced_the_bn_statistics_loss(skeleton_run):
    from dfbf_mm.synthesis import BNStatisticsLoss
    runner = skeleton_run['runner']
    dataset = runner.train_dataloader.dataset
    teacher = runner.model.teacher.eval()
    images = torch.stack([dataset[i]['inputs'] for i in range(8)])

    def bn_loss(x):
        hooks = BNStatisticsLoss(teacher, 1.0)
        with torch.no_grad(), hooks:
            hooks.reset()
            teacher(x, mode='tensor')
            return hooks.loss().item()
    # the starting point of DeepInversion is N(0, 1) noise in the normalised space
    assert bn_loss(images) < 0.5 * bn_loss(torch.randn_like(images))
    assert osp.isfile(osp.join(runner.work_dir, 'synthetic_images.png'))


def test_distillation_loss_decreased(skeleton_run):
    runner = skeleton_run['runner']
    losses = runner.message_hub.get_scalar('train/loss').data[0]
    assert len(losses) == 6  # 3 epochs x 2 iterations
    assert losses[-2:].mean() < losses[:2].mean()


def test_metric_of_pruned_model_from_stock_tool_matches(skeleton_run):
    export = osp.join(skeleton_run['runner'].work_dir, 'export')
    for name in ('pruned.py', 'pruned.pth', 'pruned_channel_spec.json'):
        assert osp.isfile(osp.join(export, name)), name
    ours = skeleton_run['metrics']['accuracy/top1']
    stock_test = osp.join(osp.dirname(__import__('mmpretrain').__file__), '.mim', 'tools', 'test.py')
    out = subprocess.run(
        [sys.executable, stock_test, osp.join(export, 'pruned.py'), osp.join(export, 'pruned.pth'),
         '--work-dir', str(skeleton_run['tmp'] / 'stock_test')],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    stock = float(re.search(r'accuracy/top1: ([0-9.]+)', out.stdout + out.stderr).group(1))
    assert stock == pytest.approx(ours, abs=1e-3)  # the stock tool prints 4 decimals


def test_resume_restores_the_pruned_structure_and_continues(skeleton_run, tmp_path):
    first = skeleton_run['runner']
    cfg = Config.fromfile(str(skeleton_run['tmp'] / 'dfbf.py'))
    cfg.work_dir = str(tmp_path / 'resumed')
    cfg.resume = True
    cfg.load_from = osp.join(first.work_dir, 'epoch_2.pth')
    cfg.dfbf.pruner.sparsity = 0.2  # the checkpoint's structure wins over a re-prune
    cfg.dfbf.synthetic_data.cache_dir = osp.join(first.work_dir, 'synthetic_cache')
    resumed = DataFreeDistillRunner.from_cfg(cfg)
    assert resumed.model.channel_spec == first.model.channel_spec
    resumed.train()
    assert resumed.epoch == 3
    resumed_state = resumed.model.student.state_dict()
    assert all(v.shape == resumed_state[k].shape
               for k, v in first.model.student.state_dict().items())
