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


def test_merge_keeps_the_other_rows_and_readme_table(tmp_path):
    def row(name, prunable, params='', macs='', note=''):
        return dict(backbone=name, registry=f'x.{name}', prunable=prunable, groups='1 / 2' if params else '',
                    params_cut=params, macs_cut=macs, note=note)
    old = [row('ResNet-50', 'yes', '56.1 %', '57.3 %', 'kept: reaches a backbone output'),
           row('ShuffleNetV2', 'TIMEOUT', note='pruning did not finish within 90 s'),
           row('VGG-16-BN', 'yes', '71.0 %', '74.0 %')]
    text = f'# Backbone sweep\n\n{backbone_sweep.RERUN_PREFIX}`old cmd`: ShuffleNetV2, VGG-16-BN.\n\n' \
        + backbone_sweep.format_table(old, 0.5) + '\n'
    sparsity, parsed = backbone_sweep.parse_table(text)
    assert sparsity == 0.5 and parsed == old
    merged = backbone_sweep.merge_rows(parsed, [row('ShuffleNetV2', 'yes', '28.0 %', '30.0 %'),
                                                row('ShuffleNetV1', 'refused', note='channel shuffle')])
    assert [r['backbone'] for r in merged] == ['ResNet-50', 'ShuffleNetV2', 'ShuffleNetV1', 'VGG-16-BN']
    assert merged[0] == old[0] and merged[3] == old[2] and merged[1]['params_cut'] == '28.0 %'
    notes = backbone_sweep.rerun_notes(text, ['ShuffleNetV2', 'ShuffleNetV1'], 'new cmd')
    assert notes == [f'{backbone_sweep.RERUN_PREFIX}`old cmd`: VGG-16-BN.',
                     f'{backbone_sweep.RERUN_PREFIX}`new cmd`: ShuffleNetV2, ShuffleNetV1.']
    readme = tmp_path / 'README.md'
    readme.write_text('# X\n\n## Which backbones prune\n\nintro\n\n| backbone | prunable | params cut | MACs cut |\n'
                      '|---|---|---|---|\n| ResNet-50 | yes | 1 % | 1 % |\n| Old | refused | — | — |\n\n## Layout\n\n'
                      '| backbone | prunable | other |\n')
    backbone_sweep.update_readme(str(readme), merged)
    out = readme.read_text()
    assert '| ShuffleNetV1 | refused | — | — |\n| VGG-16-BN | yes | 71.0 % | 74.0 % |\n\n## Layout' in out
    assert '| Old |' not in out and out.startswith('# X\n\n## Which backbones prune\n\nintro\n\n| backbone |')
    assert out.endswith('## Layout\n\n| backbone | prunable | other |\n')
