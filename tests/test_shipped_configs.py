"""Every shipped ``configs/dfbf_*.py`` as a user runs it, at its real architecture.

A random-weights teacher of the config's exact model stands in for the user's checkpoint and
only the budget is shrunk (2 synthetic images, one step per synthesis phase, one epoch, no
latency profile). Then, as a user would: ``tools/train.py`` through ``DataFreeDistillRunner``
with the val loop on, the export rebuilt by the stock registry and loaded strictly, and the
package's own stock ``tools/test.py`` on the export. The val/test data are tiny generated sets
in the config's own layout (``tiny_val_sets``), found through the config's relative
``data/...`` paths by running in their root.
"""
import glob
import os
import os.path as osp
import re
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config

import dfbf_mm  # noqa: F401
from dfbf_mm.stock_model import build_stock_model, config_scope, get_backbone
from dfbf_mm.synthesis.presets import get_generator_preset, get_preset
from tiny_val_sets import all_val_sets

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = sorted(glob.glob(osp.join(REPO, 'configs', 'dfbf_*.py')))
STOCK_TEST_TOOL = {scope: osp.join(osp.dirname(__import__(scope).__file__), '.mim', 'tools', 'test.py')
                   for scope in ('mmdet', 'mmpose', 'mmpretrain')}
METRIC = {'mmdet': 'coco/bbox_mAP', 'mmpose': 'coco/AP', 'mmpretrain': 'accuracy/top1'}
PHASE_KEYS = ('iterations', 'half_res_iterations', 'coarse_iterations')
# CIFAR10 checks the md5 sums of the real archive; its val set becomes an image folder
CIFAR_VAL = """
_base_ = '{config}'
_folder = dict(_delete_=True, type='CustomDataset', data_root='data/cifar10_folder',
               pipeline=[dict(type='LoadImageFromFile'), dict(type='PackInputs')])
val_dataloader = dict(dataset=_folder)
test_dataloader = dict(dataset=_folder)
"""


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    return all_val_sets(str(tmp_path_factory.mktemp('val_sets')))


def tiny_budget(cfg: Config, teacher: str) -> list:
    """``--cfg-options`` that shrink the budget of ``cfg`` and nothing else."""
    synth = cfg.dfbf.synthesizer
    if synth.type == 'GeneratorSynthesizer':
        steps = ['dfbf.synthesizer.first_steps=1', 'dfbf.synthesizer.steps=1']
        if synth.get('refine_steps', get_generator_preset(synth.get('preset', 'classification'))['refine_steps']):
            steps.append('dfbf.synthesizer.refine_steps=1')
    else:
        preset = get_preset(synth.get('preset', 'classification'))
        steps = [f'dfbf.synthesizer.{k}=1' for k in PHASE_KEYS if synth.get(k, preset[k]) > 0]
    # a random two-stage teacher scores every class ~1/81, under the stock 0.05 threshold: keep
    # its boxes so the evaluator has detections to score
    random_teacher = ['model.test_cfg.rcnn.score_thr=0.0'] if 'rcnn' in (cfg.model.get('test_cfg') or {}) else []
    return [*random_teacher, f'dfbf.teacher_checkpoint={teacher}', 'dfbf.synthetic_data.num_images=2',
            'dfbf.synthetic_data.batch_size=2', *steps, 'dfbf.schedule.epochs=1',
            'dfbf.schedule.lr_steps=[1]', 'dfbf.schedule.val_interval=1',
            'dfbf.export.profile=False']


def run(args, cwd, log):
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                          env=dict(os.environ, DFBF_TRACEBACK='1'), timeout=900)
    with open(log, 'w') as f:
        f.write(proc.stdout + proc.stderr)
    assert proc.returncode == 0, f'{args[0]} failed (log: {log}):\n{(proc.stdout + proc.stderr)[-3000:]}'
    return proc.stdout + proc.stderr


def metric_value(output: str, key: str) -> float:
    values = re.findall(re.escape(key) + r"'?:\s*(-?[0-9.]+)", output)
    assert values, f'{key} not in the output'
    return float(values[-1])


@pytest.mark.slow
@pytest.mark.parametrize('path', CONFIGS, ids=osp.basename)
def test_shipped_config_end_to_end(path, data_root, tmp_path):
    cfg = Config.fromfile(path)
    scope = config_scope(cfg)
    teacher = build_stock_model(cfg)
    teacher_ckpt = str(tmp_path / 'teacher.pth')
    torch.save({'state_dict': teacher.state_dict()}, teacher_ckpt)
    config = path
    if 'cifar' in osp.basename(path):
        config = str(tmp_path / 'cifar_val_folder.py')
        with open(config, 'w') as f:
            f.write(CIFAR_VAL.format(config=path))

    work = tmp_path / 'work'
    out = run([osp.join(REPO, 'tools', 'train.py'), config, '--work-dir', str(work),
               '--cfg-options', *tiny_budget(cfg, teacher_ckpt)], data_root, tmp_path / 'train.log')
    assert 'Epoch(val)' in out and METRIC[scope] in out  # the stock evaluator ran after the epoch
    check_export_with_stock_tools(work, teacher, scope, data_root, tmp_path)


def check_export_with_stock_tools(work, teacher, scope, data_root, tmp_path):
    """The export in ``work``: rebuilt by the stock registry and loaded strictly, narrower than
    the teacher, then scored by the package's own stock ``tools/test.py``."""
    deploy, ckpt = str(work / 'export' / 'pruned.py'), str(work / 'export' / 'pruned.pth')
    rebuilt = build_stock_model(Config.fromfile(deploy))  # the stock registry, via PrunedBackbone
    rebuilt.load_state_dict(torch.load(ckpt, map_location='cpu')['state_dict'], strict=True)
    params = [sum(p.numel() for p in get_backbone(m).parameters()) for m in (teacher, rebuilt)]
    assert params[1] < params[0], 'no channel was removed'
    assert type(rebuilt.backbone) is type(teacher.backbone)

    out = run([STOCK_TEST_TOOL[scope], deploy, ckpt, '--work-dir', str(tmp_path / 'test')],
              data_root, tmp_path / 'test.log')
    value = metric_value(out, METRIC[scope])
    assert -1 <= value <= 100
