"""Bad dfbf configs fail early with one line naming the field."""
import subprocess
import sys
import textwrap

import pytest
import torch
from mmengine.config import Config
from mmengine.model import BaseModel

import dfbf_mm  # noqa: F401
from dfbf_mm.engine import DataFreeDistillRunner
from dfbf_mm.registry import MODELS
from dfbf_mm.stock_model import build_stock_model

STOCK = textwrap.dedent("""
    default_scope = 'mmpretrain'
    model = dict(type='ImageClassifier',
                 backbone=dict(type='ResNet_CIFAR', depth=18, stem_channels=8, base_channels=8),
                 neck=dict(type='GlobalAveragePooling'),
                 head=dict(type='LinearClsHead', num_classes=3, in_channels=64))
    runner_type = 'DataFreeDistillRunner'
    dfbf = dict(teacher_checkpoint='{ckpt}',
                pruner=dict(type='L1FilterPruner', sparsity=0.5),
                synthesizer=dict(type='DeepInversionSynthesizer', preset='classification'),
                synthetic_data=dict(num_images=4, batch_size=2, image_size=(32, 32)))
""")


@MODELS.register_module(force=True)
class _NoBackboneModel(BaseModel):
    def __init__(self, data_preprocessor=None):
        super().__init__(data_preprocessor)
        self.fc = torch.nn.Linear(2, 2)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        return self.fc(inputs)


@pytest.fixture(scope='module')
def teacher_ckpt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('errors')
    cfg = Config.fromstring(STOCK.format(ckpt='x'), '.py')
    path = tmp / 'teacher.pth'
    torch.save({'state_dict': build_stock_model(cfg).state_dict()}, path)
    return path


def _build(tmp_path, ckpt, **dfbf_changes):
    cfg = Config.fromstring(STOCK.format(ckpt=ckpt), '.py')
    cfg.work_dir = str(tmp_path)
    for key, value in dfbf_changes.items():
        if value is None:
            cfg.dfbf.pop(key)
        else:
            cfg.dfbf[key] = value
    return DataFreeDistillRunner.from_cfg(cfg)


def test_missing_teacher_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match=r'dfbf\.teacher_checkpoint: file not found'):
        _build(tmp_path, tmp_path / 'nope.pth')


def test_checkpoint_of_another_architecture(tmp_path):
    other = Config.fromstring(STOCK.format(ckpt='x'), '.py')
    other.model.backbone.base_channels = 16
    other.model.head.in_channels = 128
    path = tmp_path / 'other.pth'
    torch.save({'state_dict': build_stock_model(other).state_dict()}, path)
    with pytest.raises(ValueError, match=r'dfbf\.teacher_checkpoint: .* does not match the model'):
        _build(tmp_path, path)


def test_model_without_backbone(tmp_path, teacher_ckpt):
    cfg = Config.fromstring(STOCK.format(ckpt=teacher_ckpt), '.py')
    cfg.model = dict(type='_NoBackboneModel')
    cfg.work_dir = str(tmp_path)
    with pytest.raises(ValueError, match=r'model: _NoBackboneModel has no `backbone`'):
        DataFreeDistillRunner.from_cfg(cfg)


@pytest.mark.parametrize('changes, message', [
    (dict(learning_rate=0.1), r"dfbf: unknown key 'learning_rate'"),
    (dict(pruner=dict(type='MagicPruner')), r"dfbf\.pruner\.type: 'MagicPruner' is not a registered pruner"),
    (dict(synthesizer=dict(type='GAN')), r"dfbf\.synthesizer\.type: 'GAN' is not a registered synth"),
    (dict(synthetic_data=dict(size=32)), r"dfbf\.synthetic_data: unknown key 'size'"),
    (dict(distill=dict(temperature=2)), r"dfbf\.distill: unknown key 'temperature'"),
    (dict(distill=dict(loss='l1')), r"dfbf\.distill\.loss: must be a model config, dict\(type=\.\.\.\), got 'l1'"),
    (dict(distill=dict(loss=dict(type='NoSuchLoss'))), r"dfbf\.distill\.loss\.type: 'NoSuchLoss' is not a registered model"),
    (dict(distill=dict(distance='l3')), r"dfbf\.distill\.distance: 'l3' is not one of l1, mse"),
    (dict(distill=dict(loss=dict(type='FeatureMimicLoss', distance='l3'))), r"dfbf\.distill\.loss\.distance: 'l3'"),
    (dict(distill=dict(weights=2, loss=dict(type='FeatureMimicLoss', weights=1))), r"dfbf\.distill\.weights: given twice"),
    (dict(sp_loss=dict(weight=-1)), r"dfbf\.sp_loss\.weight: must be a number >= 0, got -1"),
    (dict(schedule=dict(epochs=0)), r"dfbf\.schedule\.epochs: must be an integer >= 1, got 0"),
    (dict(export=dict(name='a/b')), r"dfbf\.export\.name: must be a non-empty name without a path separator, got 'a/b'"),
    (dict(synthetic_data=dict(image_size=(0, 32))), r"dfbf\.synthetic_data\.image_size: must be \(H, W\) positive"),
    (dict(synthetic_data=dict(invert='neck')), r"dfbf\.synthetic_data\.invert: 'neck' is not one of auto, backbone, model"),
    (dict(teacher_checkpoint=None), r'dfbf\.teacher_checkpoint: required'),
])
def test_bad_dfbf_block(tmp_path, teacher_ckpt, changes, message):
    with pytest.raises(ValueError, match=message):
        _build(tmp_path, teacher_ckpt, **changes)


@pytest.mark.slow
def test_train_tool_prints_one_line(tmp_path):
    cfg_file = tmp_path / 'cfg.py'
    cfg_file.write_text(STOCK.format(ckpt=tmp_path / 'missing.pth'))
    out = subprocess.run([sys.executable, 'tools/train.py', str(cfg_file), '--work-dir',
                          str(tmp_path / 'w')], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith('error: ') and 'dfbf.teacher_checkpoint: file not found' in last
    assert 'Traceback' not in out.stderr
