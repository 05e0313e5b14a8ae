"""Pruning: real channel removal with kept output widths on the mission's backbones, the
kept-count rule, the channel spec round trip and the one-line errors."""
import copy
import re

import pytest
import torch
import torch.nn as nn

from dfbf_mm.pruning import (L1FilterPruner, apply_channel_spec, kept_channels,
                             layer_dependent_ratio)
from dfbf_mm.registry import PRUNERS

from backbones import build, outs  # tests/backbones.py




def nparams(m):
    return sum(p.numel() for p in m.parameters())


# The backbones of the mission's configs (smaller depth where the construct is the same).
CASES = {
    'mmdet-CSPDarknet-yolox-s': ('mmdet', dict(type='CSPDarknet', deepen_factor=0.33, widen_factor=0.5), 64),
    'mmdet-ResNet-50': ('mmdet', dict(type='ResNet', depth=50, out_indices=(0, 1, 2, 3), frozen_stages=1), 64),
    'mmpose-HRNet-w32-1block': ('mmpose', dict(type='HRNet', extra=dict(
        stage1=dict(num_modules=1, num_branches=1, block='BOTTLENECK', num_blocks=(1,), num_channels=(64,)),
        stage2=dict(num_modules=1, num_branches=2, block='BASIC', num_blocks=(1, 1), num_channels=(32, 64)),
        stage3=dict(num_modules=1, num_branches=3, block='BASIC', num_blocks=(1, 1, 1), num_channels=(32, 64, 128)),
        stage4=dict(num_modules=1, num_branches=4, block='BASIC', num_blocks=(1, 1, 1, 1),
                    num_channels=(32, 64, 128, 256)))), 64),
    'mmpose-ResNet-18': ('mmpose', dict(type='ResNet', depth=18), 64),
    'mmpretrain-ResNet_CIFAR-18': ('mmpretrain', dict(type='ResNet_CIFAR', depth=18, out_indices=(3,)), 32),
    'mmpretrain-VGG-11bn': ('mmpretrain', dict(type='VGG', depth=11, norm_cfg=dict(type='BN'), out_indices=(4,)), 32),
}


@pytest.mark.slow
@pytest.mark.parametrize('case', list(CASES))
def test_real_removal_keeps_outputs_and_spec_round_trips(case):
    scope, cfg, size = CASES[case]
    backbone = build(scope, cfg)
    x = torch.randn(2, 3, size, size)
    ref = outs(backbone, x)
    n0 = nparams(backbone)
    spec = L1FilterPruner(sparsity=0.5).prune(backbone, x)
    assert spec['modules'], 'nothing was pruned'
    assert nparams(backbone) < n0
    for name, entry in spec['modules'].items():  # tensors really are smaller
        for t, shape in entry['shapes'].items():
            assert list(getattr(dict(backbone.named_modules())[name], t).shape) == shape
            assert shape != entry['original_shapes'][t]
    got = outs(backbone, x)
    assert [o.shape for o in got] == [o.shape for o in ref]
    # A fresh stock backbone shrunk by the spec takes the pruned state dict strictly.
    fresh = apply_channel_spec(build(scope, cfg), spec)
    fresh.load_state_dict(backbone.state_dict(), strict=True)
    for a, b in zip(outs(fresh, x), got):
        assert torch.equal(a, b)


def test_resnet_keeps_residual_streams_and_prunes_inside_blocks():
    backbone = build('mmdet', dict(type='ResNet', depth=18))
    spec = L1FilterPruner(sparsity=0.5).prune(backbone, torch.randn(1, 3, 64, 64))
    changed = set(spec['modules'])
    assert 'layer1.0.conv1' in changed and 'layer4.1.bn1' in changed
    assert not any(n.endswith('bn2') or 'downsample' in n for n in changed)
    modules = dict(backbone.named_modules())
    assert all(modules[f'layer{i}.{j}.conv2'].out_channels == 64 * 2 ** (i - 1)
               for i in range(1, 5) for j in range(2))


def test_sparsity_zero_gives_identical_outputs():
    backbone = build('mmpretrain', dict(type='ResNet_CIFAR', depth=18))
    x = torch.randn(2, 3, 32, 32)
    ref = outs(backbone, x)
    spec = L1FilterPruner(sparsity=0.0).prune(backbone, x)
    assert spec['modules'] == {}
    assert all(torch.equal(a, b) for a, b in zip(outs(backbone, x), ref))


@pytest.mark.parametrize('width,ratio,minc,round_to,keep', [
    (64, 0.5, 1, None, 32), (10, 0.3, 1, None, 7), (64, 0.2, 1, None, 52), (64, 0.2, 1, 8, 56),
    (5, 0.99, 1, None, 1), (5, 1.3, 1, None, 1), (64, 0.9, 16, None, 16), (12, 0.5, 1, 8, 8),
    (6, 0.1, 1, 8, 6), (64, 0.0, 1, 8, 64)])
def test_kept_channels_rule(width, ratio, minc, round_to, keep):
    assert kept_channels(width, ratio, minc, round_to) == keep


def test_layer_dependent_counts_follow_the_rule_exactly():
    backbone = build('mmdet', dict(type='ResNet', depth=18))
    s = 0.4
    pruner = PRUNERS.build(dict(type='L1FilterPruner', sparsity=s, layer_dependent=True, round_to=8,
                                min_channels=4, overrides={'layer1.0.*': 0.75}))
    spec = pruner.prune(backbone, torch.randn(1, 3, 64, 64))
    modules = dict(backbone.named_modules())
    widths = set()
    for g in pruner.report['groups']:
        ratio = 0.75 if g['root'].startswith('layer1.0.') else layer_dependent_ratio(s, g['width'])
        expect = kept_channels(g['width'], ratio, 4, 8)
        assert g['keep'] == expect
        assert modules[g['root']].out_channels == expect  # the real tensor width
        widths.add(g['width'])
    assert widths >= {64, 128, 256, 512}  # all three branches of the rule were exercised
    assert modules['layer1.0.conv1'].out_channels == 16  # 64 - floor(0.75*64)
    assert spec['modules']['layer4.0.conv1']['shapes']['weight'][0] == kept_channels(512, 1.3 * s, 4, 8)


def test_grouped_conv_is_pruned_uniformly_per_conv_group():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 16, 3)
            self.g = nn.Conv2d(16, 16, 3, groups=4)
            self.b = nn.Conv2d(16, 8, 1)

        def forward(self, x):
            return self.b(torch.relu(self.g(torch.relu(self.a(x)))))

    torch.manual_seed(0)
    net = Tiny().eval()
    x = torch.randn(1, 3, 16, 16)
    shape = net(x).shape
    L1FilterPruner(sparsity=0.3).prune(net, x)
    assert net.a.out_channels == net.g.in_channels == 12 and net.g.groups == 4  # 16 - 4 (multiple of 4)
    assert net.g.out_channels == 12 and net(x).shape == shape


def test_depthwise_conv_follows_its_producer():
    backbone = build('mmpretrain', dict(type='MobileNetV2', widen_factor=0.5))
    x = torch.randn(1, 3, 32, 32)
    ref = [o.shape for o in outs(backbone, x)]
    spec = L1FilterPruner(sparsity=0.5).prune(backbone, x)
    dw = dict(backbone.named_modules())['layer2.0.conv.1.conv']
    assert dw.groups == dw.in_channels == dw.out_channels < 48
    assert 'layer2.0.conv.1.conv' in spec['modules']
    assert [o.shape for o in outs(backbone, x)] == ref


def test_unhandled_construct_is_refused_in_one_line_and_backbone_untouched():
    class Scaled(nn.Module):  # a channel-sized buffer Torch-Pruning cannot see
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 16, 3)
            self.c2 = nn.Conv2d(16, 8, 3)
            self.register_buffer('scale', torch.ones(1, 16, 1, 1))

        def forward(self, x):
            return self.c2(self.c1(x) * self.scale)

    net = Scaled().eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match=r"^backbone: Scaled cannot be pruned: .*rooted at c1") as e:
        L1FilterPruner(sparsity=0.5).prune(net, torch.randn(1, 3, 12, 12))
    assert '\n' not in str(e.value)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


@pytest.mark.parametrize('kwargs,msg', [
    (dict(sparsity=1.2), r'^sparsity: 1.2 is outside \[0, 1\)$'),
    (dict(sparsity=-0.1), r'^sparsity: -0.1 is outside'),
    (dict(norm=3), r'^norm: '),
    (dict(min_channels=0), r'^min_channels: '),
    (dict(overrides={'layer1.*': 1.5}), r"^overrides\['layer1.\*'\]: 1.5 is outside"),
])
def test_bad_pruner_arguments(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        L1FilterPruner(**kwargs)


def test_patterns_matching_nothing_and_too_small_input():
    backbone = build('mmpretrain', dict(type='VGG', depth=11, out_indices=(4,)))
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"^overrides: pattern 'nothing\.\*' matches no module"):
        L1FilterPruner(sparsity=0.5, overrides={'nothing.*': 0.2}).prune(backbone, x)
    with pytest.raises(ValueError, match='^' + re.escape(r"overrides: pattern 're:features\.11\.conv' matches only")):
        # features.11.conv is the last conv of VGG-11: its channels leave the backbone
        L1FilterPruner(sparsity=0.5, overrides={r're:features\.11\.conv': 0.2}).prune(backbone, x)
    with pytest.raises(ValueError, match=r"^ignore: pattern 'zzz' matches no module"):
        L1FilterPruner(sparsity=0.5, ignore=['zzz']).prune(backbone, x)
    with pytest.raises(ValueError, match=r'^example_inputs: VGG cannot run on an input of shape \(1, 3, 16, 16\)'):
        L1FilterPruner(sparsity=0.5).prune(backbone, torch.randn(1, 3, 16, 16))
    # ignore keeps every shape of the named module
    spec = L1FilterPruner(sparsity=0.5, ignore=['features.0.conv']).prune(backbone, x)
    assert 'features.0.conv' not in spec['modules'] and spec['modules']['features.2.conv']['attrs']['in_channels'] == 64


def test_spec_that_does_not_fit_is_refused():
    a = build('mmpretrain', dict(type='ResNet_CIFAR', depth=18))
    spec = L1FilterPruner(sparsity=0.5).prune(a, torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r'^channel_spec: made for a ResNet_CIFAR backbone, not VGG$'):
        apply_channel_spec(build('mmpretrain', dict(type='VGG', depth=11)), spec)
    wider = build('mmpretrain', dict(type='ResNet_CIFAR', depth=18, base_channels=32))
    with pytest.raises(ValueError, match=r'^channel_spec: .* is \[32, .*a spec of another architecture'):
        apply_channel_spec(wider, spec)
    bad = copy.deepcopy(spec)
    bad['modules']['layer9.conv'] = bad['modules'].pop(next(iter(bad['modules'])))
    with pytest.raises(ValueError, match=r"^channel_spec: module 'layer9.conv' does not exist"):
        apply_channel_spec(build('mmpretrain', dict(type='ResNet_CIFAR', depth=18)), bad)
    with pytest.raises(ValueError, match=r'^channel_spec: not a dfbf_mm.channel_spec/v1 dict'):
        apply_channel_spec(a, {'modules': {}})


def test_a_group_that_breaks_the_forward_is_kept_whole():
    """A channel count the graph does not show (a buffer multiplied in, as DetectoRS's
    weight-standardised conv1 or a hard-coded width) breaks the forward once pruned: that group
    is kept whole, with its reason in the report, and the others are pruned."""
    from dfbf_mm.pruning import L1FilterPruner

    class Fragile(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1)
            self.b = nn.Conv2d(8, 8, 3, padding=1)
            self.c = nn.Conv2d(8, 8, 3, padding=1)
            self.d = nn.Conv2d(8, 16, 1)
            self.register_buffer('scale', torch.ones(1, 8, 1, 1))  # Torch-Pruning cannot see it

        def forward(self, x):
            y = self.a(x).relu() * self.scale
            return self.d(self.c(self.b(y).relu()).relu())

    net = Fragile()
    x = torch.randn(1, 3, 8, 8)
    pruner = L1FilterPruner(sparsity=0.5)
    spec = pruner.prune(net, x)
    assert net.a.out_channels == 8 and net.b.out_channels == 4 and net.c.out_channels == 4
    assert net(x).shape == (1, 16, 8, 8) and 'a' not in spec['modules']
    assert any(root == 'a' and 'breaks the forward' in why for root, why in pruner.report['skipped'])
