"""The backbone sweep machinery on two small backbones: one prunes, one is refused in one line."""
import os.path as osp
import sys

sys.path.insert(0, osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'tools'))
import backbone_sweep  # noqa: E402


def test_sweep_rows_and_table():
    rows = [
        backbone_sweep.sweep_backbone('ResNet_CIFAR-18', 'mmpretrain', dict(type='ResNet_CIFAR', depth=18), 32),
        backbone_sweep.sweep_backbone('ViT tiny', 'mmpretrain', dict(
            type='VisionTransformer', arch=dict(embed_dims=32, num_layers=1, num_heads=2,
                                                feedforward_channels=64), img_size=32, patch_size=16), 32),
    ]
    ok, refused = rows
    assert ok['prunable'] == 'yes' and float(ok['params_cut'].rstrip(' %')) > 10
    assert refused['prunable'] == 'refused'
    assert refused['note'].startswith('backbone: VisionTransformer has no prunable channel group')
    assert '\n' not in refused['note']
    table = backbone_sweep.format_table(rows, 0.5)
    assert table.count('\n') == 3 and '| ResNet_CIFAR-18 | mmpretrain.ResNet_CIFAR | yes |' in table
