"""The backbone sweep: config matching, one stock model through the whole path, the tables."""
import json
import os.path as osp

import pytest

from tools import backbone_sweep


@pytest.mark.slow
def test_registered_backbones_and_config_matching():
    classes = backbone_sweep.registered_backbones(('mmpretrain',))
    assert ('mmpretrain', 'ResNet_CIFAR') in classes and ('mmpretrain', 'RepVGG') in classes
    assert all(s == 'mmpretrain' for s, _ in classes) and len(classes) > 50
    paths = backbone_sweep.candidate_configs('mmpretrain', 'ResNet_CIFAR')
    assert paths and all('/_base_/' not in p for p in paths)
    # configs inheriting the base model file count too (resnet18_8xb16_cifar10.py writes no type)
    assert any(p.endswith('resnet/resnet18_8xb16_cifar10.py') for p in paths)
    path, why = backbone_sweep.pick_config('mmpretrain', 'ResNet_CIFAR')
    assert why == '' and 'resnet18' in osp.basename(path)  # the smallest depth
    assert backbone_sweep.pick_config('mmpretrain', 'NoSuchNet') == (None, 'no stock config uses it')


@pytest.mark.slow
def test_whole_path_on_a_stock_detector():
    path = osp.join(backbone_sweep.configs_root('mmdet'), 'yolox', 'yolox_nano_8xb8-300e_coco.py')
    row = backbone_sweep.sweep_class('mmdet', 'CSPDarknet', path, 0.5, time_limit=300)
    assert row['status'] == 'yes', row['note']
    assert row['config'] == 'mmdet::yolox/yolox_nano_8xb8-300e_coco.py' and row['kind'] == 'conv'
    assert float(row['params_cut'].rstrip(' %')) > 10 and row['stage'] == ''


@pytest.mark.slow
def test_refusal_is_one_line():
    row = backbone_sweep.sweep_backbone('ShuffleNetV1 0.5x', 'mmpretrain',
                                        dict(type='ShuffleNetV1', widen_factor=0.5), 64)
    if row['status'] == 'yes':  # pruned: its channels were really removed
        assert float(row['params_cut'].rstrip(' %')) > 0
    else:
        assert row['status'] == 'refused' and '\n' not in row['note']
        assert row['note'].startswith('backbone: ShuffleNetV1')


def _row(name, status, kind='conv', params='', ffn='0', note=''):
    return dict(backbone=name, config=f'mmx::{name}.py' if status != 'no config' else '', kind=kind,
                status=status, stage='', groups='1 / 2' if params else '', params_cut=params,
                macs_cut=params, ffn_pruned=ffn, note=note, seconds=1.0)


def test_store_summary_and_readme(tmp_path):
    rows = {r['backbone']: r for r in [
        _row('mmx.A', 'yes', params='50.0 %'), _row('mmx.B', 'yes', params='5.0 %'),
        _row('mmx.C', 'refused', note='backbone: C has no prunable channel group'),
        _row('mmx.T', 'yes', 'transformer', '20.0 %', ffn='12'), _row('mmx.U', 'FAIL', 'transformer', note='x: y'),
        _row('mmx.N', 'no config', kind='', note='no stock config uses it')]}
    store = tmp_path / 'rows.json'
    backbone_sweep.save_rows(str(store), rows, 0.5)
    assert backbone_sweep.load_rows(str(store)) == rows and json.loads(store.read_text())['sparsity'] == 0.5
    s = backbone_sweep.summary(list(rows.values()))
    assert (s['classes'], s['swept'], s['ok'], s['refused'], s['failed']) == (6, 5, 3, 1, 1)
    assert (s['conv'], s['conv_ok'], s['transformer'], s['transformer_ok']) == (3, 1, 2, 1)
    readme = tmp_path / 'README.md'
    readme.write_text('# X\n\n## Which backbones prune\n\nintro\n\n| backbone | prunable | params cut | MACs cut |\n'
                      '|---|---|---|---|\n| Old | refused | — | — |\n\n## Layout\n\n| backbone | other |\n')
    ordered = sorted(rows.values(), key=lambda r: r['backbone'])
    for _ in range(2):  # idempotent: the summary line is replaced, not added again
        backbone_sweep.update_readme(str(readme), ordered, 0.5)
    out = readme.read_text()
    assert out.count('<!-- sweep summary -->') == 1 and '| Old |' not in out
    assert '| mmx.C | mmx::mmx.C.py | conv | refused | — | — | backbone: C has no prunable channel group |' in out
    assert 'mmx.N |' not in out and 'No stock config: mmx.N.' in out
    assert out.endswith('## Layout\n\n| backbone | other |\n')
    with pytest.raises(ValueError, match='no "## Which backbones prune" section'):
        (tmp_path / 'R2.md').write_text('# nothing\n')
        backbone_sweep.update_readme(str(tmp_path / 'R2.md'), ordered, 0.5)


@pytest.mark.slow
def test_res2net_prunes_through_its_concats():
    """The last 3x3 conv of each Res2Net block feeds ``cat((cat(...), spx[-1]))``: its concat offsets
    are now known (the split chunk's width), so those convs are pruned; the split stays kept."""
    import torch
    from mmdet.registry import MODELS

    from dfbf_mm.pruning import L1FilterPruner
    from dfbf_mm.stock_model import enter_scope
    enter_scope('mmdet')
    import mmdet.models  # noqa: F401
    net = MODELS.build(dict(type='Res2Net', depth=50, num_stages=1, out_indices=(0,), strides=(1,),
                            dilations=(1,), stage_with_dcn=(False,)))
    net.eval()
    x = torch.randn(1, 3, 64, 64)
    ref = net(x)[0].shape
    pruner = L1FilterPruner(sparsity=0.5)
    pruner.prune(net, x)
    roots = {g['root'] for g in pruner.report['groups']}
    assert {f'layer1.{i}.convs.2' for i in range(3)} <= roots
    assert net.layer1[1].convs[2].out_channels == 13 and net.layer1[1].conv3.in_channels == 78 + 13
    assert net.layer1[1].conv1.out_channels == 104  # behind the fixed-width split
    assert net(x)[0].shape == ref


@pytest.mark.slow
def test_repvgg_prunes_in_deploy_form():
    import torch
    from mmengine.config import Config

    from dfbf_mm.pruning import L1FilterPruner, is_reparameterizable, reparameterize
    from dfbf_mm.stock_model import build_stock_model
    cfg = Config(dict(default_scope='mmpretrain', model=dict(
        type='ImageClassifier', backbone=dict(type='RepVGG', arch='A0', out_indices=(3,)),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=10, in_channels=1280))))
    model = build_stock_model(cfg)
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match='has no prunable channel group'):
        L1FilterPruner(0.5).prune(model.backbone, x)  # every block sums a 3x3, a 1x1 and an identity branch
    model.eval()
    ref = model.backbone(x)[0]
    assert is_reparameterizable(model.backbone) and reparameterize(model, cfg)
    assert cfg.model.backbone.deploy is True and not is_reparameterizable(model.backbone)
    assert torch.allclose(model.backbone(x)[0], ref, atol=1e-4)  # same function, fused
    build_stock_model(cfg).load_state_dict(model.state_dict(), strict=True)  # deploy=True rebuilds it
    params = sum(p.numel() for p in model.backbone.parameters())
    L1FilterPruner(0.5).prune(model.backbone, x)
    assert sum(p.numel() for p in model.backbone.parameters()) < 0.5 * params
    assert not reparameterize(model, cfg)  # already fused


@pytest.mark.slow
def test_repvgg_through_the_runner_prunes_the_fused_form_and_exports_deploy(tmp_path):
    """tools/train.py on a RepVGG config: the teacher keeps its training form (DeepInversion needs
    its BN layers), the student is the fused form pruned, and the export config says deploy=True
    so the stock registry rebuilds it and loads the checkpoint strictly."""
    import torch
    from mmengine.config import Config

    from dfbf_mm.engine import DataFreeDistillRunner
    from dfbf_mm.stock_model import build_stock_model
    from test_walking_skeleton import STOCK_CFG
    stock = STOCK_CFG.format(data='unused').replace(
        "backbone=dict(type='ResNet_CIFAR', depth=18, stem_channels=16, base_channels=16)",
        "backbone=dict(type='RepVGG', arch='A0', out_indices=(3,))").replace('in_channels=128', 'in_channels=1280')
    teacher = build_stock_model(Config.fromstring(stock, '.py'))
    torch.save({'state_dict': teacher.state_dict()}, tmp_path / 't.pth')
    cfg = Config.fromstring(stock + f"""
runner_type = 'DataFreeDistillRunner'
val_dataloader = val_evaluator = val_cfg = test_dataloader = test_evaluator = test_cfg = None
dfbf = dict(teacher_checkpoint='{tmp_path / 't.pth'}', pruner=dict(type='L1FilterPruner', sparsity=0.5),
            synthesizer=dict(type='DeepInversionSynthesizer', preset='classification', iterations=2),
            synthetic_data=dict(num_images=2, batch_size=2, image_size=(32, 32), seed=0),
            schedule=dict(epochs=1, lr=0.01), export=dict(profile=False))
""", '.py')
    cfg.work_dir = str(tmp_path / 'work')
    runner = DataFreeDistillRunner.from_cfg(cfg)
    runner.train()
    model = runner.model
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.teacher.backbone.modules())
    assert not model.teacher.backbone.deploy and model.student.backbone.deploy
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(model.student.backbone) < 0.6 * n(model.teacher.backbone)
    deploy = Config.fromfile(str(tmp_path / 'work' / 'export' / 'pruned.py'))
    assert deploy.model.backbone.backbone.deploy is True
    rebuilt = build_stock_model(deploy)
    state = torch.load(str(tmp_path / 'work' / 'export' / 'pruned.pth'), map_location='cpu', weights_only=False)
    rebuilt.load_state_dict(state['state_dict'], strict=True)
    x = torch.randn(2, 3, 32, 32)
    rebuilt.eval(), model.student.eval()
    assert torch.allclose(rebuilt(x, mode='tensor'), model.student(x, mode='tensor'), atol=1e-5)


def test_pose_lifters_get_keypoint_sequences():
    """TCN and DSTFormer lift 2-D keypoints: the sweep feeds them the sequence their stock config's
    model takes (not an image), and both prune on it with output shapes intact."""
    import copy

    import torch

    from dfbf_mm.pruning import L1FilterPruner
    from dfbf_mm.registry import MODELS

    from backbones import build, outs  # tests/backbones.py
    root = backbone_sweep.configs_root('mmpose')
    shapes = {}
    for name, path in (('TCN', 'image_pose_lift/h36m/image-pose-lift_tcn_8xb64-200e_h36m.py'),
                       ('DSTFormer', 'motionbert/h36m/motionbert_dstformer-243frm_8xb32-240e_h36m.py')):
        shapes[name] = backbone_sweep.sequence_input(
            backbone_sweep.load_stock_config(osp.join(root, 'body_3d_keypoint', path)))
    assert shapes == {'TCN': (34, 1), 'DSTFormer': (243, 17, 3)}  # (C, T) and (T, K, C)
    image = backbone_sweep.load_stock_config(osp.join(backbone_sweep.configs_root('mmpretrain'),
                                                      'lenet', 'lenet5_mnist.py'))
    assert backbone_sweep.sequence_input(image) is None
    for cfg, x in ((dict(type='TCN', in_channels=34, stem_channels=64, num_blocks=2, kernel_sizes=(3, 3, 3)),
                    torch.randn(1, 34, 27)),
                   (dict(type='DSTFormer', in_channels=3, feat_size=32, depth=1, num_heads=2, mlp_ratio=2,
                         seq_len=4), torch.randn(1, 4, 17, 3))):
        stock = build('mmpose', cfg)
        net = copy.deepcopy(stock)
        spec = L1FilterPruner(sparsity=0.5).prune(net, x)
        assert sum(p.numel() for p in net.parameters()) <= 0.9 * sum(p.numel() for p in stock.parameters())
        assert [o.shape for o in outs(net, x)] == [o.shape for o in outs(stock, x)]
        rebuilt = MODELS.build(dict(type='PrunedBackbone', backbone=copy.deepcopy(cfg), channel_spec=spec))
        rebuilt.load_state_dict(net.state_dict(), strict=True)


def test_spark_encoder_runs_dense_with_every_patch_visible():
    """SparK's sparse encoder reads its mask from a global only SparK's loss sets; under the sweep's
    all-visible mask (sized per forward, any batch) it computes what the dense ResNet does."""
    import torch
    from mmengine.config import Config

    from backbones import build, outs  # tests/backbones.py
    sparse = build('mmpretrain', dict(type='SparseResNet', depth=18, out_indices=(3,)))
    dense = build('mmpretrain', dict(type='ResNet', depth=18, out_indices=(3,)))
    dense.load_state_dict(sparse.state_dict(), strict=True)  # same keys: the layers were converted in place
    x = torch.randn(2, 3, 64, 64)
    with pytest.raises(AttributeError):  # no mask set: the stock forward outside SparK's loss
        outs(sparse, x)
    with backbone_sweep.spark_visible_mask(Config(dict(model=dict(type='SparK', downsample_raito=32)))):
        got = outs(sparse, x)
        assert outs(sparse, x[:1])[0].shape[0] == 1
    assert torch.allclose(got[0], outs(dense, x)[0], atol=1e-5)


def test_extra_config_rows_are_counted_apart():
    """Rows of EXTRA_CONFIGS (a class's other stock configs) leave the per-class counts as they are."""
    rows = [_row('mmx.A', 'yes', params='50.0 %'), _row('mmx.C', 'refused', note='backbone: C refused')]
    extra = [_row(backbone_sweep.extra_key('mmx', 'A', 'a/a-large_coco.py'), 'yes', params='30.0 %')]
    assert extra[0]['backbone'] == 'mmx.A (a-large_coco)' and backbone_sweep.is_extra(extra[0])
    s, s2 = backbone_sweep.summary(rows), backbone_sweep.summary(rows + extra)
    assert {k: v for k, v in s2.items() if not k.startswith('extra')} == {k: v for k, v in s.items()
                                                                          if not k.startswith('extra')}
    assert (s2['extra'], s2['extra_ok']) == (1, 1)
    text = backbone_sweep.summary_text(rows + extra, 0.5, ['mmx.A', 'mmx.C'])
    assert 'not swept yet' not in text and 'Also swept: 1 more stock configs of these classes (1 ran' in text
    for scope, name, config in backbone_sweep.EXTRA_CONFIGS:  # every extra config is a stock config of its class
        assert osp.isfile(osp.join(backbone_sweep.configs_root(scope), config))
        assert osp.join(backbone_sweep.configs_root(scope), config) in backbone_sweep.candidate_configs(scope, name)
