"""Progressive pruning through the stock MMEngine loop: K steps, checkpoints, --resume, export."""
import json
import os.path as osp
import shutil

import torch
from mmengine.config import Config

import dfbf_mm  # noqa: F401
from dfbf_mm.engine import DataFreeDistillRunner
from dfbf_mm.export.profile import count_macs_params
from dfbf_mm.stock_model import build_stock_model

from test_walking_skeleton import STOCK_CFG
from tiny_data import imagenet_style_folder

DFBF_BLOCK = """
runner_type = 'DataFreeDistillRunner'
default_hooks = dict(logger=dict(type='LoggerHook', interval=1),
                     checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=5))
dfbf = dict(
    teacher_checkpoint='{teacher}',
    pruner=dict(type='L1FilterPruner', target=dict(macs=0.6)),
    synthesizer=dict(type='DeepInversionSynthesizer', preset='classification', iterations=2),
    train_data='noise',
    synthetic_data=dict(num_images=8, batch_size=4, image_size=(32, 32), seed=0),
    schedule=dict(epochs=3, lr=0.01, lr_steps=[2]),
    export=dict(profile=False),
    progressive=dict(steps=3))
"""


def _run(cfg_file, work_dir, resume=False):
    cfg = Config.fromfile(cfg_file)
    cfg.work_dir = work_dir
    cfg.resume = resume
    runner = DataFreeDistillRunner.from_cfg(cfg)
    runner.train()
    return runner


def test_progressive_steps_resume_and_export(tmp_path):
    data = imagenet_style_folder(str(tmp_path / 'val'))
    stock = tmp_path / 'stock.py'
    stock.write_text(STOCK_CFG.format(data=data))
    teacher = build_stock_model(Config.fromfile(str(stock)))
    torch.save({'state_dict': teacher.state_dict()}, tmp_path / 'teacher.pth')
    cfg_file = tmp_path / 'dfbf.py'
    cfg_file.write_text(STOCK_CFG.format(data=data) + DFBF_BLOCK.format(teacher=tmp_path / 'teacher.pth'))
    work = str(tmp_path / 'work')
    runner = _run(str(cfg_file), work)
    model = runner.model
    x = torch.zeros(1, 3, 32, 32)
    cut = 1 - count_macs_params(model.student.backbone, x)[0] / count_macs_params(model.teacher.backbone, x)[0]
    assert abs(cut - 0.6) <= 0.02
    hub = runner.message_hub
    assert abs(hub.get_info('dfbf_progressive_step2') - 0.4) <= 0.02  # step 2 of 3: 2/3 of the cut
    # the optimizer trains the student's current parameters, not the replaced ones
    in_opt = {id(p) for g in runner.optim_wrapper.optimizer.param_groups for p in g['params']}
    assert all(id(p) in in_opt for p in model.student.backbone.parameters())
    assert runner.optim_wrapper.optimizer.param_groups[0]['lr'] == 0.01  # restarted by step 3
    # every checkpoint holds the spec of its step: step 1 < step 2 < step 3 channels removed
    removed = []
    for e in (1, 2, 3):
        spec = torch.load(osp.join(work, f'epoch_{e}.pth'), map_location='cpu',
                          weights_only=False)['meta']['dfbf_channel_spec']
        removed.append(sum(m['original_shapes']['weight'][0] - m['shapes']['weight'][0]
                           for m in spec['modules'].values() if 'weight' in m['shapes']
                           and len(m['shapes']['weight']) == 4))
    assert removed[0] < removed[1] < removed[2]
    with open(osp.join(work, 'export', 'pruned_channel_spec.json')) as f:
        exported = json.load(f)
    assert exported == json.loads(json.dumps(model.channel_spec))  # the last step's student

    # --resume from the end of epoch 2 (step 3 not begun): only step 3 is pruned again
    shutil.rmtree(osp.join(work, 'export'))
    with open(osp.join(work, 'last_checkpoint'), 'w') as f:
        f.write(osp.join(work, 'epoch_2.pth'))
    resumed = _run(str(cfg_file), work, resume=True)
    log = open(osp.join(resumed.log_dir, osp.basename(resumed.log_dir) + '.log')).read()
    assert 'progressive pruning: step 3/3 at epoch 2' in log and 'step 2/3' not in log
    assert 'L1FilterPruner: target macs -20.0%' not in log  # step 1's student came from the spec
    assert {k: v.shape for k, v in resumed.model.student.state_dict().items()} == \
        {k: v.shape for k, v in model.student.state_dict().items()}
    assert osp.isfile(osp.join(work, 'export', 'pruned.pth'))
