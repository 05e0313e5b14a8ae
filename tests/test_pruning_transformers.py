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
