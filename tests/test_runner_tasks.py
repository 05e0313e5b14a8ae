"""One real run per task through DataFreeDistillRunner — prune, synthesise, a few iterations,
evaluate with the stock evaluator — then the exported checkpoint evaluated by that package's
stock tools/test.py gives the same metric (detection: mmdet CocoMetric bbox; keypoints: mmpose
CocoMetric). Classification is covered by test_walking_skeleton.py."""
import os.path as osp
import re
import subprocess
import sys

import pytest
import torch

import dfbf_mm  # noqa: F401
from dfbf_mm.engine import DataFreeDistillRunner
from dfbf_mm.stock_model import build_stock_model
from tools.benchmarks import make_digits, train_teacher

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))

TASKS = {
    # task: (package, metric key, synthesis preset, image size, sparsity); detection at the
    # reference's s=0.1 so the briefly tuned student still detects (an empty result has no mAP)
    'det': ('mmdet', 'coco/bbox_mAP', 'detection', (128, 128), 0.1),
    'pose': ('mmpose', 'coco/AP', 'pose', (64, 64), 0.5),
}


@pytest.fixture(scope='module')
def digits(tmp_path_factory):
    out = str(tmp_path_factory.mktemp('digits'))
    make_digits.build(out, seed=0, tasks=('det', 'pose'), det_images=(4, 6), pose_images=(4, 6))
    return out


@pytest.mark.slow
@pytest.mark.parametrize('task', list(TASKS))
def test_task_through_runner_and_stock_test_tool(task, digits, tmp_path):
    package, key, preset, size, sparsity = TASKS[task]
    cfg = train_teacher.load_task_config(task, digits, str(tmp_path / 'work'))
    teacher_ckpt = osp.join(REPO, 'checkpoints', f'digits_{task}_teacher.pth')
    if not osp.isfile(teacher_ckpt):  # a random teacher still exercises the whole path
        teacher_ckpt = str(tmp_path / 'teacher.pth')
        torch.save({'state_dict': build_stock_model(cfg).state_dict()}, teacher_ckpt)
    cfg.runner_type = 'DataFreeDistillRunner'
    cfg.dfbf = dict(
        teacher_checkpoint=teacher_ckpt,
        pruner=dict(type='L1FilterPruner', sparsity=sparsity),
        synthesizer=dict(type='DeepInversionSynthesizer', preset=preset, iterations=3,
                         half_res_iterations=2),
        synthetic_data=dict(num_images=4, batch_size=2, image_size=size, seed=0),
        # 5-step images are far from the teacher's BN statistics: keep the student's frozen
        distill=dict(bn='frozen'),
        schedule=dict(epochs=1, lr=0.001, lr_steps=[1]))
    runner = DataFreeDistillRunner.from_cfg(cfg)
    runner.train()
    ours = runner.val_loop.run()[key]

    model = runner.model
    assert sum(p.numel() for p in model.student.backbone.parameters()) < \
        sum(p.numel() for p in model.teacher.backbone.parameters())
    paths = runner.message_hub.get_info('dfbf_export')
    stock_test = osp.join(osp.dirname(__import__(package).__file__), '.mim', 'tools', 'test.py')
    out = subprocess.run([sys.executable, stock_test, paths['config'], paths['checkpoint'],
                          '--work-dir', str(tmp_path / 'stock_test')],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    stock = float(re.search(re.escape(key) + r': ([-0-9.]+)', out.stdout + out.stderr).group(1))
    assert stock == pytest.approx(ours, abs=1e-3)  # the stock tools print 4 decimals
