"""The backbone sweep machinery on two small backbones: one prunes, one is refused in one line."""
import os.path as osp
import sys

sys.path.insert(0, osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'tools'))
import backbone_sweep  # noqa: E402


def test_sweep_rows_and_table():
    rows = [
        backbone_sweep.sweep_backbone('ResNet_CIFAR-18', 'mmpretrain', dict(type='ResNet_CIFAR', depth=18), 32),
        backbone_sweep.sweep_backbone('ShuffleNetV1 0.5x', 'mmpretrain', dict(type='ShuffleNetV1', widen_factor=0.5), 64),
    ]
    ok, refused = rows
    assert ok['prunable'] == 'yes' and float(ok['params_cut'].rstrip(' %')) > 10
    assert refused['prunable'] == 'refused'
    assert refused['note'].startswith('backbone: ShuffleNetV1 has no prunable channel group')
    assert 'channel shuffle' in refused['note']
    assert '\n' not in refused['note']
    table = backbone_sweep.format_table(rows, 0.5)
    assert table.count('\n') == 3 and '| ResNet_CIFAR-18 | mmpretrain.ResNet_CIFAR | yes |' in table
