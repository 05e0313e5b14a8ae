"""Foundation: registration from every mm scope, safe loading of MMEngine checkpoints."""
import textwrap

import pytest
import torch
from mmengine.config import Config
from mmengine.model import BaseModel
from mmengine.runner import Runner, load_checkpoint
from torch import nn
from torch.utils.data import Dataset

from dfbf_mm.compat import safe_load

DFBF_TYPES = {
    'MODELS': ['DataFreeDistiller', 'PrunedBackbone', 'FeatureMimicLoss'],
    'RUNNERS': ['DataFreeDistillRunner'],
    'HOOKS': ['SyntheticDataHook', 'ExportHook', 'ChannelSpecHook'],
    'DATASETS': ['SyntheticImageDataset'],
}


@pytest.mark.parametrize('scope', ['mmdet', 'mmpose', 'mmpretrain'])
def test_custom_imports_registers_dfbf_types_in_every_scope(tmp_path, scope):
    cfg_file = tmp_path / f'{scope}_cfg.py'
    cfg_file.write_text(textwrap.dedent(f"""
        default_scope = '{scope}'
        custom_imports = dict(imports=['dfbf_mm'], allow_failed_imports=False)
        loss = dict(type='FeatureMimicLoss', distance='mse', weights=(1, 2))
    """))
    cfg = Config.fromfile(str(cfg_file))  # runs custom_imports
    registry = __import__(f'{scope}.registry', fromlist=['x'])
    for reg_name, names in DFBF_TYPES.items():
        reg = getattr(registry, reg_name)
        assert reg.scope == scope
        for name in names:
            assert reg.get(name) is not None, f'{name} not visible from {scope}.{reg_name}'
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope(scope):
        loss = registry.MODELS.build(cfg.loss)
    assert type(loss).__name__ == 'FeatureMimicLoss' and loss.distance == 'mse'


class _TinyModel(BaseModel):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 1)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        out = self.fc(torch.stack(inputs))
        return dict(loss=out.pow(2).mean()) if mode == 'loss' else out


class _TinySet(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return dict(inputs=torch.full((2,), float(i)))


def _runner(work_dir, max_epochs, **kwargs):
    return Runner(model=_TinyModel(), work_dir=str(work_dir),
                  train_dataloader=dict(dataset=_TinySet(), batch_size=4,
                                        sampler=dict(type='DefaultSampler', shuffle=True)),
                  optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
                  train_cfg=dict(by_epoch=True, max_epochs=max_epochs),
                  default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1)),
                  randomness=dict(seed=1), **kwargs)


def test_runner_checkpoint_with_message_hub_loads_and_resumes(tmp_path):
    import dfbf_mm  # noqa: F401  (allow-lists the checkpoint's numpy/mmengine types)
    _runner(tmp_path / 'a', 2).train()
    ckpt_path = tmp_path / 'a' / 'epoch_2.pth'
    # weights_only stays on (torch >= 2.6; the restricted unpickler below it, dfbf_mm/compat.py):
    # the message hub's HistoryBuffers and numpy values are allow-listed
    ckpt = safe_load(ckpt_path)
    assert 'message_hub' in ckpt and ckpt['meta']['epoch'] == 2
    model = _TinyModel()
    load_checkpoint(model, str(ckpt_path), strict=True)
    assert torch.equal(model.fc.weight, ckpt['state_dict']['fc.weight'])
    resumed = _runner(tmp_path / 'b', 3, resume=True, load_from=str(ckpt_path))
    resumed.train()
    assert resumed.epoch == 3 and resumed.iter == 6


def test_safe_loading_still_refuses_arbitrary_getattr(tmp_path):
    import pickle
    import dfbf_mm  # noqa: F401
    path = tmp_path / 'evil.pth'

    from mmengine.logging import HistoryBuffer

    class Evil:  # reaches for a non-statistics attribute (a step towards code execution)
        def __reduce__(self):
            return getattr, (HistoryBuffer, '__init__')
    torch.save({'x': Evil()}, path)
    with pytest.raises(pickle.UnpicklingError):
        safe_load(path)
