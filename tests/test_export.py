"""Export: tools/prune.py on a stock config writes a deploy config + checkpoint + spec that
plain MMEngine loads strictly (also after moving the folder); profile rows are consistent."""
import os
import os.path as osp
import shutil

import pytest
import torch
from mmengine.config import Config
from mmengine.hub import get_config
from mmengine.runner import load_checkpoint

import dfbf_mm.pruning  # noqa: F401  (registers PrunedBackbone)
from dfbf_mm.export import count_macs_params, export_pruned_model, profile_backbones
from dfbf_mm.registry import MODELS
from dfbf_mm.stock_model import build_stock_model, load_weights

from tools import prune as prune_tool

STOCK = 'mmpretrain::resnet/resnet18_8xb16_cifar10.py'


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('export')
    cfg = get_config(STOCK)
    cfg_path = str(tmp / 'stock.py')
    cfg.dump(cfg_path)
    torch.manual_seed(0)
    teacher = build_stock_model(cfg)
    ckpt = str(tmp / 'teacher.pth')
    torch.save(dict(state_dict=teacher.state_dict(), meta=dict(dataset_meta=dict(classes=list('abcdefghij')))), ckpt)
    out = str(tmp / 'out')
    paths = prune_tool.main([cfg_path, ckpt, '--sparsity', '0.5', '--pruner-cfg', 'layer_dependent=True', '--out', out,
                             '--latency-runs', '1', '--batch-sizes', '1'])
    return cfg, ckpt, out, paths


def _build_deploy(path):
    cfg = Config.fromfile(path)
    assert cfg.custom_imports['imports'] == ['dfbf_mm']
    model = build_stock_model(cfg)
    load_checkpoint(model, cfg.load_from, strict=True)
    return cfg, model.eval()


@pytest.mark.slow
def test_prune_tool_writes_exactly_three_loadable_files(exported, tmp_path):
    cfg, _, out, paths = exported
    # the three loadable files, plus where the cut went (kept channels per group: table, plot)
    assert sorted(os.listdir(out)) == ['pruned.pth', 'pruned.py', 'pruned_channel_spec.json',
                                       'pruned_groups.md', 'pruned_groups.png']
    deploy, model = _build_deploy(paths['config'])
    # Only model.backbone and custom_imports/load_from differ from the stock config.
    assert deploy.model.backbone.type == 'PrunedBackbone'
    assert deploy.model.backbone.backbone == cfg.model.backbone
    assert deploy.model.head == cfg.model.head
    ckpt = torch.load(paths['checkpoint'], weights_only=True)
    assert ckpt['meta']['channel_spec']['modules'] and ckpt['meta']['dataset_meta']['classes'][0] == 'a'
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model.backbone(x)[0]
    # The folder can move: paths in the deploy config are relative to it.
    moved = str(tmp_path / 'moved')
    shutil.copytree(out, moved)
    _, model2 = _build_deploy(osp.join(moved, 'pruned.py'))
    with torch.no_grad():
        assert torch.equal(model2.backbone(x)[0], ref)
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in build_stock_model(cfg).parameters())


def test_checkpoint_of_another_architecture_is_refused(exported):
    _, teacher_ckpt, _, paths = exported
    cfg = Config.fromfile(paths['config'])
    model = build_stock_model(cfg)
    with pytest.raises(ValueError, match=r"^checkpoint: '.*teacher.pth' does not match the model: \d+ tensors differ"):
        load_weights(model, teacher_ckpt)


def test_export_refuses_a_spec_of_another_pruning(exported, tmp_path):
    cfg, _, _, paths = exported
    spec = torch.load(paths['checkpoint'], weights_only=True)['meta']['channel_spec']
    with pytest.raises(ValueError, match=r'^spec: .* in the spec but .* in the model'):
        export_pruned_model(build_stock_model(cfg), cfg, spec, str(tmp_path / 'x'))
    with pytest.raises(FileNotFoundError, match=r'^channel_spec: file not found'):
        MODELS.build(dict(type='PrunedBackbone', backbone=dict(type='ResNet_CIFAR', depth=18),
                          channel_spec=str(tmp_path / 'missing.json')))


@pytest.mark.slow
def test_profile_rows(exported):
    cfg, _, _, paths = exported
    teacher = build_stock_model(cfg).backbone
    _, model = _build_deploy(paths['config'])
    rows, table = profile_backbones(teacher, model.backbone, (32, 32), batch_sizes=(1,), runs=1, warmup=1)
    by = {r['metric']: r for r in rows}
    assert by['params']['pruned'] < by['params']['teacher']
    assert by['MACs (1x3x32x32)']['ratio'] < 1
    assert by['channels layer4']['pruned'] < by['channels layer4']['teacher']
    assert 'speed-up / FLOPs-ratio (batch 1)' in by and table.count('\n') == len(rows) + 1


@pytest.mark.slow
def test_profile_compiled_rows_and_compile_failure(exported):
    """compile_options adds the latency rows of the compiled backbones (the 'eager' backend
    here: the wiring, without Inductor's minutes of compiling); a backend that fails leaves the
    eager rows and one row that says why."""
    cfg, _, _, paths = exported
    teacher = build_stock_model(cfg).backbone
    _, model = _build_deploy(paths['config'])
    rows, _ = profile_backbones(teacher, model.backbone, (32, 32), batch_sizes=(1, 2), runs=1, warmup=1,
                                compile_options=dict(backend='eager'))
    by = {r['metric']: r for r in rows}
    for b in (1, 2):
        assert by[f'latency ms (batch {b}, cpu, compiled)']['pruned'] > 0
        assert by[f'speed-up / FLOPs-ratio (batch {b}, compiled)']['pruned'] > 0
    rows, table = profile_backbones(teacher, model.backbone, (32, 32), batch_sizes=(1,), runs=1, warmup=1,
                                    compile_options=dict(backend='no_such_backend'))
    assert 'latency ms (batch 1, cpu)' in {r['metric'] for r in rows}
    assert rows[-1]['metric'] == 'compiled latency' and 'not measured: torch.compile failed' in rows[-1]['note']
    assert table.splitlines()[-1].startswith('| compiled latency | not measured')


def test_default_input_size_from_configs():
    assert prune_tool.default_input_size(get_config(STOCK)) == (32, 32)
    assert prune_tool.default_input_size(get_config('mmdet::yolox/yolox_s_8xb8-300e_coco.py')) == (640, 640)
    assert prune_tool.default_input_size(
        get_config('mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py')) == (384, 640)


def test_count_macs_counts_subclasses_of_conv_and_linear_once():
    """mmcv's FFN ``Linear`` (an nn.Linear subclass) and EfficientNet's Conv2dAdaptivePadding
    (an nn.Conv2d subclass) are counted like their base class; a wrapper counts once."""
    from mmcv.cnn import ConvModule
    from mmcv.cnn.bricks.conv2d_adaptive_padding import Conv2dAdaptivePadding
    from mmcv.cnn.bricks.transformer import FFN
    from torch_pruning.utils import op_counter

    from dfbf_mm.export import count_macs_params

    # Torch-Pruning's rules: linear = input elements * out_features + out_features (bias);
    # conv = k*k*in*out/groups per output position + out (bias) per position; ReLU = output
    # elements; BN = 2 * elements.
    ffn = FFN(embed_dims=8, feedforward_channels=16)  # Linear(8, 16), ReLU, Linear(16, 8)
    macs, params = count_macs_params(ffn, torch.randn(1, 5, 8))
    assert macs == (5 * 8 * 16 + 16) + 5 * 16 + (5 * 16 * 8 + 8) == 1384  # exact types: 80
    assert params == (8 * 16 + 16) + (16 * 8 + 8)

    conv = Conv2dAdaptivePadding(3, 4, 3, stride=2)  # 9x9 -> 5x5 ('same' padding)
    assert count_macs_params(conv, torch.randn(1, 3, 9, 9))[0] == 3 * 3 * 3 * 4 * 25 + 4 * 25  # exact types: 0

    # A wrapper module sums its layers once: ConvModule(padded conv without bias, BN, ReLU).
    cm = ConvModule(3, 4, 3, stride=2, conv_cfg=dict(type='Conv2dAdaptivePadding'), norm_cfg=dict(type='BN'))
    assert isinstance(cm.conv, Conv2dAdaptivePadding)
    assert count_macs_params(cm, torch.randn(1, 3, 9, 9))[0] == 3 * 3 * 3 * 4 * 25 + 2 * 100 + 100

    # A counted layer that delegates to a layer inside it is counted once, as itself.
    class Wrapped(torch.nn.Conv2d):
        def __init__(self):
            super().__init__(3, 4, 3, padding=1, bias=False)
            self.inner = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False)

        def forward(self, x):
            return self.inner(x)

    assert count_macs_params(Wrapped(), torch.randn(1, 3, 5, 5))[0] == 3 * 3 * 3 * 4 * 25
    assert op_counter.CUSTOM_MODULES_MAPPING == {}  # the module global is left as it was


def test_prune_tool_trace_time_limit_argument(exported, tmp_path):
    base = ['cfg.py', 'ckpt.pth', '--out', 'o']
    # unset: the pruner keeps its own default (60 s)
    assert 'trace_time_limit' not in prune_tool.pruner_config(Config(), prune_tool.parse_args(base))
    assert prune_tool.pruner_config(Config(), prune_tool.parse_args(
        base + ['--trace-time-limit', '2.5']))['trace_time_limit'] == 2.5
    assert prune_tool.parse_args(base + ['--trace-time-limit', '2.5']).trace_time_limit == 2.5
    for off in ('none', 'None', '0'):
        assert prune_tool.parse_args(base + ['--trace-time-limit', off]).trace_time_limit is None
    for bad in ('-1', 'soon', 'nan'):  # a usage error is a user error: run_cli prints one line
        with pytest.raises(ValueError, match=r'argument --trace-time-limit: .*not a number'):
            prune_tool.parse_args(base + ['--trace-time-limit', bad])
    # The limit reaches the pruner: a tiny one stops pruning with its one-line error.
    _, ckpt, _, _ = exported
    cfg_path = osp.join(osp.dirname(ckpt), 'stock.py')
    with pytest.raises(ValueError, match=r'exceeded trace_time_limit=1e-06 s'):
        prune_tool.main([cfg_path, ckpt, '--trace-time-limit', '1e-6', '--out', str(tmp_path / 'o')])
    assert not (tmp_path / 'o').exists()


def test_latencies_are_measured_in_turns():
    """measure_latencies alternates the models (one forward each per round) and restores modes."""
    from torch import nn

    from dfbf_mm.export import measure_latencies
    order = []

    class Tagged(nn.Module):
        def __init__(self, tag):
            super().__init__()
            self.tag = tag

        def forward(self, x):
            order.append(self.tag)
            return x

    a, b = Tagged('a'), Tagged('b')
    b.train()
    a.eval()
    times = measure_latencies([a, b], torch.zeros(1), runs=3, warmup=1)
    assert order == ['a', 'b'] * 4 and len(times) == 2 and all(t >= 0 for t in times)
    assert not a.training and b.training


@pytest.mark.slow
def test_prune_tool_fuses_a_reparameterisable_backbone(tmp_path):
    # RepVGG in training form sums branches: nothing prunes until it is fused (deploy form)
    cfg = get_config('mmpretrain::repvgg/repvgg-A0_8xb32_in1k.py')
    cfg_path = str(tmp_path / 'repvgg.py')
    cfg.dump(cfg_path)
    teacher = build_stock_model(cfg).eval()
    ckpt = str(tmp_path / 'teacher.pth')
    torch.save(dict(state_dict=teacher.state_dict()), ckpt)
    paths = prune_tool.main([cfg_path, ckpt, '--out', str(tmp_path / 'out'), '--input-size', '64', '64',
                             '--latency-runs', '1', '--batch-sizes', '1'])
    deploy_cfg, model = _build_deploy(paths['config'])
    assert deploy_cfg.model.backbone.backbone.deploy is True
    assert sum(p.numel() for p in model.backbone.parameters()) < 0.6 * sum(
        p.numel() for p in teacher.backbone.parameters())
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64), mode='tensor').shape == (1, 1000)


def test_macs_of_attention_called_with_keywords():
    # mmcv's attention (PVT, DETR necks) passes query/key/value as keywords
    attention = torch.nn.MultiheadAttention(16, 2)

    class Keywords(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = attention

        def forward(self, x):
            return self.attn(query=x, key=x, value=x)[0]

    class Positional(Keywords):
        def forward(self, x):
            return self.attn(x, x, x)[0]

    x = torch.randn(5, 1, 16)
    macs = count_macs_params(Keywords(), x)[0]
    assert macs == count_macs_params(Positional(), x)[0] > 0
