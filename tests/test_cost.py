"""MACs per image, whatever the batch of the example input (dfbf_mm.cost)."""
import pytest
import torch

from dfbf_mm.cost import CostModel, count_macs_params
from dfbf_mm.pruning import L1FilterPruner, trace_channel_groups

from backbones import build

VIT = ('mmpretrain', dict(type='VisionTransformer', img_size=32, patch_size=4,
                          arch=dict(embed_dims=64, num_layers=4, num_heads=4, feedforward_channels=256)))
BACKBONES = {
    'ViT': (VIT, 32),
    'Swin': (('mmpretrain', dict(type='SwinTransformer', img_size=64, window_size=2,
                                 arch=dict(embed_dims=32, depths=[2, 2, 2, 2], num_heads=[2, 2, 4, 4]))), 64),
    'ResNet-18': (('mmdet', dict(type='ResNet', depth=18)), 32),
}


@pytest.mark.parametrize('name', list(BACKBONES))
def test_macs_are_per_image_at_any_batch(name):
    """Torch-Pruning divides its total by the batch but not its per-layer counts, and counts a
    Linear's bias once per call: CostModel's estimate (the sum of the per-layer counts) was the
    batch times count_macs_params, and a token model's count changed with the batch."""
    cfg, size = BACKBONES[name]
    b = build(*cfg)
    one = count_macs_params(b, torch.randn(1, 3, size, size))[0]
    per_layer, half = [], []
    for n in (1, 2, 3):
        x = torch.randn(n, 3, size, size)
        assert count_macs_params(b, x)[0] == one
        costs = CostModel(b, x, trace_channel_groups(b, x))
        assert costs.estimate(costs.widths)[0] == pytest.approx(one, rel=1e-9)
        per_layer.append([v for _, v in costs.layer_macs])
        half.append(costs.estimate([max(1, w // 2) for w in costs.widths])[0])
    assert per_layer[0] == per_layer[1] == per_layer[2]
    assert half[0] == pytest.approx(half[1], rel=1e-9) and half[0] < one


def test_vit_macs_target_from_a_batch_of_two_is_reached():
    """A batch of two made the estimate twice the cost: the ViT's target was called unreachable."""
    b = build(*VIT)
    x1 = torch.randn(1, 3, 32, 32)
    before = count_macs_params(b, x1)[0]
    pruner = L1FilterPruner(target=dict(macs=0.5))
    pruner.prune(b, torch.randn(2, 3, 32, 32))
    cut = 1 - count_macs_params(b, x1)[0] / before
    assert abs(cut - 0.5) <= 0.02, cut  # the tolerance of test_pruning_target's MACs targets
    assert abs(pruner.report['target']['reached'] - cut) < 1e-9
