"""Transformer FFNs: only the hidden units between the two Linears of each FFN are removed
(attention, embeddings, norms and the residual stream keep their widths), the result equals
the stock model with those hidden units switched off, and the spec round-trips strictly."""
import copy

import pytest
import torch
import torch.nn as nn

from dfbf_mm.pruning import L1FilterPruner
from dfbf_mm.registry import MODELS

from backbones import build, outs  # tests/backbones.py

CASES = {
    'mmpretrain-ViT': ('mmpretrain', dict(
        type='VisionTransformer', arch=dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64),
        img_size=32, patch_size=8, out_indices=(0, 1)), 32, ('ffn.layers.0.0', 'ffn.layers.1')),
    'mmdet-Swin': ('mmdet', dict(
        type='SwinTransformer', embed_dims=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4), window_size=2,
        mlp_ratio=4), 64, ('ffn.layers.0.0', 'ffn.layers.1')),
    'mmpretrain-ConvNeXt': ('mmpretrain', dict(
        type='ConvNeXt', arch=dict(depths=[1, 1, 1, 1], channels=[16, 32, 64, 128]), out_indices=(0, 1, 2, 3)),
        64, ('pointwise_conv1', 'pointwise_conv2')),
}




@pytest.mark.slow
@pytest.mark.parametrize('case', list(CASES))
def test_ffn_hidden_units_are_pruned_and_nothing_else(case):
    scope, cfg, size, (fc1_suffix, fc2_suffix) = CASES[case]
    stock = build(scope, cfg)
    backbone = copy.deepcopy(stock)
    x = torch.randn(2, 3, size, size)
    ref = outs(stock, x)
    spec = L1FilterPruner(sparsity=0.5).prune(backbone, x)

    # only the FFN Linears changed: fc1 rows (and bias), fc2 columns
    fc1s = sorted(n for n in spec['modules'] if n.endswith(fc1_suffix))
    assert fc1s and sorted(spec['modules']) == sorted(fc1s + [n[:-len(fc1_suffix)] + fc2_suffix for n in fc1s])
    got = outs(backbone, x)
    assert [o.shape for o in got] == [o.shape for o in ref]

    # the pruned model is the stock model with the removed hidden units switched off
    pruned_mods, stock_mods = dict(backbone.named_modules()), dict(stock.named_modules())
    for name in fc1s:
        fc1_old, fc1_new = stock_mods[name], pruned_mods[name]
        assert isinstance(fc1_new, nn.Linear) and fc1_new.out_features == fc1_old.out_features // 2
        kept = [int((fc1_old.weight == row).all(1).nonzero()[0]) for row in fc1_new.weight]
        fc2 = stock_mods[name[:-len(fc1_suffix)] + fc2_suffix]
        assert pruned_mods[name[:-len(fc1_suffix)] + fc2_suffix].in_features == len(kept)
        off = torch.ones(fc2.in_features, dtype=torch.bool)
        off[kept] = False
        with torch.no_grad():
            fc2.weight[:, off] = 0
    for a, b in zip(outs(stock, x), got):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)

    # PrunedBackbone + spec, strict load, same outputs
    rebuilt = MODELS.build(dict(type='PrunedBackbone', backbone=copy.deepcopy(cfg), channel_spec=spec))
    rebuilt.load_state_dict(backbone.state_dict(), strict=True)
    for a, b in zip(outs(rebuilt, x), got):
        assert torch.equal(a, b)


def test_flatten_in_front_of_a_linear_is_only_trusted_between_linears():
    class LinearOverWidth(nn.Module):  # a Linear over the W axis of a conv map: W == conv channels
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            return self.fc(self.conv(x))

    net = LinearOverWidth().eval()
    with pytest.raises(ValueError, match=r'^backbone: LinearOverWidth has no prunable channel group; '
                                         r'every group passes a Reshape op or reaches a backbone output$'):
        L1FilterPruner(sparsity=0.5).prune(net, torch.randn(1, 3, 8, 8))


# -- stock configs whose backbones were refused or barely pruned ---------------------------------
def _stock_backbone(scope, path, **overrides):
    """``model.backbone`` of a stock config (no pretrained weights), with ``overrides``."""
    import os.path as osp

    from tools.backbone_sweep import configs_root, load_stock_config
    cfg = load_stock_config(osp.join(configs_root(scope), path)).model.backbone.to_dict()
    cfg.update(overrides)
    return cfg


def _kept_rows(old, new):
    """Indices of the rows of ``old`` (a weight) that ``new`` kept, in order."""
    return [int((old == row).all(1).nonzero()[0]) for row in new]


def _params(m):
    return sum(p.numel() for p in m.parameters())


def test_checkpointed_swin_prunes_like_its_twin_and_keeps_checkpointing(monkeypatch):
    """DINO's Swin-L sets with_cp=True: tracing runs with checkpointing off (it hid every layer of
    a block from the trace), the pruned copy equals the with_cp=False twin pruned, and with_cp is
    back on: in train mode with a grad input the blocks run under torch.utils.checkpoint."""
    import torch.utils.checkpoint as checkpoint
    cfg = _stock_backbone('mmdet', 'dino/dino-5scale_swin-l_8xb2-12e_coco.py', embed_dims=16, depths=(1, 1, 2, 1),
                          num_heads=(1, 2, 2, 4), window_size=2, pretrain_img_size=64)
    assert cfg['with_cp'] is True
    x = torch.randn(2, 3, 64, 64)
    net, twin = build('mmdet', cfg), build('mmdet', dict(cfg, with_cp=False))
    spec = L1FilterPruner(sparsity=0.5).prune(net, x)
    assert spec['modules'] == L1FilterPruner(sparsity=0.5).prune(twin, x)['modules']
    assert spec['modules'] and all(n.endswith(('ffn.layers.0.0', 'ffn.layers.1')) for n in spec['modules'])
    for a, b in zip(outs(net, x), outs(twin, x)):
        assert torch.equal(a, b)
    flags = [m.with_cp for m in net.modules() if hasattr(m, 'with_cp')]
    assert flags and all(flags)
    calls = []
    real = checkpoint.checkpoint
    monkeypatch.setattr(checkpoint, 'checkpoint',  # counted (use_reentrant given: torch warns without it)
                        lambda *a, **k: calls.append(1) or real(*a, use_reentrant=False, **k))
    net.train()
    xg = x.clone().requires_grad_(True)
    got = net(xg)
    sum(o.sum() for o in got).backward()
    assert len(calls) == 5 and xg.grad is not None  # one per block
    assert [o.shape for o in got] == [o.shape for o in outs(twin, x)]


def test_convnext_v2_grn_follows_the_hidden_channels():
    """ConvNeXt V2's GRN (per-channel gamma/beta, bare parameters between the two pointwise
    Linears) is pruned with the FFN's hidden channels: its entries are the kept channels' ones."""
    from mmpretrain.models.utils import GRN
    cfg = _stock_backbone('mmpretrain', '_base_/models/convnext_v2/atto.py',
                          arch=dict(depths=[1, 1, 1, 1], channels=[16, 32, 64, 128]), out_indices=(0, 1, 2, 3))
    assert cfg['use_grn'] is True
    stock = build('mmpretrain', cfg)
    with torch.no_grad():
        for m in stock.modules():
            if isinstance(m, GRN):  # zeros at init: make each entry tell its channel
                m.gamma.normal_()
                m.beta.normal_()
    net = copy.deepcopy(stock)
    x = torch.randn(2, 3, 64, 64)
    spec = L1FilterPruner(sparsity=0.5).prune(net, x)
    assert _params(net) < 0.9 * _params(stock)
    assert [o.shape for o in outs(net, x)] == [o.shape for o in outs(stock, x)]
    old, new = dict(stock.named_modules()), dict(net.named_modules())
    blocks = sorted(n[:-len('.grn')] for n in spec['modules'] if n.endswith('.grn'))
    assert len(blocks) == 4 and sorted(spec['modules']) == sorted(
        f'{b}.{s}' for b in blocks for s in ('pointwise_conv1', 'grn', 'pointwise_conv2'))
    for b in blocks:
        kept = _kept_rows(old[f'{b}.pointwise_conv1'].weight, new[f'{b}.pointwise_conv1'].weight)
        assert len(kept) == old[f'{b}.pointwise_conv1'].out_features // 2
        assert torch.equal(new[f'{b}.grn'].gamma, old[f'{b}.grn'].gamma[kept])
        assert torch.equal(new[f'{b}.grn'].beta, old[f'{b}.grn'].beta[kept])
        assert torch.equal(new[f'{b}.pointwise_conv2'].weight, old[f'{b}.pointwise_conv2'].weight[:, kept])
    rebuilt = MODELS.build(dict(type='PrunedBackbone', backbone=copy.deepcopy(cfg), channel_spec=spec))
    rebuilt.load_state_dict(net.state_dict(), strict=True)
    for a, b in zip(outs(rebuilt, x), outs(net, x)):
        assert torch.equal(a, b)


def test_eva02_swiglu_hidden_units_are_pruned_in_pairs():
    """ViTEVA02's SwiGLU FFN: ``w12`` holds both halves of the gate (``chunk(2, dim=-1)``, multiplied
    channel by channel); a hidden unit j removes rows j and H+j of w12 and column j of w3, and the
    result is the stock model with those units off (w3 columns zeroed)."""
    cfg = _stock_backbone('mmpretrain', 'eva02/eva02-tiny-p14_in1k.py', img_size=28,
                          arch=dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=48))
    stock = build('mmpretrain', cfg)
    net = copy.deepcopy(stock)
    x = torch.randn(2, 3, 28, 28)
    spec = L1FilterPruner(sparsity=0.5).prune(net, x)
    assert sorted(spec['modules']) == [f'layers.{i}.mlp.{s}' for i in (0, 1) for s in ('w12', 'w3')]
    old, new = dict(stock.named_modules()), dict(net.named_modules())
    for i in (0, 1):
        w12, w3 = old[f'layers.{i}.mlp.w12'], old[f'layers.{i}.mlp.w3']
        kept = _kept_rows(w12.weight, new[f'layers.{i}.mlp.w12'].weight)
        assert len(kept) == 48 and kept[:24] and [k + 48 for k in kept[:24]] == kept[24:]
        off = torch.ones(48, dtype=torch.bool)
        off[kept[:24]] = False
        with torch.no_grad():
            w3.weight[:, off] = 0
    for a, b in zip(outs(stock, x), outs(net, x)):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    rebuilt = MODELS.build(dict(type='PrunedBackbone', backbone=copy.deepcopy(cfg), channel_spec=spec))
    rebuilt.load_state_dict(net.state_dict(), strict=True)


def test_levit_training_form_prunes_its_mlp_through_batchnorm1d():
    """LeViT's LinearBatchNorm runs ``bn(linear(x).flatten(0, 1)).reshape_as(x)``: both views keep
    the feature dim, so the MLP's hidden channels (linear1 rows, its BN, linear2 columns) are
    pruned in training form too; the result is the stock model with those channels off."""
    cfg = _stock_backbone('mmpretrain', '_base_/models/levit-256-p16.py', arch='128s', img_size=64)
    stock = build('mmpretrain', cfg)
    net = copy.deepcopy(stock)
    x = torch.randn(2, 3, 64, 64)
    spec = L1FilterPruner(sparsity=0.5, ignore=['patch_embed*']).prune(net, x)  # (its convs prune too)
    assert _params(net) < 0.8 * _params(stock)
    old, new = dict(stock.named_modules()), dict(net.named_modules())
    mlps = sorted(n[:-len('.linear1.bn')] for n in spec['modules'] if n.endswith('.linear1.bn'))
    assert len(mlps) == 11  # the MLP of each of the 9 blocks and of the 2 subsampling steps
    assert sorted(spec['modules']) == sorted(f'{b}.{s}' for b in mlps for s in ('linear1.linear', 'linear1.bn',
                                                                              'linear2.linear'))
    for b in mlps:
        kept = _kept_rows(old[f'{b}.linear1.linear'].weight, new[f'{b}.linear1.linear'].weight)
        assert torch.equal(new[f'{b}.linear1.bn'].running_var, old[f'{b}.linear1.bn'].running_var[kept])
        off = torch.ones(old[f'{b}.linear1.linear'].out_features, dtype=torch.bool)
        off[kept] = False
        with torch.no_grad():
            old[f'{b}.linear2.linear'].weight[:, off] = 0
    for a, b in zip(outs(stock, x), outs(net, x)):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-4, rtol=1e-4)
