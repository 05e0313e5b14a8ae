"""Paoding-pruned mmpretrain models export to a deploy config that the stock tools rebuild
exactly (strict load, same outputs); ViT FFNs; one-line errors; Paoding as a dfbf pruner."""
import json
import os.path as osp

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.runner import load_checkpoint

import dfbf_mm  # noqa: F401  (registers PaodingPruner, PrunedBackbone)
from dfbf_mm.export import export_pruned_model
from dfbf_mm.pruning.paoding.chain import trace_leaves
from dfbf_mm.pruning.paoding.conv_blocks import find_conv_blocks
from dfbf_mm.registry import MODELS, PRUNERS
from dfbf_mm.stock_model import build_stock_model, stock_model_cfg

LENET = """
default_scope = 'mmpretrain'
model = dict(type='ImageClassifier',
             backbone=dict(type='LeNet5'),
             neck=dict(type='GlobalAveragePooling'),
             head=dict(type='StackedLinearClsHead', num_classes=10, in_channels=120,
                       mid_channels=[32, 24]))
"""
RESNET = """
default_scope = 'mmpretrain'
data_preprocessor = dict(num_classes=5, mean=[80.0, 80.0, 80.0], std=[90.0, 90.0, 90.0])
model = dict(type='ImageClassifier',
             backbone=dict(type='ResNet_CIFAR', depth=18, stem_channels=8, base_channels=8,
                           strides=(1, 2, 2, 2)),
             neck=dict(type='GlobalAveragePooling'),
             head=dict(type='StackedLinearClsHead', num_classes=5, in_channels=64,
                       mid_channels=[48]))
"""
VIT = """
default_scope = 'mmpretrain'
model = dict(type='ImageClassifier',
             backbone=dict(type='VisionTransformer', img_size=32, patch_size=8,
                           arch=dict(embed_dims=32, num_layers=2, num_heads=2,
                                     feedforward_channels=64){layer_cfgs}),
             head=dict(type='LinearClsHead', num_classes=4, in_channels=32))
"""


def stock(text: str, tmp_path, seed: int = 0):
    """The config written to a file (like a user's) and a model with non-trivial BN stats."""
    path = str(tmp_path / 'stock.py')
    with open(path, 'w') as f:
        f.write(text)
    cfg = Config.fromfile(path)
    torch.manual_seed(seed)
    model = build_stock_model(cfg)
    model.init_weights()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):  # so that a wrong BN (identity, unsliced) shows
                m.weight.uniform_(-1.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    return cfg, model.eval()


def export_and_reload(model, cfg, spec, out):
    paths = export_pruned_model(model, cfg, spec, str(out))
    deploy = Config.fromfile(paths['config'])  # plain MMEngine, as tools/test.py does
    rebuilt = build_stock_model(deploy)
    load_checkpoint(rebuilt, deploy.load_from, strict=True)
    return paths, deploy, rebuilt.eval()


@pytest.mark.slow
def test_stacked_head_exports_with_rewritten_mid_channels(tmp_path):
    cfg, model = stock(LENET, tmp_path)
    x = torch.rand(6, 1, 32, 32)
    pruner = PRUNERS.build(dict(type='PaodingPruner', target=0.5, step=0.25, seed=42))
    spec = pruner.prune(model, example_input=x)
    assert [b.fc.out_features for b in model.head.layers[:-1]] == [16, 12]
    assert set(spec['modules']) == {'head.layers.0.fc', 'head.layers.1.fc', 'head.layers.2.fc'}
    paths, deploy, rebuilt = export_and_reload(model, cfg, spec, tmp_path / 'out')
    assert deploy.model.head.mid_channels == [16, 12]
    assert deploy.model.head.type == 'StackedLinearClsHead' and deploy.model.neck == cfg.model.neck
    assert json.load(open(paths['channel_spec']))['modules'] == {}  # the backbone is unpruned
    with torch.no_grad():
        assert torch.allclose(rebuilt(x, mode='tensor'), model(x, mode='tensor'), atol=1e-6)


@pytest.mark.slow
def test_conv_blocks_on_resnet_cifar_keep_bn_and_reload_strictly(tmp_path):
    cfg, model = stock(RESNET, tmp_path)
    teacher_keys = set(model.state_dict())
    x = torch.randn(4, 3, 32, 32)
    blocks = find_conv_blocks(trace_leaves(model.backbone, x[:1]))
    # the stem feeds a residual add / downsample too: not a block; every BasicBlock's inner pair is
    assert [b.name for b in blocks] == [f'layer{s}.{i}.conv1' for s in range(1, 5) for i in range(2)]
    assert all(b.bn_name == b.name.replace('conv1', 'bn1') for b in blocks)
    pruner = PRUNERS.build(dict(type='PaodingPruner', target=0.5, step=0.25, seed=42, conv_blocks=True,
                                input_range=(-80 / 90, 175 / 90)))
    spec = pruner.prune(model, example_input=x[:1], evaluate=lambda m: m(x, mode='tensor').detach().clone())
    masked = pruner.records[-1]['metrics']  # the masked model just before physical removal
    with torch.no_grad():
        pruned_out = model(x, mode='tensor')
    assert torch.allclose(pruned_out, masked, atol=1e-5)
    assert set(model.state_dict()) == teacher_keys  # BN kept, no conv bias added
    b = model.backbone.layer2[1]
    assert b.conv1.out_channels == b.bn1.num_features == b.conv2.in_channels == 8
    assert b.bn1.running_mean.shape == (8, ) and b.conv1.bias is None
    assert model.head.layers[0].fc.out_features == 24
    paths, deploy, rebuilt = export_and_reload(model, cfg, spec, tmp_path / 'out')
    assert deploy.model.backbone.type == 'PrunedBackbone' and deploy.model.head.mid_channels == [24]
    saved = json.load(open(paths['channel_spec']))
    assert saved['backbone'] == 'ResNet_CIFAR' and 'layer2.1.bn1' in saved['modules']
    with torch.no_grad():
        assert torch.allclose(rebuilt(x, mode='tensor'), pruned_out, atol=1e-5)


def test_export_refuses_what_the_config_cannot_rebuild(tmp_path):
    cfg, model = stock(RESNET, tmp_path)
    model.backbone.layer1[0].bn1 = nn.Identity()  # e.g. a BN folded away
    with pytest.raises(ValueError, match=r'^model: the deploy config builds backbone.layer1.0.bn1.weight, '
                                         r'which the pruned model lacks') as e:
        export_pruned_model(model, cfg, None, str(tmp_path / 'x'))
    assert '\n' not in str(e.value) and not osp.exists(tmp_path / 'x')


@pytest.mark.parametrize('act', ['GELU', 'ReLU'])
def test_vision_transformer_ffn(act, tmp_path):
    layer_cfgs = '' if act == 'GELU' else ", layer_cfgs=dict(act_cfg=dict(type='ReLU'))"
    cfg, model = stock(VIT.format(layer_cfgs=layer_cfgs), tmp_path)
    x = torch.rand(3, 3, 32, 32)
    pruner = PRUNERS.build(dict(type='PaodingPruner', target=0.5, step=0.25, seed=42))
    if act == 'GELU':  # not ReLU/sigmoid: refused in one line naming the layer and what was found
        with pytest.raises(ValueError) as e:
            pruner.prune(model, example_input=x[:1])
        msg = str(e.value)
        assert '\n' not in msg
        assert msg.startswith("model: layer 'backbone.layers.0.ffn.layers.0.0' -> "
                              "'backbone.layers.0.ffn.layers.1' cannot be pruned by Paoding "
                              '(activation found: GELU;')
        return
    spec = pruner.prune(model, example_input=x[:1])
    assert sorted(n for n in spec['modules'] if n.endswith('.0.0')) == [
        'backbone.layers.0.ffn.layers.0.0', 'backbone.layers.1.ffn.layers.0.0']
    assert model.backbone.layers[0].ffn.layers[1].in_features == 32
    _, _, rebuilt = export_and_reload(model, cfg, spec, tmp_path / 'out')
    with torch.no_grad():
        assert torch.allclose(rebuilt(x, mode='tensor'), model(x, mode='tensor'), atol=1e-5)


class SharedHidden(nn.Module):
    """fc1 -> ReLU -> fc2, and the ReLU output also feeds a skip Linear."""

    def __init__(self):
        super().__init__()
        self.fc1, self.act, self.fc2, self.skip = nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3), nn.Linear(8, 3)

    def forward(self, x):
        h = self.act(self.fc1(x))
        return self.fc2(h) + self.skip(h)


@pytest.mark.parametrize('kw,pattern', [
    (dict(target=0.0), r'^target: 0.0 must be a ratio strictly between 0 and 1$'),
    (dict(target=1), r'^target: 1 must be a ratio strictly between 0 and 1$'),
    (dict(target=-0.2), r'^target: -0.2 must be a ratio'),
    (dict(target=1.5), r'^target: 1.5 must be a ratio'),
    (dict(target='half'), r"^target: 'half' must be a ratio"),
    (dict(target=0.3, step=0.5), r'^step: 0.5 is larger than the target 0.3$'),
    (dict(step=0), r'^step: 0 must be a positive ratio$'),
    (dict(mode='greedy'), r"^mode: 'greedy' is not one of stochastic, baseline, impact$"),
])
def test_bad_arguments_are_one_line(kw, pattern):
    cfg = dict(type='PaodingPruner', target=0.5, step=0.1)
    cfg.update(kw)
    with pytest.raises(ValueError, match=pattern) as e:
        PRUNERS.build(cfg)
    assert '\n' not in str(e.value)


@pytest.mark.parametrize('model,x,kw,pattern', [
    (lambda: nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2)), None, {},
     r"^model: layer '0' -> '2' cannot be pruned by Paoding \(activation found: Tanh;"),
    (lambda: nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 2)), None, {},
     r"^model: layer '0' -> '1' cannot be pruned by Paoding \(activation found: none;"),
    (SharedHidden, None, {}, r"^model: layer 'fc1' -> 'fc2' cannot be pruned by Paoding \(the output "
                             r"of 'act' is read by 2 operations"),
    (lambda: nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2)), None, dict(layers=['2']),
     r"^layers: pattern '2' matches only Linear layers that feed no other Linear"),
    (lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 2)), None, {},
     r'^example_input: required for a model whose first layer is not nn.Linear$'),
    (lambda: nn.Sequential(nn.Conv2d(3, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()),
     torch.rand(1, 3, 4, 4), {}, r'^model: no prunable dense layer found'),
])
def test_unsupported_models_are_one_line(model, x, kw, pattern):
    pruner = PRUNERS.build(dict(type='PaodingPruner', target=0.5, step=0.25, **kw))
    with pytest.raises(ValueError, match=pattern) as e:
        pruner.prune(model(), example_input=x)
    assert '\n' not in str(e.value)


def test_paoding_is_a_dfbf_pruner(tmp_path):
    """``dfbf.pruner=dict(type='PaodingPruner', ...)``: the student's backbone is pruned by
    Paoding, its spec drives resume and export like L1FilterPruner's."""
    cfg, teacher = stock(RESNET, tmp_path)
    torch.save({'state_dict': teacher.state_dict()}, tmp_path / 't.pth')
    pruner = dict(type='PaodingPruner', target=0.5, step=0.25, conv_blocks=True, seed=42,
                  input_range=(-80 / 90, 175 / 90))
    distiller = MODELS.build(dict(
        type='DataFreeDistiller', model=stock_model_cfg(cfg), teacher_checkpoint=str(tmp_path / 't.pth'),
        pruner=pruner, input_size=(32, 32)))
    spec = distiller.channel_spec
    assert spec['backbone'] == 'ResNet_CIFAR' and spec['modules']['layer1.0.conv1']['shapes']['weight'][0] == 4
    assert distiller.teacher.backbone.layer1[0].conv1.out_channels == 8
    # taps default to the norm layers whose width pruning kept (not the pruned bn1 of a block)
    assert 'layer4.1.bn2' in distiller.taps and not any('.bn1' in t for t in distiller.taps)
    losses = distiller.train()(torch.randn(2, 3, 32, 32), mode='loss')
    assert losses['loss_feat'] > 0  # the pruned student no longer reproduces the teacher
    losses['loss_feat'].backward()  # only the student backbone learns
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in distiller.student.backbone.parameters())
    assert all(p.grad is None for p in distiller.teacher.parameters())
    assert all(p.grad is None for p in distiller.student.head.parameters())
    # a resumed run rebuilds the same student from the spec
    again = MODELS.build(dict(
        type='DataFreeDistiller', model=stock_model_cfg(cfg), teacher_checkpoint=str(tmp_path / 't.pth'),
        pruner=pruner, input_size=(32, 32), channel_spec=spec))
    shapes = {k: v.shape for k, v in again.student.state_dict().items()}
    assert shapes == {k: v.shape for k, v in distiller.student.state_dict().items()}


def test_benchmark_l1_and_paoding_prune_the_same_inner_layers(tmp_path):
    """tools/benchmarks/paoding_cnn.py compares methods at matching ratios: same layers, widths."""
    from tools.benchmarks.paoding_cnn import pruner_cfg
    _, model = stock(RESNET, tmp_path)
    shapes = {}
    for method in ('stochastic', 'l1'):
        backbone = __import__('copy').deepcopy(model.backbone)
        spec = PRUNERS.build(pruner_cfg(method, 0.3, (-1.0, 2.0))).prune(backbone, torch.zeros(1, 3, 32, 32))
        shapes[method] = {n: e['shapes'] for n, e in spec['modules'].items()}
    assert shapes['stochastic'] == shapes['l1'] and 'layer4.1.conv1' in shapes['l1']
