"""Backbones the sweep (issue 13) found unprunable or barely prunable, each built alone and small:
conv layers Torch-Pruning has no pruner for (TridentConv's bare weight, ConvAWS2d's per-channel
buffers), a classifier backbone that squeezes a batch of one, a backbone whose state_dict() hides
buffers. Each is pruned, keeps its output
shapes, and its spec rebuilds the stock backbone that loads the pruned weights strictly."""
import copy

import pytest
import torch

from dfbf_mm.pruning import L1FilterPruner
from dfbf_mm.registry import MODELS
from dfbf_mm.stock_model import check_state_dict_fits

from backbones import build, outs  # tests/backbones.py


def _trident(net, spec):  # TridentConv's weight and the layers around it lose the same channels
    conv = net.layer3[0].conv2
    assert type(conv).__name__ == 'TridentConv' and conv.out_channels == conv.weight.shape[0] < 256
    assert net.layer3[0].bn2.num_features == conv.out_channels == net.layer3[0].conv3.in_channels


def _aws(net, spec):  # ConvAWS2d's weight_gamma / weight_beta are cut with its filters
    conv = net.layer1[0].conv1
    assert type(conv).__name__ == 'ConvAWS2d' and conv.out_channels < 64
    assert conv.weight_gamma.shape == conv.weight_beta.shape == (conv.out_channels, 1, 1, 1)


def _lenet(net, spec):  # the squeeze is traced on a batch of two: conv3's 120 maps and fc1 are pruned
    assert net.features[6].out_channels < 120 and net.classifier[0].out_features < 84


def _swinv2(net, spec):  # only FFN hidden units; the relative-position buffers came through
    assert spec['modules'] and all(n.endswith(('ffn.layers.0.0', 'ffn.layers.1')) for n in spec['modules'])
    assert net.stages[0].blocks[0].attn.w_msa.relative_position_index.shape == (4, 4)


CASES = {
    # TridentConv (layer3.*.conv2) holds its weight as a bare nn.Parameter
    'TridentResNet': ('mmdet', dict(type='TridentResNet', depth=50, num_branch=3, test_branch_idx=1,
                                    trident_dilations=(1, 2, 3), num_stages=3, strides=(1, 2, 2),
                                    dilations=(1, 1, 1), out_indices=(2,)), 3, 32, _trident),
    # every conv is a ConvAWS2d: weight standardisation with weight_gamma / weight_beta buffers
    'DetectoRS_ResNet': ('mmdet', dict(type='DetectoRS_ResNet', depth=50, num_stages=2, strides=(1, 2),
                                       dilations=(1, 1), conv_cfg=dict(type='ConvAWS'), out_indices=(0, 1)),
                         3, 32, _aws),
    # classifier(x.squeeze()): a batch of one gives a 1-D output (N, 10) -> (10,)
    'LeNet5': ('mmpretrain', dict(type='LeNet5', num_classes=10), 1, 32, _lenet),
    # its state_dict() leaves out the relative-position buffers (a state-dict hook): the pruned
    # copy's tensors are moved over by name, not by a strict load_state_dict
    'SwinTransformerV2': ('mmpretrain', dict(
        type='SwinTransformerV2', arch=dict(embed_dims=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4],
                                            extra_norm_every_n_blocks=0),
        img_size=64, window_size=[2, 2, 2, 2], out_indices=(3,)), 3, 64, _swinv2),
}


def nparams(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.slow
@pytest.mark.parametrize('case', list(CASES))
def test_backbone_prunes_and_its_spec_reloads_strictly(case):
    scope, cfg, channels, size, check = CASES[case]
    stock = build(scope, cfg)
    stock.init_weights()  # (DetectoRS: its uninitialised random tensors overflow to NaN)
    torch.manual_seed(0)
    for m in stock.modules():  # TridentConv makes its bare weight with torch.Tensor(...) and never fills it
        w = getattr(m, 'weight', None)
        if isinstance(w, torch.nn.Parameter) and w.dim() > 1 and not isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.kaiming_normal_(w)
    stock.eval()
    backbone = copy.deepcopy(stock)
    x = torch.randn(1, channels, size, size)
    ref = [o.shape for o in outs(stock, x)]
    pruner = L1FilterPruner(sparsity=0.5)
    spec = pruner.prune(backbone, x)
    assert nparams(backbone) <= 0.9 * nparams(stock), pruner.report['skipped']
    assert [o.shape for o in outs(backbone, x)] == ref
    check(backbone, spec)
    rebuilt = MODELS.build(dict(type='PrunedBackbone', backbone=copy.deepcopy(cfg), channel_spec=spec))
    state = backbone.state_dict()
    check_state_dict_fits(rebuilt, state, 'state', 'the pruned backbone', strict=True)  # as load_weights
    rebuilt.load_state_dict(state, strict=False)  # (SwinV2's own state_dict() lacks two buffers per block)
    for a, b in zip(outs(rebuilt, x), outs(backbone, x)):
        assert torch.equal(a, b)
