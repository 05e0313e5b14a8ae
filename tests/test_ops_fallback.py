"""mmcv's compiled ops through torchvision where mmcv has no kernels (dfbf_mm/ops_fallback.py).

Forced onto CPU (``forced('torchvision')``) the fallback must give exactly mmcv's own CPU
results; on the ``meta`` device (no mmcv kernels, as CUDA with our CPU-ops wheel) the calls
must reach torchvision instead of failing in mmcv's dispatcher.
"""
import os.path as osp
import subprocess
import sys

import pytest
import torch
import torchvision
from mmengine.config import Config

import dfbf_mm  # noqa: F401  (installs the fallback)
from dfbf_mm import ops_fallback
from dfbf_mm.ops_fallback import forced
from dfbf_mm.stock_model import build_stock_model, load_weights

import mmcv._ext as ext  # noqa: E402
from mmcv import ops  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
torch.set_num_threads(1)


def _boxes(n, gen, scale=100.0):
    xy = torch.rand(n, 2, generator=gen) * scale
    return torch.cat([xy, xy + torch.rand(n, 2, generator=gen) * scale / 3 + 1], 1)


@pytest.fixture
def tv_calls(monkeypatch):
    """Names of the torchvision ops the fallback called."""
    calls = []
    for name in ('nms', 'roi_align', 'deform_conv2d'):
        real = getattr(torchvision.ops, name)

        def spy(*a, _real=real, _name=name, **k):
            calls.append(_name)
            return _real(*a, **k)
        monkeypatch.setattr(torchvision.ops, name, spy)
    return calls


def test_import_wraps_mmcv_ext():
    for name in ops_fallback.FALLBACKS:
        assert getattr(ext, name).dfbf_fallback == name
    # a fresh interpreter: a config's custom_imports (as in the exported deploy config) wraps them
    code = ("from mmengine.utils import import_modules_from_strings; "
            "import_modules_from_strings(['dfbf_mm']); import mmcv._ext as e; "
            "print(e.nms.dfbf_fallback, e.roi_align_forward.dfbf_fallback)")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=REPO)
    assert out.stdout.split() == ['nms', 'roi_align_forward'], out.stderr[-2000:]


def test_nms_and_batched_nms_equal_mmcv_on_cpu(tv_calls):
    gen = torch.Generator().manual_seed(0)
    boxes, scores = _boxes(500, gen), torch.rand(500, generator=gen)
    # (no exactly equal scores: mmcv's CPU sort orders ties its own way, torchvision's is stable)
    idxs = torch.randint(0, 4, (500,), generator=gen)
    for offset in (0, 1):
        for thr in (0.3, 0.7):
            dets, keep = ops.nms(boxes, scores, thr, offset=offset)
            with forced('torchvision'):
                dets_tv, keep_tv = ops.nms(boxes, scores, thr, offset=offset)
            assert torch.equal(keep, keep_tv) and torch.equal(dets, dets_tv)
    cfg = dict(type='nms', iou_threshold=0.65)
    dets, keep = ops.batched_nms(boxes, scores, idxs, cfg)
    with forced('torchvision'):
        dets_tv, keep_tv = ops.batched_nms(boxes, scores, idxs, cfg)
    assert torch.equal(keep, keep_tv) and torch.equal(dets, dets_tv)
    assert tv_calls.count('nms') == 5


@pytest.mark.parametrize('aligned', [True, False])
@pytest.mark.parametrize('sampling_ratio', [0, 2])
def test_roi_align_forward_and_backward_equal_mmcv_on_cpu(aligned, sampling_ratio, tv_calls):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 16, 16, generator=gen, requires_grad=True)
    rois = torch.cat([torch.randint(0, 2, (20, 1), generator=gen).float(), _boxes(20, gen, 60)], 1)
    layer = ops.RoIAlign((7, 7), spatial_scale=0.25, sampling_ratio=sampling_ratio, aligned=aligned)
    out = layer(x, rois)
    grad, = torch.autograd.grad(out.square().sum(), x)
    with forced('torchvision'):
        out_tv = layer(x, rois)
        grad_tv, = torch.autograd.grad(out_tv.square().sum(), x)
    assert torch.equal(out, out_tv)
    torch.testing.assert_close(grad_tv, grad, rtol=0, atol=1e-5)
    assert tv_calls == ['roi_align']


@pytest.mark.parametrize('modulated', [False, True])
def test_deform_conv_equals_mmcv_on_cpu(modulated, tv_calls):
    torch.manual_seed(2)
    if modulated:
        layer = ops.ModulatedDeformConv2dPack(4, 6, 3, padding=1, deform_groups=2)
    else:
        layer = ops.DeformConv2dPack(4, 6, 3, padding=1, groups=2, deform_groups=2)
    torch.nn.init.normal_(layer.conv_offset.weight, std=0.1)  # non-zero offsets
    x = torch.randn(2, 4, 10, 10, requires_grad=True)
    params = [x, *layer.parameters()]
    out = layer(x)
    grads = torch.autograd.grad(out.square().sum(), params)
    with forced('torchvision'):
        out_tv = layer(x)
        grads_tv = torch.autograd.grad(out_tv.square().sum(), params)
    torch.testing.assert_close(out_tv, out, rtol=0, atol=1e-5)
    for g_tv, g in zip(grads_tv, grads):
        torch.testing.assert_close(g_tv, g, rtol=1e-4, atol=1e-4)
    assert set(tv_calls) == {'deform_conv2d'}


def test_ms_deform_attn_runs_mmcv_pytorch_path():
    """mmcv's CUDA-only multi-scale deformable attention: its own PyTorch version, with grads."""
    from mmcv.ops.multi_scale_deform_attn import (MultiScaleDeformableAttnFunction,
                                                  multi_scale_deformable_attn_pytorch)
    gen = torch.Generator().manual_seed(3)
    shapes, start = torch.tensor([[8, 8], [4, 4]]), torch.tensor([0, 64])
    value = torch.randn(2, 80, 2, 4, generator=gen, requires_grad=True)
    loc = torch.rand(2, 5, 2, 2, 3, 2, generator=gen, requires_grad=True)
    weights = torch.rand(2, 5, 2, 2, 3, generator=gen, requires_grad=True)
    with pytest.raises(RuntimeError, match='implementation for device cpu not found'):
        MultiScaleDeformableAttnFunction.apply(value, shapes, start, loc, weights, 64)
    ref = multi_scale_deformable_attn_pytorch(value, shapes, loc, weights)
    grads = torch.autograd.grad(ref.square().sum(), [value, loc, weights])
    with forced('torchvision'):
        out = MultiScaleDeformableAttnFunction.apply(value, shapes, start, loc, weights, 64)
        grads_fb = torch.autograd.grad(out.square().sum(), [value, loc, weights])
    assert torch.equal(out, ref)
    for g_fb, g in zip(grads_fb, grads):
        torch.testing.assert_close(g_fb, g)


def _predictions(model, data):
    with torch.no_grad():
        results = model.test_step(data)
    return [(r.pred_instances.bboxes, r.pred_instances.scores, r.pred_instances.labels) for r in results]


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for t, u in zip(x, y):
            assert torch.equal(t, u)


def test_digits_detector_predictions_unchanged(tmp_path, tv_calls):
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import DATASETS, init_default_scope
    from tools.benchmarks import make_digits, train_teacher
    root = str(tmp_path / 'digits')
    make_digits.build(root, seed=0, tasks=('det',), det_images=(1, 4))
    cfg = train_teacher.load_task_config('det', root)
    init_default_scope(cfg.default_scope)
    dataset = DATASETS.build(cfg.test_dataloader.dataset)
    data = pseudo_collate([dataset[i] for i in range(len(dataset))])
    model = build_stock_model(Config.fromfile(osp.join(REPO, 'configs/benchmarks/digits_det_teacher.py')))
    load_weights(model, osp.join(REPO, 'checkpoints/digits_det_teacher.pth'))
    model.eval()
    mmcv_preds = _predictions(model, data)
    assert not tv_calls
    with forced('torchvision'):
        tv_preds = _predictions(model, data)
    assert tv_calls and set(tv_calls) == {'nms'}
    assert sum(len(p[0]) for p in mmcv_preds) >= 4  # a trained detector: digits found
    _assert_same(mmcv_preds, tv_preds)


def test_faster_rcnn_roi_head_outputs_equal(tv_calls):
    from mmengine.hub import get_config
    from mmengine.structures import InstanceData
    cfg = get_config('mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py')
    cfg.model.backbone.init_cfg = None
    cfg.model.test_cfg.rcnn.score_thr = 0.0  # random weights: keep every box
    torch.manual_seed(4)
    model = build_stock_model(cfg).eval()
    x = torch.randn(1, 3, 96, 128)
    from mmdet.structures import DetDataSample
    sample = DetDataSample(metainfo=dict(img_shape=(96, 128), ori_shape=(96, 128), scale_factor=(1.0, 1.0)))
    with torch.no_grad():
        feats = model.extract_feat(x)
        proposals = model.rpn_head.predict(feats, [sample], rescale=False)
        gen = torch.Generator().manual_seed(5)
        fixed = InstanceData(bboxes=_boxes(40, gen, 90), scores=torch.rand(40, generator=gen),
                             labels=torch.zeros(40, dtype=torch.long))
        outs = (model.roi_head.forward(feats, [fixed]), model.roi_head.predict(feats, proposals, [sample]))
        with forced('torchvision'):
            proposals_tv = model.rpn_head.predict(feats, [sample], rescale=False)
            outs_tv = (model.roi_head.forward(feats, [fixed]), model.roi_head.predict(feats, proposals_tv, [sample]))
    assert set(tv_calls) == {'nms', 'roi_align'}
    assert torch.equal(proposals[0].bboxes, proposals_tv[0].bboxes)
    for a, b in zip(outs[0], outs_tv[0]):  # RoI head tensors (cls scores, box deltas)
        assert torch.equal(a, b)
    a, b = outs[1][0], outs_tv[1][0]
    assert len(a.bboxes) > 0
    for key in ('bboxes', 'scores', 'labels'):
        assert torch.equal(a[key], b[key])


def test_meta_device_reaches_torchvision_not_mmcv(tv_calls):
    """No mmcv kernels on meta (as on CUDA with a CPU-ops mmcv): torchvision's kernels run."""
    assert ops_fallback.uses_fallback(torch.device('meta'))
    assert not ops_fallback.uses_fallback(torch.device('cpu'))
    gen = torch.Generator().manual_seed(6)
    boxes, scores = _boxes(10, gen).to('meta'), torch.rand(10, generator=gen).to('meta')
    # torchvision's meta kernel of nms is reached: it refuses the data-dependent output size
    # (mmcv's dispatcher said: nms_impl: implementation for device meta not found.)
    with pytest.raises(RuntimeError, match='torchvision::nms'):
        ops.nms(boxes, scores, 0.5)
    with pytest.raises(RuntimeError, match='torchvision::nms'):
        ops.batched_nms(boxes, scores, torch.zeros(10, dtype=torch.long, device='meta'),
                        dict(type='nms', iou_threshold=0.5))
    x = torch.randn(2, 4, 16, 16, device='meta', requires_grad=True)
    rois = torch.zeros(5, 5, device='meta')
    out = ops.RoIAlign((7, 7), 0.25)(x, rois)
    assert out.shape == (5, 4, 7, 7) and out.device.type == 'meta'
    grad, = torch.autograd.grad(out.sum(), x)
    assert grad.shape == x.shape
    dcn = ops.DeformConv2dPack(4, 6, 3, padding=1).to('meta')
    if torchvision.__version__.startswith('0.16.'):  # the torch 2.1 stack: no meta kernel there yet
        with pytest.raises(NotImplementedError, match="torchvision::deform_conv2d' with arguments from the 'Meta'"):
            dcn(x)
    else:
        assert dcn(x).shape == (2, 6, 16, 16)
    assert tv_calls == ['nms', 'nms', 'roi_align', 'deform_conv2d']
    with forced('mmcv'):  # without the fallback: mmcv's dispatcher has nothing for meta
        with pytest.raises(RuntimeError, match='nms_impl: implementation for device meta not found'):
            ops.nms(boxes, scores, 0.5)


def test_refusals_are_one_line(monkeypatch):
    x, rois = torch.randn(1, 4, 8, 8, device='meta'), torch.zeros(2, 5, device='meta')
    with pytest.raises(ValueError) as e:
        ops.RoIAlign((2, 2), pool_mode='max')(x, rois)
    assert "\n" not in str(e.value) and str(e.value).startswith("RoIAlign: pool_mode='max' has no torchvision")
    monkeypatch.setenv('DFBF_MMCV_OPS', 'cuda')
    with pytest.raises(ValueError, match=r"^DFBF_MMCV_OPS: 'cuda' is not one of auto, torchvision, mmcv$"):
        ops_fallback.install()
    with pytest.raises(ValueError, match="^mode: 'gpu' is not one of"):
        with forced('gpu'):
            pass
