"""Paoding pruner: interval soundness, saliency guard, exact merges, removal, determinism, errors."""
import copy

import pytest
import torch
import torch.nn as nn

import dfbf_mm.pruning.paoding  # noqa: F401  (registers PaodingPruner)
from dfbf_mm.pruning.paoding.chain import find_dense_chains, trace_leaves
from dfbf_mm.pruning.paoding.impact import metric_ent, metric_l
from dfbf_mm.pruning.paoding.merge import merge_units
from dfbf_mm.pruning.paoding.saliency import bias_term, disjoint_pairs, saliency_matrix
from dfbf_mm.registry import PRUNERS


def mlp(act=nn.ReLU, widths=(16, 24, 20, 12, 5), seed=0):
    torch.manual_seed(seed)
    layers = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(act())
    return nn.Sequential(*layers).eval()


def conv_front_model(seed=0):
    """conv -> BN (negative scales, odd running stats) -> ReLU -> maxpool -> flatten -> dense."""
    torch.manual_seed(seed)
    bn = nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.5, -0.7, 0.3, -2.0]))
        bn.bias.uniform_(-1, 1)
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), bn, nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(4 * 4 * 4, 16), nn.Sigmoid(), nn.Linear(16, 12),
                         nn.ReLU(), nn.Linear(12, 3)).eval()


def build(**kw):
    cfg = dict(type='PaodingPruner', target=0.5, step=0.25, mode='stochastic', seed=42)
    cfg.update(kw)
    return PRUNERS.build(cfg)


def records(pruner, *args, **kw):
    """Prune; the per-step records (prune() itself returns the channel spec)."""
    pruner.prune(*args, **kw)
    return pruner.records


@pytest.mark.parametrize('make,shape,rng', [
    (lambda: mlp(nn.ReLU), (16, ), (0.0, 1.0)),
    (lambda: mlp(nn.Sigmoid), (16, ), (-5.0, 5.0)),
    (conv_front_model, (2, 8, 8), (0.0, 1.0)),
])
def test_intervals_contain_every_activation(make, shape, rng):
    model = make()
    pruner = build(input_range=rng)
    x = torch.zeros(1, *shape)
    steps = trace_leaves(model, x)
    chain = find_dense_chains(steps)[0]
    zs, hs = pruner._chain_boxes(chain, pruner._chain_input_box(steps, chain, x))
    seen = {}
    hooks = [lin.register_forward_hook(lambda m, a, o, k=k: seen.__setitem__(k, o.detach()))
             for k, lin in enumerate(chain.linears)]
    samples = torch.rand(2000, *shape) * (rng[1] - rng[0]) + rng[0]
    samples[:50] = torch.randint(0, 2, (50, *shape)).float() * (rng[1] - rng[0]) + rng[0]  # corners
    model(samples)
    for h in hooks:
        h.remove()
    for k, z in seen.items():
        lo, hi = zs[k]
        assert (z >= lo.float() - 1e-4).all() and (z <= hi.float() + 1e-4).all(), chain.names[k]
        # the box is not vacuous: it is within a few times the observed spread
        assert float((hi - lo).max()) < 1e4


def test_saliency_bias_guard():
    term = bias_term(torch.tensor([0.0, 0.0, 1.0, -1.0], dtype=torch.float64))
    assert term[0, 1] == 0  # both biases 0: no relative difference
    assert torch.isfinite(term).all()
    assert term[2, 3] > 1e3  # opposite biases: finite but ranked last
    torch.manual_seed(0)
    w_in = torch.randn(4, 3)
    w_in[1] = w_in[0]
    s = saliency_matrix(w_in, torch.tensor([0.0, 0.0, 1.0, -1.0]), torch.randn(5, 4))
    off = s[~torch.eye(4, dtype=torch.bool)]
    assert torch.isfinite(off).all() and not torch.isnan(off).any()
    pairs = disjoint_pairs(s, torch.ones(4, dtype=torch.bool))
    assert {pairs[0][0], pairs[0][1]} == {0, 1}  # identical units come first
    assert len({u for p in pairs for u in p[:2]}) == 2 * len(pairs)  # disjoint


@pytest.mark.parametrize('act', [nn.ReLU, nn.Sigmoid])
def test_merge_of_duplicate_units_is_exact(act):
    model = mlp(act)
    with torch.no_grad():
        model[0].weight[3] = model[0].weight[7]
        model[0].bias[3] = model[0].bias[7]
    x = torch.rand(64, 16)
    ref = model(x)
    merge_units(model[0], model[2], removed=3, kept=7)
    assert torch.allclose(model(x), ref, atol=1e-6)
    # a non-duplicate merge does change the function (the test can fail)
    merge_units(model[0], model[2], removed=1, kept=2)
    assert not torch.allclose(model(x), ref, atol=1e-6)


def test_masks_equal_physical_removal_and_shapes():
    model = mlp(nn.ReLU)
    x = torch.rand(32, 16)
    recs = records(build(target=0.5, step=0.25), model, evaluate=lambda m: m(x).detach().clone())
    assert [type(m) for m in model] == [nn.Linear, nn.ReLU] * 3 + [nn.Linear]
    assert (model[0].out_features, model[2].out_features, model[4].out_features) == (12, 10, 6)
    assert (model[2].in_features, model[4].in_features, model[6].in_features) == (12, 10, 6)
    assert recs[-1]['ratio'] == pytest.approx(28 / 56)
    assert torch.allclose(model(x), recs[-1]['metrics'], atol=1e-6)
    assert recs[-1]['widths'] == {'0': 12, '2': 10, '4': 6}
    assert sorted(len(v) for v in recs[-1]['kept'].values()) == [6, 10, 12]


def test_same_seed_same_units():
    a, b = mlp(nn.Sigmoid), mlp(nn.Sigmoid)
    ra = records(build(step=0.1, recursive=True), a)
    rb = records(build(step=0.1, recursive=True), b)
    assert [r['merged'] for r in ra] == [r['merged'] for r in rb]
    assert ra[-1]['kept'] == rb[-1]['kept']
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_baseline_caps_at_half_and_recursive_goes_beyond():
    model = mlp(nn.ReLU)
    recs = records(build(target=0.8, mode='baseline'), model)
    assert len(recs) == 2 and recs[-1]['ratio'] == pytest.approx(0.5)
    model = mlp(nn.ReLU)
    recs = records(build(target=0.75, step=0.25, recursive=True), model)
    assert recs[-1]['ratio'] == pytest.approx((18 + 15 + 9) / 56)
    assert model[0].out_features == 6
    model = mlp(nn.ReLU)
    recs = records(build(target=0.75, step=0.25, mode='impact'), model)  # non-recursive: stops at 50 %
    assert recs[-1]['ratio'] <= 0.5


def test_interval_metrics():
    zero = (torch.zeros(5), torch.zeros(5))
    assert float(metric_l(zero)) == 0 and float(metric_ent(zero)) == 0
    uniform = (torch.full((4, ), -1.0), torch.full((4, ), 1.0))
    assert float(metric_ent(uniform)) == pytest.approx(0.0)  # one cluster: p = 1
    spread = (torch.tensor([0.0, 2.0, 4.0, 6.0]), torch.tensor([1.0, 3.0, 5.0, 7.0]))
    assert float(metric_l(spread)) == 4.0
    assert float(metric_ent(spread)) == pytest.approx(-4 * 0.25 * torch.log(torch.tensor(0.25)).item())


def test_bad_input_errors():
    with pytest.raises(ValueError, match=r'^target: '):
        build(target=1.0)
    with pytest.raises(ValueError, match=r'^target: '):
        build(target=0)
    with pytest.raises(ValueError, match=r'^step: 0.6 is larger than the target 0.5'):
        build(target=0.5, step=0.6)
    gelu = nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match=r"^model: layer '0' -> '2' .*activation found: GELU"):
        build().prune(gelu)
    bn = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match=r'activation found: BatchNorm1d\+ReLU'):
        build().prune(bn)
    with pytest.raises(ValueError, match=r'^layers: '):
        build(layers=['nope*']).prune(mlp())
    with pytest.raises(ValueError, match=r'^example_input: '):
        build().prune(conv_front_model())


@pytest.mark.slow
def test_mmpretrain_stacked_head_and_tanh_error():
    from mmengine.registry import DefaultScope
    from mmpretrain.models import ImageClassifier
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('mmpretrain'):  # independent of earlier tests
        model = ImageClassifier(
            backbone=dict(type='LeNet5'), neck=dict(type='GlobalAveragePooling'),
            head=dict(type='StackedLinearClsHead', num_classes=10, in_channels=120,
                      mid_channels=[32, 24])).eval()
    x = torch.rand(8, 1, 32, 32)
    ref = model(x, mode='tensor')
    recs = records(build(target=0.5, step=0.25), model, example_input=x, evaluate=lambda m: m(x, mode='tensor'))
    assert model.head.layers[0].fc.out_features == 16 and model.head.layers[1].fc.out_features == 12
    assert model.head.layers[2].fc.in_features == 12
    assert torch.allclose(model(x, mode='tensor'), recs[-1]['metrics'], atol=1e-6)
    assert ref.shape == model(x, mode='tensor').shape
    from mmpretrain.models.backbones import LeNet5
    with pytest.raises(ValueError, match=r'^model: .*classifier.0.*activation found: Tanh'):
        build().prune(LeNet5(num_classes=10), example_input=torch.rand(2, 1, 32, 32))


def small_cnn(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 16), nn.ReLU(),
                          nn.Linear(16, 4))
    for bn in (model[1], model[4]):
        with torch.no_grad():
            bn.weight.uniform_(-1.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
            bn.running_mean.uniform_(-0.3, 0.3)
            bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_conv_block_extension_fold_merge_intervals_and_removal():
    from dfbf_mm.pruning.paoding.conv_blocks import find_conv_blocks, fold_batchnorm
    model = small_cnn()
    with torch.no_grad():  # channel 2 duplicates channel 5 (filter and BN)
        model[0].weight[2], model[0].bias[2] = model[0].weight[5], model[0].bias[5]
        for t in (model[1].weight, model[1].bias, model[1].running_mean, model[1].running_var):
            t[2] = t[5]
    x = torch.rand(16, 3, 8, 8)
    ref = model(x)
    blocks = find_conv_blocks(trace_leaves(model, x[:1]))
    assert [(b.name, b.bn_name, b.next_name) for b in blocks] == [('0', '1', '3')]
    fold_batchnorm(model, blocks[0])
    assert isinstance(model[1], nn.Identity) and torch.allclose(model(x), ref, atol=1e-5)
    merge_units(model[0], model[3], removed=2, kept=5)
    assert torch.allclose(model(x), ref, atol=1e-5)

    # channel intervals contain every post-ReLU value of conv1
    pruner = build(conv_blocks=True)
    steps = trace_leaves(model, x[:1])
    lo, hi = pruner._conv_channel_box(steps, find_conv_blocks(steps)[0], x[:1])
    h = torch.relu(model[0](torch.rand(500, 3, 8, 8)))
    assert (h.amin((0, 2, 3)) >= lo.float() - 1e-5).all() and (h.amax((0, 2, 3)) <= hi.float() + 1e-5).all()

    model = small_cnn()
    recs = records(build(conv_blocks=True, target=0.5, step=0.25), model, example_input=x[:1],
                   evaluate=lambda m: m(x).detach().clone())
    assert set(recs[-1]['widths']) == {'0', '8'}
    assert model[0].out_channels == 4 and model[3].in_channels == 4 and model[0].weight.shape[0] == 4
    assert model[8].out_features == 8 and model[10].in_features == 8
    assert torch.allclose(model(x), recs[-1]['metrics'], atol=1e-5)


def test_literal_temperature_and_kept_saliency_options_run():
    recs = records(build(step=0.25, temperature='literal', saliency_outgoing='kept'), mlp(nn.Sigmoid))
    assert recs[-1]['ratio'] == pytest.approx(28 / 56)
    pruner = build()
    assert pruner._temperature(0, 0, 10, 0, 20) == pytest.approx(1.01)  # linear: starts near 1
    assert build(temperature='literal')._temperature(0, 0, 10, 20, 20) == pytest.approx(0.01)
    with pytest.raises(ValueError, match=r'^temperature: '):
        build(temperature='cosine')
    with pytest.raises(ValueError, match=r'^saliency_outgoing: '):
        build(saliency_outgoing='both')
