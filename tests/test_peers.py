"""tools/benchmarks/peers.py: the Torch-Pruning row's pruning and fine-tuning at a tiny budget,
the mmrazor worker's config arithmetic, the table; and (where mmrazor imports: the torch 2.1
stack) one mmrazor run through the pytorch launcher in the command's quick mode."""
import copy
import json
import os.path as osp

import pytest
import torch

from tools.benchmarks import peers
from tools.benchmarks.peers_mmrazor import scale_schedule, teacher_passes_per_iter

REPO = peers.REPO


@pytest.fixture(scope='module')
def teacher():
    import dfbf_mm  # noqa: F401
    from tools.benchmarks.train_teacher import load_task_config
    from dfbf_mm.stock_model import build_stock_model, load_weights
    cfg = load_task_config('cls', osp.join(REPO, 'data', 'digits'))
    model = build_stock_model(cfg)
    load_weights(model, osp.join(REPO, 'checkpoints', 'digits_cls_teacher.pth'))
    return model.eval().requires_grad_(False)  # frozen, as the distiller holds it


def test_tp_l1_prune_reaches_the_macs_target_on_every_group(teacher):
    full = peers.backbone_macs(teacher)
    target = int(0.4 * full)
    pruned, ratio = peers.tp_l1_prune(teacher, target, tol=0.02)
    macs = peers.backbone_macs(pruned)
    assert abs(macs - target) <= 0.02 * full, (macs, target, ratio)
    assert 0 < ratio < 0.95
    # Torch-Pruning's all-groups L1: the residual stream (stem) is cut too, the classes are not
    assert pruned.backbone.conv1.out_channels < teacher.backbone.conv1.out_channels
    assert pruned.head.fc.out_features == teacher.head.fc.out_features == 10
    assert pruned(torch.randn(2, 3, 32, 32), mode='tensor').shape == (2, 10)
    assert all(p.requires_grad for p in pruned.parameters())  # trainable though the teacher is frozen
    assert peers.backbone_macs(teacher) == full  # the teacher itself is untouched


def test_finetune_with_kd_moves_the_pruned_student_towards_the_teacher(teacher):
    pruned, _ = peers.tp_l1_prune(teacher, int(0.5 * peers.backbone_macs(teacher)), tol=0.05)
    images = torch.randn(32, 3, 32, 32)
    loss = peers.kd_loss(teacher)
    student = copy.deepcopy(pruned)
    with torch.no_grad():
        before = loss(student.eval(), images).item()
    sched = dict(epochs=3, lr=0.01, lr_steps=[2], momentum=0.9, weight_decay=5e-4)
    seconds = peers.finetune(student, sched, lambda epoch: [images[:16], images[16:]], loss, seed=0)
    with torch.no_grad():
        after = loss(student.eval(), images).item()
    assert seconds > 0
    assert after < before, (before, after)
    # the pruned copy given to finetune is changed in place, the original is not
    assert not torch.equal(student.head.fc.weight, pruned.head.fc.weight)


def test_mmrazor_schedule_and_pass_counts():
    dafl = dict(architecture=[dict(type='LinearLR', end=500, by_epoch=False),
                              dict(type='MultiStepLR', begin=500, milestones=[12000, 24000])],
                generator=dict(type='LinearLR', end=500))
    s = scale_schedule(dafl, 120 / 30000)
    assert s['architecture'][0]['end'] == 2 and s['architecture'][1]['begin'] == 2
    assert s['architecture'][1]['milestones'] == [48, 96]  # same fractions of the run
    assert s['generator']['end'] == 2
    assert teacher_passes_per_iter('dafl', 256, 1) == 512  # one batch, through the teacher twice
    assert teacher_passes_per_iter('dfad', 32, 5) == 192  # a generator step + 5 student steps
    assert teacher_passes_per_iter('zskt', 16, 10) == 176


def test_table_names_a_peer_above_ours_and_the_gap_to_real():
    rec = dict(macs=300, macs_teacher=1000, finetune_s=10.0)
    results = {
        'full|teacher': dict(metric=99.0), 'full|pruned': dict(metric=10.0),
        'full|synthesis': dict(passes_per_image=200.0, images=256, wall_s=100.0, epochs=40),
        'full|0|dfbf': dict(rec, metric=97.0), 'full|1|dfbf': dict(rec, metric=98.0),
        'full|0|real': dict(rec, metric=99.0),
        'full|0|dfad:pruned': dict(metric=98.0, teacher_passes=6000, images=6000, wall_s=110.0),
        'full|0|zskt:pruned': dict(metric=50.0, teacher_passes=5000, images=5000, wall_s=111.0),
    }
    tab, means, teacher = peers.table(results, 'full')
    assert teacher == 99.0 and means['dfbf'] == 97.5
    ours = next(line for line in tab.splitlines() if line.startswith('| ours'))
    assert '97.00 (0), 98.00 (1)' in ours and '| 240.0 | 61,440 | 110 | -1.50 |' in ours
    lines = peers.beats(means)
    assert len(lines) == 1 and 'DFAD' in lines[0] and '+0.50' in lines[0]


@pytest.mark.skipif(peers.mmrazor_available() != '',
                    reason=f'mmrazor does not import on this stack ({peers.mmrazor_available()}); '
                           'its rows run on the torch 2.1 stack')
def test_quick_mode_runs_mmrazor_dfad_under_the_pytorch_launcher(tmp_path):
    out = str(tmp_path)
    peers.main(['--quick', '--out', out, '--methods', 'dfbf', 'dfad:pruned'])
    with open(osp.join(out, 'results.json')) as f:
        results = json.load(f)
    dfad = results['quick|0|dfad:pruned']
    # the teacher mmrazor loaded is the committed one (its own test top-1, not a re-initialised net)
    assert dfad['teacher_check'] == pytest.approx(results['quick|teacher']['metric'], abs=0.01)
    assert dfad['iters'] >= 1 and dfad['teacher_passes'] == 192 * dfad['iters']
    assert 0 <= dfad['metric'] <= 100
    with open(osp.join(out, 'peers.md')) as f:
        text = f.read()
    assert 'mmrazor DFAD, pruned student' in text and 'classification-only' in text
