"""Pruning to a target (MACs / params), global ranking, the per-group table."""
import os.path as osp

import pytest
import torch
import torch_pruning as tp

from dfbf_mm.cost import count_macs_params
from dfbf_mm.pruning import L1FilterPruner, trace_channel_groups
from dfbf_mm.pruning.report import groups_table, plot_groups
from dfbf_mm.pruning.importance import group_scores
from dfbf_mm.pruning.target import global_ratios, solve
from dfbf_mm.registry import PRUNERS

from backbones import build

X = torch.randn(1, 3, 64, 64)
# small configs of classes in the README's sweep table (the ones that prune and have MACs)
BACKBONES = {
    'ResNet-18': ('mmdet', dict(type='ResNet', depth=18)),
    'CSPDarknet': ('mmdet', dict(type='CSPDarknet', deepen_factor=0.33, widen_factor=0.25)),
    'MobileNetV2': ('mmdet', dict(type='MobileNetV2', widen_factor=0.5, out_indices=(2, 4, 6))),
    'RegNet': ('mmdet', dict(type='RegNet', arch='regnetx_400mf', out_indices=(0, 1, 2, 3))),
}


def _cut(before, after, which=0):
    return 1 - count_macs_params(after, X)[which] / before[which]


@pytest.mark.parametrize('name,target,ranking', [
    ('ResNet-18', 0.5, 'uniform'), ('MobileNetV2', 0.5, 'uniform'),
    ('RegNet', 0.5, 'uniform'), ('CSPDarknet', 0.7, 'global'), ('ResNet-18', 0.7, 'global')])
@pytest.mark.slow
def test_macs_target_is_reached_within_2_points(name, target, ranking):
    scope, cfg = BACKBONES[name]
    b = build(scope, cfg)
    before = count_macs_params(b, X)
    pruner = PRUNERS.build(dict(type='L1FilterPruner', target=dict(macs=target), ranking=ranking))
    pruner.prune(b, X)
    cut = _cut(before, b)
    assert abs(cut - target) <= 0.02, (name, cut)
    rep = pruner.report['target']
    assert rep['metric'] == 'macs' and abs(rep['reached'] - cut) < 1e-9  # reports what was measured
    assert 0 < rep['sparsity'] < 1


def test_params_target_and_layer_rule():
    b = build(*BACKBONES['ResNet-18'])
    before = count_macs_params(b, X)
    pruner = L1FilterPruner(target=dict(params=0.6), layer_dependent=True)
    pruner.prune(b, X)
    assert abs(_cut(before, b, 1) - 0.6) <= 0.02
    widths = {g['width']: g['ratio'] for g in pruner.report['groups']}
    assert widths[512] > widths[256] > widths[64]  # the DFBF width rule still shapes the cut


def test_unreachable_target_is_one_line_naming_what_is_reachable():
    b = build(*BACKBONES['ResNet-18'])
    with pytest.raises(ValueError, match=r'^target: macs=0\.9 cannot be reached on ResNet: .* removes '
                                         r'\d+\.\d% of its macs; ask for at most 0\.\d+$') as e:
        L1FilterPruner(target=dict(macs=0.9), min_channels=32).prune(b, X)
    assert '\n' not in str(e.value)
    assert b.layer1[0].conv1.out_channels == 64  # left untouched


@pytest.mark.parametrize('kwargs,match', [
    (dict(target=dict(flops=0.5)), r'^target: .* is not one of dict\(macs=f\)'),
    (dict(target=dict(macs=1.2)), r'^target\.macs: 1\.2 is not a fraction in \(0, 1\)'),
    (dict(ranking='best'), r"^ranking: 'best' is not one of uniform, global"),
    (dict(ranking='global', layer_dependent=True), r'^ranking: .* does not combine'),
    (dict(max_ratio=0), r'^max_ratio: 0 is not a fraction in \(0, 1\]')])
def test_bad_arguments_are_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match):
        L1FilterPruner(**kwargs)


def test_global_ranking_cuts_where_the_group_norm_is_low():
    """Global ranking at sparsity s removes the s fraction of all prunable channels, more in the
    layer whose filters were made small, capped at max_ratio; its scores are Torch-Pruning's."""
    b = build(*BACKBONES['ResNet-18'])
    with torch.no_grad():  # layer2.0's inner channels: half of them made tiny
        b.layer2[0].conv1.weight[:64] *= 1e-3
        b.layer2[0].bn1.weight[:64] *= 1e-3
    trace = trace_channel_groups(b, X)
    g = next(g for g in trace.prunable if g.root_name == 'layer2.0.conv1')
    ref = tp.importance.GroupMagnitudeImportance(p=1, group_reduction='mean', normalizer='mean')(g.group)
    assert torch.allclose(group_scores(g, 1), ref)
    pruner = L1FilterPruner(sparsity=0.3, ranking='global', max_ratio=0.4)
    pruner.prune(b, X)
    groups = {r['root']: r for r in pruner.report['groups']}
    removed = sum(r['width'] - r['keep'] for r in groups.values())
    assert abs(removed - 0.3 * sum(r['width'] for r in groups.values())) <= len(groups)
    assert groups['layer2.0.conv1']['ratio'] == 51 / 128  # capped at floor(0.4 * 128), the rest elsewhere
    assert max(r['ratio'] for r in groups.values()) <= 0.4 + 1e-9
    assert b.layer2[0].conv1.out_channels == groups['layer2.0.conv1']['keep'] == 128 - 51
    assert int((b.layer2[0].bn1.weight.abs() < 1e-2).sum()) == 64 - 51  # the tiny ones went first


def test_global_ratios_and_solve():
    scores = [torch.tensor([1., 2., 3., 4.]), torch.tensor([.5, 5., 6., 7.])]
    assert global_ratios(scores, [1, 1], 0.25, 1.0) == [0.25, 0.25]  # 0.5 and 1.0 go
    assert global_ratios(scores, [1, 1], 0.75, 0.5) == [0.5, 0.5]
    theta, c = solve(lambda t: round(t * 10) / 10, 0.34)
    assert c == pytest.approx(0.3) and theta < 0.35


def test_groups_table_and_plot(tmp_path):
    b = build(*BACKBONES['ResNet-18'])
    pruner = L1FilterPruner(target=dict(macs=0.5))
    pruner.prune(b, X)
    text = groups_table(pruner.report)
    assert text.startswith('target: macs -50.0%, reached -')
    assert '| layer1.0.conv1 | 64 | ' in text and text.count('\n| layer') == 8
    png = plot_groups(pruner.report, str(tmp_path / 'g.png'))
    assert osp.getsize(png) > 1000


def test_prune_tool_target_flag_and_files(tmp_path):
    from tools import prune
    args = prune.parse_args(['c.py', 'w.pth', '--target-macs', '0.5', '--pruner-cfg', 'ranking=global',
                             '--out', str(tmp_path)])
    from mmengine.config import Config
    cfg = prune.pruner_config(Config(dict()), args)
    assert cfg['target'] == dict(macs=0.5) and cfg['ranking'] == 'global'
    args = prune.parse_args(['c.py', 'w.pth', '--target-macs', '0.5', '--target-params', '0.5', '--out', 'x'])
    with pytest.raises(ValueError, match='^--target-\\*: give one of'):
        prune.pruner_config(Config(dict()), args)


@pytest.mark.parametrize('name', ['ResNet-18', 'MobileNetV2', 'RegNet'])
@pytest.mark.parametrize('norm', [1, 2])
def test_filter_scores_are_torch_prunings_magnitude_with_the_hand_written_numbers(name, norm):
    """Uniform L1 ranks a group's channels by the Lp norm of its root filters; the scores come
    from Torch-Pruning's GroupMagnitudeImportance and equal the hand-written norm they replaced."""
    from dfbf_mm.pruning.importance import _OUT_FNS as OUT_FNS, filter_scores
    trace = trace_channel_groups(build(*BACKBONES[name]), X)
    assert len(trace.prunable) > 3
    depthwise = 0
    for g in trace.prunable:
        hand = g.root.weight.detach().flatten(1).float().norm(p=norm, dim=1)
        tp_first = tp.importance.GroupMagnitudeImportance(p=norm, group_reduction='first', normalizer=None)(g.group)
        got = filter_scores(g, norm)
        assert got.shape == (g.width,)
        assert torch.allclose(got, hand, rtol=1e-5, atol=0), g.root_name
        if g.group[0].dep.handler in OUT_FNS:
            assert torch.allclose(got.pow(norm), tp_first, rtol=1e-5), g.root_name
        else:  # a depthwise root: Torch-Pruning scores the layers behind it, not its filters
            depthwise += 1
    assert depthwise < len(trace.prunable)


def test_cost_model_links_layers_the_same_way_whatever_the_allocations():
    """The MACs estimate links each activation to the layer that made its input, by tensor id.
    A freed output's id can be reused by a later tensor; before outputs were kept alive the links
    (and the channels a MACs target picks) changed with the allocation state: 12 different maps
    in these 30 calls, now one."""
    import random
    from dfbf_mm.cost import CostModel, _counter_types, _leaves
    b = build(*BACKBONES['CSPDarknet'])
    leaves = _leaves(b, _counter_types(b))
    maps = set()
    for i in range(30):
        junk = [torch.zeros(1) for _ in range(random.Random(i).randint(0, 50))]  # noqa: F841
        links = CostModel._producers(b, leaves, X)
        maps.add(tuple(sorted((id(k), id(v)) for k, v in links.items())))
    assert len(maps) == 1
