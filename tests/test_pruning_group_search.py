"""The bounded group search: channel shuffles (ShuffleNet) prune or are refused fast, a run-away
search ends in one line at ``trace_time_limit``, and the search equals Torch-Pruning's."""
import copy
import time

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp

from dfbf_mm.pruning import L1FilterPruner
from dfbf_mm.pruning.channel_groups import SentinelWrapper
from dfbf_mm.pruning.group_search import BoundedDependencyGraph, Deadline, TraceTimeLimitError
from dfbf_mm.registry import MODELS

from backbones import build, outs  # tests/backbones.py




def zeroed_stock_equals_pruned(stock, pruned, x):
    """The pruned model computes what the stock one does with the removed input channels of
    every (non-grouped) conv/linear set to zero: channels were removed consistently. Needs
    float64 weights drawn so that no two kernels are equal."""
    old, new = dict(stock.named_modules()), dict(pruned.named_modules())
    for name, m in new.items():
        if not isinstance(m, (nn.Conv2d, nn.Linear)) or getattr(m, 'groups', 1) > 1 or \
                m.weight.shape[1] == old[name].weight.shape[1]:
            continue
        w_old, kept = old[name].weight.data, []
        for j in range(m.weight.shape[1]):  # which stock input channel column j of the pruned one is
            ref = m.weight.data[0, j]
            hits = {c for r, c in (w_old == ref.reshape(-1)[0]).nonzero()[:, :2].tolist()
                    if torch.equal(w_old[r, c], ref)}
            assert len(hits) == 1, name
            kept.append(hits.pop())
        off = torch.ones(w_old.shape[1], dtype=torch.bool)
        off[kept] = False
        w_old[:, off] = 0
    return all(torch.allclose(a, b, rtol=1e-9, atol=1e-9) for a, b in zip(outs(stock, x), outs(pruned, x)))


def random_double(m):
    m.double()
    torch.manual_seed(1)
    for mod in m.modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            mod.weight.data.normal_(0, 0.1)
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-1, 1)
            mod.running_var.uniform_(0.5, 2)
    return m


def traced(backbone, x, graph_cls=BoundedDependencyGraph):
    wrapper = SentinelWrapper(backbone, outs(backbone, x), x.shape[1])
    with torch.enable_grad():
        return graph_cls().build_dependency(
            wrapper, example_inputs=[x.clone().requires_grad_(True)], verbose=False), wrapper


SHUFFLENET_V2 = {
    'mmpretrain': dict(type='ShuffleNetV2', widen_factor=0.5, out_indices=(0, 1, 2, 3)),
    'mmpose': dict(type='ShuffleNetV2', widen_factor=0.5, out_indices=(0, 1, 2, 3)),
}


@pytest.mark.slow
@pytest.mark.parametrize('scope', list(SHUFFLENET_V2))
def test_shufflenet_v2_prunes_fast_and_round_trips(scope):
    cfg = SHUFFLENET_V2[scope]
    backbone = build(scope, cfg)
    x = torch.randn(2, 3, 64, 64)
    ref = outs(backbone, x)
    n0 = sum(p.numel() for p in backbone.parameters())
    pruner = L1FilterPruner(sparsity=0.5, trace_time_limit=30)
    start = time.perf_counter()
    spec = pruner.prune(backbone, x)
    assert time.perf_counter() - start < 30  # was > 150 s (Torch-Pruning's search ran away)
    assert sum(p.numel() for p in backbone.parameters()) < 0.9 * n0
    got = outs(backbone, x)
    assert [o.shape for o in got] == [o.shape for o in ref]
    # the shuffled stream is kept: every block still outputs its stock width
    modules = dict(backbone.named_modules())
    fresh_modules = dict(build(scope, cfg).named_modules())
    for name, m in modules.items():
        if name.endswith('branch2.2.conv') or name.endswith('branch1.1.conv'):
            assert m.out_channels == fresh_modules[name].out_channels, name
    assert any(name.endswith('branch2.0.conv') for name in spec['modules'])
    assert any('channel shuffle' in r for _, r in pruner.report['skipped'])
    # PrunedBackbone rebuilds it from the spec; the pruned state dict loads strictly
    rebuilt = MODELS.build(dict(type='PrunedBackbone', backbone=copy.deepcopy(cfg), channel_spec=spec))
    rebuilt.load_state_dict(backbone.state_dict(), strict=True)
    for a, b in zip(outs(rebuilt, x), got):
        assert torch.equal(a, b)


LITEHRNET_SMALL = dict(type='LiteHRNet', extra=dict(
    stem=dict(stem_channels=16, out_channels=16, expand_ratio=1),
    num_stages=2, stages_spec=dict(num_modules=(1, 1), num_branches=(2, 3), num_blocks=(1, 1),
                                   module_type=('LITE', 'NAIVE'), with_fuse=(True, True), reduce_ratios=(4, 4),
                                   num_channels=((16, 32), (16, 32, 64))), with_head=True))


@pytest.mark.parametrize('scope,cfg,size', [('mmpretrain', SHUFFLENET_V2['mmpretrain'], 64),
                                            ('mmpose', SHUFFLENET_V2['mmpose'], 64), ('mmpose', LITEHRNET_SMALL, 32)])
@pytest.mark.slow
def test_channels_are_removed_consistently_through_chunks_and_shuffles(scope, cfg, size):
    torch.set_default_dtype(torch.float64)  # (float64 convs are slow on CPU: small inputs)
    try:
        stock = random_double(build(scope, cfg))
        pruned = copy.deepcopy(stock)
        x = torch.randn(1, 3, size, size)
        spec = L1FilterPruner(sparsity=0.5, trace_time_limit=30).prune(pruned, x)
        assert spec['modules']
        assert zeroed_stock_equals_pruned(stock, pruned, x)
    finally:
        torch.set_default_dtype(torch.float32)


def test_split_whose_outputs_torch_pruning_lists_out_of_order_is_not_pruned():
    class TwoHalves(nn.Module):  # Torch-Pruning lists the chunks' consumers as (b, a): halves swapped
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3, padding=1)
            self.a = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1))
            self.b = nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x):
            x1, x2 = self.stem(x).chunk(2, dim=1)
            return torch.cat([self.a(x1), self.b(x2)], dim=1)

    torch.set_default_dtype(torch.float64)
    try:
        stock = random_double(TwoHalves().eval())
        pruned = copy.deepcopy(stock)
        x = torch.randn(2, 3, 8, 8)
        pruner = L1FilterPruner(sparsity=0.5)
        spec = pruner.prune(pruned, x)
        assert sorted(spec['modules']) == ['a.0', 'a.2']
        assert ('stem', 'passes a Split op Torch-Pruning cannot map') in pruner.report['skipped']
        assert zeroed_stock_equals_pruned(stock, pruned, x)
    finally:
        torch.set_default_dtype(torch.float32)


class _ShuffleAfter(nn.Module):
    """A channel shuffle (G=3) the pruner must not cross: its input is a concat of two convs
    (each group holds part of the shuffled channels), or its output is also a residual."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.a, self.b = nn.Conv2d(3, 6, 1), nn.Conv2d(3, 6, 1)
        self.c = nn.Conv2d(12 if kind == 'concat' else 6, 12 if kind == 'concat' else 6, 1)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], 1) if self.kind == 'concat' else self.a(x)
        n, c, h, w = y.shape
        z = y.view(n, 3, c // 3, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        return self.c(z) + (z if self.kind == 'residual' else 0)


@pytest.mark.parametrize('kind', ['concat', 'residual'])
def test_shuffle_that_cannot_be_crossed_is_refused_in_one_line(kind):
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r'^backbone: _ShuffleAfter has no prunable channel group; '
                                         r'.*passes a channel shuffle') as e:
        L1FilterPruner(sparsity=0.5, trace_time_limit=30).prune(_ShuffleAfter(kind).eval(), torch.randn(1, 3, 8, 8))
    assert '\n' not in str(e.value) and time.perf_counter() - start < 30


def test_run_away_search_stops_at_the_time_limit():
    # Without barriers, Torch-Pruning's walk around ShuffleNetV2's chunk/concat/shuffle loops
    # does not finish in minutes; the deadline must end it.
    backbone = build('mmpretrain', dict(type='ShuffleNetV2', widen_factor=0.5))
    graph, wrapper = traced(backbone, torch.randn(1, 3, 64, 64))
    names = {m: n for n, m in wrapper.named_modules()}
    graph.deadline = Deadline(0.5, 'ShuffleNetV2')  # started after tracing: the search alone is timed
    start = time.perf_counter()
    with pytest.raises(TraceTimeLimitError, match=r'^backbone: ShuffleNetV2: the Torch-Pruning dependency '
                                                  r'search exceeded trace_time_limit=0.5 s \(in the group rooted at '):
        list(graph.get_all_groups(ignored_layers=list(wrapper.sentinels), root_module_types=(nn.Conv2d,),
                                  names=names))
    assert time.perf_counter() - start < 10


def test_time_limit_is_a_one_line_error_and_backbone_untouched():
    backbone = build('mmpretrain', dict(type='ResNet_CIFAR', depth=18))
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    with pytest.raises(ValueError, match=r'^backbone: ResNet_CIFAR: the Torch-Pruning dependency search '
                                         r'exceeded trace_time_limit=1e-06 s') as e:
        L1FilterPruner(sparsity=0.5, trace_time_limit=1e-6).prune(backbone, torch.randn(1, 3, 32, 32))
    assert '\n' not in str(e.value)
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())
    # unbounded works, and so does the default
    assert L1FilterPruner(sparsity=0.5, trace_time_limit=None).trace_time_limit is None
    assert L1FilterPruner().trace_time_limit == 60


@pytest.mark.parametrize('bad', [0, -1, 'x', True])
def test_bad_trace_time_limit(bad):
    with pytest.raises(ValueError, match=r'^trace_time_limit: '):
        L1FilterPruner(trace_time_limit=bad)


@pytest.mark.parametrize('scope,cfg', [
    ('mmdet', dict(type='ResNet', depth=18)),
    ('mmdet', dict(type='CSPDarknet', deepen_factor=0.33, widen_factor=0.25)),
])
def test_search_without_barriers_equals_torch_pruning(scope, cfg):
    backbone, x, types = build(scope, cfg), torch.randn(1, 3, 64, 64), (nn.Conv2d, nn.Linear)

    def groups(graph_cls):
        graph, wrapper = traced(backbone, x, graph_cls=graph_cls)
        names = {m: n for n, m in wrapper.named_modules()}
        return [[(names.get(it.dep.target.module, type(it.dep.target.module).__name__), it.dep.handler.__name__,
                  it.idxs, it.root_idxs) for it in g]
                for g in graph.get_all_groups(ignored_layers=list(wrapper.sentinels), root_module_types=types)]

    ours, theirs = groups(BoundedDependencyGraph), groups(tp.DependencyGraph)
    assert len(ours) == len(theirs) > 10
    assert ours == theirs
