"""The mission configs become runner configs; LOP/SP inside the distiller behave as promised."""
import glob
import os.path as osp

import pytest
import torch
from mmengine.config import Config

import dfbf_mm  # noqa: F401
from dfbf_mm.distillation.lop import ExpandedConv2d
from dfbf_mm.engine import to_runner_config
from dfbf_mm.registry import MODELS
from dfbf_mm.stock_model import build_stock_model, stock_model_cfg
from tiny_data import TINY_CLASSIFIER_CFG as STOCK

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
MISSION_CONFIGS = sorted(glob.glob(osp.join(REPO, 'configs', 'dfbf_*.py')))


def test_all_six_mission_configs_exist():
    names = {osp.basename(p) for p in MISSION_CONFIGS}
    assert {'dfbf_yolox_coco.py', 'dfbf_faster_rcnn_r50_coco.py', 'dfbf_resnet50_imagenet.py',
            'dfbf_resnet18_cifar10.py', 'dfbf_simplebaseline_r50_coco_keypoint.py',
            'dfbf_hrnet_w32_coco_keypoint.py'} <= names


@pytest.mark.slow
@pytest.mark.parametrize('path', MISSION_CONFIGS, ids=osp.basename)
def test_mission_config_becomes_a_runner_config(path):
    cfg = Config.fromfile(path)
    assert cfg.runner_type == 'DataFreeDistillRunner' and cfg.dfbf.teacher_checkpoint
    runner_cfg = to_runner_config(cfg)
    assert runner_cfg.model['type'] == 'DataFreeDistiller'
    assert runner_cfg.model['model']['backbone'] == cfg.model.backbone.to_dict()
    dataset = runner_cfg.train_dataloader['dataset']
    assert dataset['type'] == 'SyntheticImageDataset'
    assert dataset['num_images'] == cfg.dfbf.synthetic_data.num_images
    assert runner_cfg.val_evaluator == cfg.val_evaluator  # the stock evaluator is kept
    assert runner_cfg.optim_wrapper['optimizer']['type'] == 'SGD'
    hooks = [h['type'] for h in runner_cfg.custom_hooks]
    assert hooks == ['SyntheticDataHook', 'ChannelSpecHook', 'ExportHook']


def test_train_batch_size_decouples_fine_tuning_from_synthesis_batches():
    cfg = Config.fromfile(MISSION_CONFIGS[0])
    data = cfg.dfbf.synthetic_data
    assert to_runner_config(cfg).train_dataloader['batch_size'] == data.batch_size  # default: the same
    cfg.dfbf.synthetic_data.update(batch_size=64, train_batch_size=8)
    loader = to_runner_config(cfg).train_dataloader
    assert loader['batch_size'] == 8 and loader['dataset']['batch_size'] == 64
    cfg.dfbf.synthetic_data.train_batch_size = 0
    with pytest.raises(ValueError, match='train_batch_size'):
        to_runner_config(cfg)




def test_lop_and_sp_in_the_distiller(tmp_path):
    cfg = Config.fromstring(STOCK, '.py')
    teacher = build_stock_model(cfg)
    torch.save({'state_dict': teacher.state_dict()}, tmp_path / 't.pth')
    distiller = MODELS.build(dict(
        type='DataFreeDistiller', model=stock_model_cfg(cfg), teacher_checkpoint=str(tmp_path / 't.pth'),
        pruner=dict(type='L1FilterPruner', sparsity=0.5), input_size=(32, 32),
        overparam=dict(ratio=2), sp_loss=dict(weight=10.0, taps='layers')))
    expanded = [m for m in distiller.student.backbone.modules() if isinstance(m, ExpandedConv2d)]
    assert expanded and len(expanded) == len(distiller.expanded)
    distiller.train()
    losses = distiller(torch.randn(4, 3, 32, 32), mode='loss')
    assert set(losses) == {'loss_feat', 'loss_sp'} and losses['loss_sp'] > 0
    # validation sees the merged (plain) architecture, computing the same function
    distiller.eval()
    x = torch.randn(2, 3, 32, 32)
    plain = distiller.eval_student()
    assert not any(isinstance(m, ExpandedConv2d) for m in plain.modules())
    with torch.no_grad():
        assert torch.allclose(plain(x, mode='tensor'), distiller.student(x, mode='tensor'), atol=1e-4)
    # export merges in place: the state dict is the stock one with pruned shapes
    distiller.before_export()
    keys = set(distiller.student.state_dict())
    assert keys == set(teacher.state_dict())


def test_no_tap_left_distils_the_backbone_outputs(tmp_path, monkeypatch):
    """A backbone whose every norm layer is pruned (CPM) or that has none (a fused RepVGG)
    leaves no default tap: the backbone outputs are distilled instead."""
    import dfbf_mm.distillation.distiller as distiller_module
    cfg = Config.fromstring(STOCK, '.py')
    teacher = build_stock_model(cfg)
    torch.save({'state_dict': teacher.state_dict()}, tmp_path / 't.pth')
    args = dict(type='DataFreeDistiller', model=stock_model_cfg(cfg), teacher_checkpoint=str(tmp_path / 't.pth'),
                pruner=dict(type='L1FilterPruner', sparsity=0.5), input_size=(32, 32))
    tapped = MODELS.build(args)
    assert tapped.taps and tapped.loss.out_weight == 0.0  # norm layers to tap: nothing changes
    monkeypatch.setattr(distiller_module, 'select_taps', lambda *a, **k: [])
    bare = MODELS.build(args)
    assert bare.loss.out_weight == 1.0
    losses = bare.train()(torch.randn(2, 3, 32, 32), mode='loss')
    assert set(losses) == {'loss_out'} and losses['loss_out'] > 0
