"""LOP building blocks: exact expansion / merge of conv and linear layers, and the SP KD loss.

Tolerance (float32): a layer's outputs agree within ``1e-5 * max(1, max|y|)``; a whole network
within ``1e-4 * max(1, max|y|)`` (errors of many folded layers add up).
"""
import copy
import itertools
import math
import random

import pytest
import torch
import torch.nn as nn

import dfbf_mm  # noqa: F401  (registers types)
from dfbf_mm.distillation.lop import (ExpandedConv2d, ExpandedLinear, SimilarityPreservingLoss,
                                      expand_model, find_expandable, merge_model, merged_copy)
from dfbf_mm.registry import MODELS

LAYER_TOL, NET_TOL = 1e-5, 1e-4


@pytest.fixture(autouse=True, scope='module')
def _one_thread():
    # Tiny tensors: intra-op threads on a shared 2-core machine cost 20x more than they give.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def assert_close(actual, expected, tol=LAYER_TOL):
    scale = max(1.0, expected.abs().max().item())
    err = (actual - expected).abs().max().item()
    assert err <= tol * scale, f'max abs error {err:.3g} > {tol:.0e} * {scale:.3g}'


# kernel x stride x padding x dilation x bias x ratio: the full grid, 216 cases, ~ms each.
GRID = list(itertools.product((1, 3, 5), (1, 2), (0, 1, 2), (1, 2), (True, False), (1, 2, 4)))


@pytest.mark.parametrize('k,stride,pad,dil,bias,ratio', GRID)
def test_conv_expand_merge_exact_and_trainable(k, stride, pad, dil, bias, ratio):
    rng = random.Random(hash((k, stride, pad, dil, bias, ratio)) % 2**31)
    torch.manual_seed(rng.randrange(2**31))
    cin, cout = rng.randint(2, 6), rng.randint(2, 6)
    conv = nn.Conv2d(cin, cout, k, stride, pad, dil, bias=bias)
    x = torch.randn(2, cin, 12, 12)
    exp = ExpandedConv2d(conv, ratio, generator=torch.Generator().manual_seed(1))
    assert exp.w1.shape == (round(ratio * cin), cin, 1, 1)
    assert exp.w2.shape == (round(ratio * cout), round(ratio * cin), k, k)
    assert exp.w3.shape == (cout, round(ratio * cout), 1, 1)
    y = conv(x)
    y_exp = exp(x)
    assert_close(y_exp, y)
    assert_close(exp.forward_sequential(x), y)
    merged = exp.merged()
    assert type(merged) is nn.Conv2d
    assert {n: p.shape for n, p in merged.named_parameters()} == \
        {n: p.shape for n, p in conv.named_parameters()}
    assert_close(merged(x), y)
    # Every factor learns; no row of any factor is dead (what zero padding would cause).
    (y_exp * torch.randn_like(y_exp)).sum().backward()
    for name in ('w1', 'w2', 'w3'):
        grad = getattr(exp, name).grad
        assert grad is not None and (grad.flatten(1).abs().sum(1) > 0).all(), name
    if bias:
        assert exp.bias.grad.abs().sum() > 0


@pytest.mark.parametrize("bias,ratio", list(itertools.product((True, False), (1, 2, 4))))
def test_linear_expand_merge_exact_and_trainable(bias, ratio):
    torch.manual_seed(ratio + 10 * bias)
    lin = nn.Linear(7, 5, bias=bias)
    x = torch.randn(4, 3, 7)
    exp = ExpandedLinear(lin, ratio)
    assert (exp.w1.shape, exp.w2.shape, exp.w3.shape) == ((7 * ratio, 7), (5 * ratio, 7 * ratio),
                                                          (5, 5 * ratio))
    assert (exp.in_features, exp.out_features) == (7, 5)
    assert_close(exp(x), lin(x))
    assert_close(exp.forward_sequential(x), lin(x))
    merged = exp.merged()
    assert type(merged) is nn.Linear and merged.weight.shape == lin.weight.shape
    assert (merged.bias is None) == (not bias)
    assert_close(merged(x), lin(x))
    exp(x).pow(2).sum().backward()
    for name in ('w1', 'w2', 'w3'):
        assert (getattr(exp, name).grad.abs().sum(1) > 0).all(), name


def test_ratio_one_is_identity_initialised():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    exp = ExpandedConv2d(conv, 1)
    assert torch.equal(exp.w1[:, :, 0, 0], torch.eye(3))
    assert torch.equal(exp.w2, conv.weight)
    assert torch.equal(exp.w3[:, :, 0, 0], torch.eye(4))


def test_ratio_above_one_uses_orthonormal_factors_not_zero_padding():
    conv = nn.Conv2d(3, 4, 3)
    exp = ExpandedConv2d(conv, 2, generator=torch.Generator().manual_seed(0))
    q1, q3 = exp.w1[:, :, 0, 0].double(), exp.w3[:, :, 0, 0].double()
    assert torch.allclose(q1.t() @ q1, torch.eye(3, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(q3 @ q3.t(), torch.eye(4, dtype=torch.float64), atol=1e-6)
    assert (exp.w1.abs().sum((1, 2, 3)) > 0).all() and (exp.w2.abs().sum((1, 2, 3)) > 0).all()
    again = ExpandedConv2d(conv, 2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.w1, exp.w1)  # seeded generator -> reproducible expansion


def test_folded_forward_has_the_gradients_of_the_sequential_chain():
    torch.manual_seed(0)
    exp = ExpandedConv2d(nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=2, groups=2), 2)
    x = torch.randn(2, 4, 9, 9)
    grads = []
    for fwd in (exp.forward, exp.forward_sequential):
        exp.zero_grad()
        fwd(x).sin().sum().backward()
        grads.append([p.grad.clone() for p in (exp.w1, exp.w2, exp.w3, exp.bias)])
    for g_fold, g_seq in zip(*grads):
        assert_close(g_fold, g_seq)


def test_merge_is_exact_after_training_steps():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1)
    exp = ExpandedConv2d(conv, 2)
    opt = torch.optim.SGD(exp.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    x = torch.randn(4, 3, 10, 10)
    for _ in range(2):
        opt.zero_grad()
        exp(x).pow(2).mean().backward()
        opt.step()
    y = exp(x).detach()
    assert (y - conv(x)).abs().max() > 1e-3  # the update really changed the function
    assert_close(exp.merged()(x), y)
    lin = ExpandedLinear(nn.Linear(6, 3), 4)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    xl = torch.randn(5, 6)
    lin(xl).pow(2).sum().backward()
    opt.step()
    assert_close(lin.merged()(xl), lin(xl).detach())


@pytest.mark.parametrize('groups,ratio', [(2, 2), (4, 1), (8, 2)])
def test_grouped_and_depthwise_convs_expand_per_group(groups, ratio):
    torch.manual_seed(groups)
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=groups)
    x = torch.randn(2, 8, 7, 7)
    exp = ExpandedConv2d(conv, ratio)
    assert exp.groups == groups and exp.w1.shape == (8 * ratio, 8 // groups, 1, 1)
    assert_close(exp(x), conv(x))
    assert_close(exp.forward_sequential(x), conv(x))
    merged = exp.merged()
    assert merged.groups == groups and merged.weight.shape == conv.weight.shape
    assert_close(merged(x), conv(x))


@pytest.mark.parametrize('padding,mode', [('same', 'zeros'), (1, 'reflect'), (2, 'circular'),
                                          (1, 'replicate')])
def test_padding_modes_and_string_padding_stay_exact(padding, mode):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=padding, padding_mode=mode, dilation=2 if mode != 'zeros' else 1)
    x = torch.randn(2, 3, 8, 8)
    exp = ExpandedConv2d(conv, 2)
    assert_close(exp(x), conv(x))
    assert_close(exp.forward_sequential(x), conv(x))
    merged = exp.merged()
    assert merged.padding_mode == mode and merged.padding == conv.padding
    assert_close(merged(x), conv(x))


def test_attributes_mirror_original_and_merge_keeps_dtype():
    conv = nn.Conv2d(3, 4, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2), dtype=torch.float64)
    exp = ExpandedConv2d(conv, 2)
    for attr in ('in_channels', 'out_channels', 'kernel_size', 'stride', 'padding', 'dilation',
                 'groups', 'padding_mode'):
        assert getattr(exp, attr) == getattr(conv, attr), attr
    assert exp.weight.shape == conv.weight.shape and exp.w2.dtype == torch.float64
    assert torch.allclose(exp.weight, conv.weight, atol=1e-12)
    merged = exp.merged()
    assert merged.weight.dtype == torch.float64 and merged.weight.device == conv.weight.device
    assert merged.kernel_size == (3, 5) and merged.stride == (2, 1)


def test_bad_inputs_give_one_line_errors_naming_the_field():
    conv = nn.Conv2d(2, 2, 1)
    with pytest.raises(ValueError, match=r'^ratio: '):
        ExpandedConv2d(conv, 0.5)
    with pytest.raises(ValueError, match=r'^ratio: '):
        expand_model(nn.Sequential(conv), 'two')
    with pytest.raises(TypeError, match=r'^conv: '):
        ExpandedConv2d(nn.Linear(2, 2))
    with pytest.raises(TypeError, match=r'^linear: '):
        ExpandedLinear(conv)
    with pytest.raises(TypeError, match=r'^include: '):
        expand_model(nn.Sequential(conv), 2, include=3)
    with pytest.raises(ValueError, match=r'^module: '):
        merge_model(ExpandedConv2d(conv))


class _WSConv(nn.Conv2d):
    """A conv subclass with its own forward (like weight standardisation)."""


def test_expand_model_patterns_skips_and_shared_layers():
    shared = nn.Conv2d(4, 4, 1)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), shared, nn.ReLU(), shared,
                        _WSConv(4, 4, 1), nn.Flatten(), nn.Linear(4 * 25, 2))
    x = torch.randn(2, 3, 5, 5)
    y = net(x)
    names, skipped = find_expandable(net)
    assert names == ['0', '1', '6'] and list(skipped) == ['4']
    assert expand_model(copy.deepcopy(net), 2, include='*', exclude=['6']) == ['0', '1']
    assert expand_model(copy.deepcopy(net), 2, include=['1']) == ['1']
    expanded = expand_model(net, 2, generator=torch.Generator().manual_seed(0))
    assert expanded == ['0', '1', '6']
    assert isinstance(net[1], ExpandedConv2d) and net[1] is net[3]  # shared stays shared
    assert type(net[4]) is _WSConv and isinstance(net[6], ExpandedLinear)
    assert_close(net(x), y)
    assert merge_model(net) == ['0', '1', '6']
    assert type(net[1]) is nn.Conv2d and net[1] is net[3]
    assert_close(net(x), y)


def test_mmcv_conv_module_forwards_and_survives_init_weights():
    from mmcv.cnn import ConvModule
    torch.manual_seed(0)
    block = ConvModule(3, 6, 3, stride=2, padding=1, norm_cfg=dict(type='BN'),
                       act_cfg=dict(type='ReLU')).eval()
    x = torch.randn(2, 3, 9, 9)
    y = block(x)
    assert expand_model(block, 2) == ['conv']
    assert isinstance(block.conv, ExpandedConv2d)
    block.init_weights()  # would re-initialise a plain child conv; must keep the exact factors
    assert_close(block(x), y)
    merge_model(block)
    assert_close(block(x), y)


def _round_trip(backbone, x):
    """Expand (r=2) + merge a backbone; outputs and state-dict keys/shapes must survive."""
    backbone.eval()
    ref_shapes = {k: v.shape for k, v in backbone.state_dict().items()}
    with torch.no_grad():
        ref = backbone(x)
    names = expand_model(backbone, 2, generator=torch.Generator().manual_seed(0))
    n_convs = sum(k.endswith('conv1.weight') or k.endswith('conv2.weight') or k.endswith('conv3.weight')
                  or k.endswith('downsample.0.weight') for k in ref_shapes)
    assert len(names) == n_convs
    with torch.no_grad():
        out = backbone(x)
    for a, b in zip(out, ref):
        assert_close(a, b, NET_TOL)
    backbone.train()
    sum(o.mean() for o in backbone(x)).backward()  # trains in train mode (BN after the chain)
    assert all(p.grad is not None for n, p in backbone.named_parameters() if n.endswith('.w1'))
    backbone.eval()
    snapshot = merged_copy(backbone)
    assert any(isinstance(m, ExpandedConv2d) for m in backbone.modules())
    assert merge_model(backbone) == names
    with torch.no_grad():
        out_expanded_trained, out_merged = snapshot(x), backbone(x)
    assert {k: v.shape for k, v in backbone.state_dict().items()} == ref_shapes
    for a, b in zip(out_merged, out_expanded_trained):
        assert_close(a, b, NET_TOL)
    return backbone.state_dict()


def test_mmdet_resnet50_bottleneck_round_trip_and_strict_load():
    from mmdet.models.backbones import ResNet
    torch.manual_seed(0)
    cfg = dict(depth=50, base_channels=8, stem_channels=8, norm_eval=False)
    state = _round_trip(ResNet(**cfg), torch.randn(2, 3, 32, 32))
    ResNet(**cfg).load_state_dict(state, strict=True)


def test_mmpretrain_resnet_cifar18_round_trip_and_strict_load():
    from mmpretrain.models.backbones import ResNet_CIFAR
    torch.manual_seed(0)
    cfg = dict(depth=18, base_channels=8, stem_channels=8)
    state = _round_trip(ResNet_CIFAR(**cfg), torch.randn(2, 3, 16, 16))
    ResNet_CIFAR(**cfg).load_state_dict(state, strict=True)


# ---------------------------------------------------------------- similarity-preserving loss

def test_sp_loss_is_registered_and_zero_for_identical_or_rescaled_features():
    loss = MODELS.build(dict(type='SimilarityPreservingLoss', loss_weight=3000))
    assert isinstance(loss, SimilarityPreservingLoss)
    torch.manual_seed(0)
    t = torch.randn(4, 8, 5, 5)
    assert loss(t.clone(), t).item() == pytest.approx(0, abs=1e-6)
    assert loss(2.5 * t, t).item() == pytest.approx(0, abs=1e-6)  # row normalisation


def test_sp_loss_hand_computed_example():
    s = torch.tensor([[1., 0.], [0., 1.]])      # G_S = I, rows already unit
    t = torch.tensor([[1., 0.], [1., 1.]])      # G_T = [[1, 1], [1, 2]]
    g_t = [[1 / math.sqrt(2), 1 / math.sqrt(2)], [1 / math.sqrt(5), 2 / math.sqrt(5)]]
    expected = ((g_t[0][0] - 1) ** 2 + g_t[0][1] ** 2 + g_t[1][0] ** 2
                + (g_t[1][1] - 1) ** 2) / 4
    assert SimilarityPreservingLoss()(s, t).item() == pytest.approx(expected, rel=1e-6)
    assert SimilarityPreservingLoss(2.0)([s, s], [t, s]).item() == pytest.approx(expected, rel=1e-6)


def test_sp_loss_handles_pruned_channels_and_is_differentiable():
    torch.manual_seed(0)
    t = torch.randn(6, 16, 4, 4)
    pruned = 3.0 * t[:, ::2]                     # half the channels removed, rescaled
    loss = SimilarityPreservingLoss()
    value = loss(pruned, t)
    assert value.item() > 1e-3  # half the channels: the sample similarities change
    assert loss(t, t).item() == pytest.approx(0, abs=1e-7)
    assert loss(3.0 * t, t).item() == pytest.approx(0, abs=1e-7)  # per-sample scale is free
    assert torch.isfinite(loss(torch.zeros(6, 8, 4, 4), t))  # zero student: no NaN
    s = torch.randn(6, 5, 2, 2, requires_grad=True)
    t.requires_grad_(True)
    value = loss([s, s.flatten(1)], [t, t[:, :3]])
    assert value.item() > 1e-4
    value.backward()
    assert s.grad.abs().sum() > 0 and t.grad is None  # teacher is a fixed target


def test_sp_loss_bad_inputs():
    loss = SimilarityPreservingLoss()
    with pytest.raises(ValueError, match=r'^student_feats: tap 0 has batch size 1'):
        loss(torch.randn(1, 4), torch.randn(1, 4))
    with pytest.raises(ValueError, match=r'^student_feats: 2 taps'):
        loss([torch.randn(2, 4)] * 2, [torch.randn(2, 4)])
    with pytest.raises(ValueError, match=r'^student_feats: tap 0 batch size'):
        loss(torch.randn(2, 4), torch.randn(3, 4))
    with pytest.raises(TypeError, match=r'^teacher_feats: '):
        loss(torch.randn(2, 4), [])
    with pytest.raises(ValueError, match=r'^loss_weight: '):
        SimilarityPreservingLoss(-1)
