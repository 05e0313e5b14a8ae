"""ShuffleNetV1: the channels in front of each channel shuffle are pruned with the ones behind
it (dfbf_mm/pruning/shuffle.py), and the pruned network computes what the stock one does with
those channels removed."""
import copy

import pytest
import torch
import torch.nn as nn

from dfbf_mm.export.profile import count_macs_params
from dfbf_mm.pruning import L1FilterPruner, trace_channel_groups
from dfbf_mm.registry import MODELS

from backbones import build, outs  # tests/backbones.py

V1 = [('mmpretrain', dict(type='ShuffleNetV1', widen_factor=0.5)),             # groups=3
      ('mmpose', dict(type='ShuffleNetV1', widen_factor=0.5)),
      ('mmpretrain', dict(type='ShuffleNetV1', groups=2, widen_factor=0.5)),
      ('mmpretrain', dict(type='ShuffleNetV1', groups=1, widen_factor=0.5)),  # no shuffle at all
      ('mmpretrain', dict(type='ShuffleNetV1', groups=4, widen_factor=1.0))]  # (0.5: widths not divisible by 4)


@pytest.fixture(autouse=True)
def _one_thread():
    """Small grouped convs run 20x slower on two threads of a busy 2-core machine than on one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_double(m):
    """float64, every conv / BN value random and distinct (BN weights identify kept channels)."""
    m.double()
    torch.manual_seed(1)
    for mod in m.modules():
        if isinstance(mod, nn.Conv2d):
            mod.weight.data.normal_(0, 0.2)
        if isinstance(mod, nn.BatchNorm2d):
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.normal_(0, 0.1)
            mod.running_mean.uniform_(-1, 1)
            mod.running_var.uniform_(0.5, 2)
    return m


def bn_zeroed_stock_equals_pruned(stock, pruned, x):
    """Zero, in the stock model, every channel a BN of the pruned one lost (BN weight and bias 0:
    the channel is 0 from there on); the outputs must then be equal. Which stock channels a
    pruned BN kept is read from its (distinct) weights. Every removed channel of ShuffleNetV1
    passes a BN before the next conv, so a channel removed on one side of a shuffle but not
    at the matching position on the other changes the output."""
    stock = copy.deepcopy(stock)
    old = dict(stock.named_modules())
    lost = 0
    for name, m in pruned.named_modules():
        if not isinstance(m, nn.BatchNorm2d) or m.num_features == old[name].num_features:
            continue
        w_old = old[name].weight.data
        kept = [int((w_old == v).nonzero().flatten()[0]) for v in m.weight.data]
        assert len(set(kept)) == len(kept) == m.num_features, name
        assert torch.equal(old[name].running_mean[kept], m.running_mean), name  # same channels
        off = torch.ones(len(w_old), dtype=torch.bool)
        off[kept] = False
        old[name].weight.data[off] = 0
        old[name].bias.data[off] = 0
        lost += int(off.sum())
    assert lost
    return all(torch.allclose(a, b, rtol=1e-9, atol=1e-9) for a, b in zip(outs(stock, x), outs(pruned, x)))


@pytest.mark.slow
@pytest.mark.parametrize('scope,cfg', V1, ids=[f'{s}-g{c.get("groups", 3)}' for s, c in V1])
def test_shufflenet_v1_prunes_through_the_shuffle(scope, cfg):
    torch.set_default_dtype(torch.float64)  # (float64 grouped convs are slow on CPU: a small input)
    try:
        stock = random_double(build(scope, cfg))
        pruned = copy.deepcopy(stock)
        x = torch.randn(1, 3, 32, 32)
        n0 = sum(p.numel() for p in stock.parameters())
        pruner = L1FilterPruner(sparsity=0.5, trace_time_limit=30)
        spec = pruner.prune(pruned, x)
        assert sum(p.numel() for p in pruned.parameters()) < 0.9 * n0
        assert [o.shape for o in outs(pruned, x)] == [o.shape for o in outs(stock, x)]
        assert not any('channel shuffle' in r for _, r in pruner.report['skipped'])
        # every expand conv (behind the shuffle) lost inputs, the same count per conv group
        for name, m in pruned.named_modules():
            if name.endswith('g_conv_1x1_expand.conv'):
                assert m.in_channels < dict(stock.named_modules())[name].in_channels, name
        assert bn_zeroed_stock_equals_pruned(stock, pruned, x)
        # the deploy path: PrunedBackbone rebuilds it from the spec, the state dict loads strictly
        rebuilt = MODELS.build(dict(type='PrunedBackbone', backbone=copy.deepcopy(cfg), channel_spec=spec))
        rebuilt.double().load_state_dict(pruned.state_dict(), strict=True)
        for a, b in zip(outs(rebuilt, x), outs(pruned, x)):
            assert torch.equal(a, b)
    finally:
        torch.set_default_dtype(torch.float32)


def test_indices_follow_the_shuffle_and_balance_the_grouped_convs():
    backbone = build('mmpretrain', dict(type='ShuffleNetV1', widen_factor=0.5))  # groups=3
    trace = trace_channel_groups(backbone, torch.randn(1, 3, 64, 64))
    coupled = [g for g in trace.prunable if g.shuffle is not None]
    assert len(coupled) == len(trace.prunable) == 16  # one per ShuffleUnit
    g = next(g for g in coupled if g.width == 60)  # layers.1: n = 20, blocks 6 and 13 straddle
    s = g.shuffle
    assert (s.shuffle_groups, s.conv_groups) == (3, 3)
    assert [seg for seg in s.blocks(60)] == [[0, 1, 2, 3, 4, 5], [7, 8, 9, 10, 11, 12],
                                             [14, 15, 16, 17, 18, 19]]
    scores = torch.rand(60)
    pre = s.removed(scores, s.keep(30, 60), 60)
    assert len(pre) == 60 - s.keep(30, 60) == 27  # three steps of 9 (asked: 30)
    per_group = [sorted(p % 20 for p in pre if p // 20 == k) for k in range(3)]
    assert per_group[0] == per_group[1] == per_group[2]  # the same in-group indices in every group
    # where the shuffle really sends those channels
    from mmpretrain.models.utils import channel_shuffle
    moved = channel_shuffle(torch.arange(60.).view(1, 60, 1, 1), 3).flatten().tolist()
    post = s.post_indices(pre, 60)
    assert sorted(moved.index(p) for p in pre) == post
    assert [sum(p // 20 == k for p in post) for k in range(3)] == [9, 9, 9]  # each conv group loses 9


def test_shufflenet_v1_macs_target():
    x = torch.randn(1, 3, 64, 64)
    stock = build('mmpretrain', dict(type='ShuffleNetV1', widen_factor=0.5))
    macs0 = count_macs_params(stock, x)[0]
    b = copy.deepcopy(stock)
    pruner = L1FilterPruner(target=dict(macs=0.5), trace_time_limit=30)
    pruner.prune(b, x)
    cut = 1 - count_macs_params(b, x)[0] / macs0
    assert abs(cut - 0.5) <= 0.02, cut
    assert abs(pruner.report['target']['reached'] - cut) < 1e-6


def test_shufflenet_v1_global_ranking():
    x = torch.randn(1, 3, 64, 64)
    stock = build('mmpretrain', dict(type='ShuffleNetV1', widen_factor=0.5))
    g = copy.deepcopy(stock)
    pruner = L1FilterPruner(sparsity=0.4, ranking='global', trace_time_limit=30)
    pruner.prune(g, x)
    assert sum(p.numel() for p in g.parameters()) < 0.9 * sum(p.numel() for p in stock.parameters())
    assert [o.shape for o in outs(g, x)] == [o.shape for o in outs(stock, x)]
    assert len({grp['keep'] for grp in pruner.report['groups']}) > 2  # not one ratio for all
