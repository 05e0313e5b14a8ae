"""dfbf.distill.neck_weight: the frozen stock neck runs on each backbone's outputs, and what it
produces is matched (distillation/model_outputs.py); the stock outputs invert='model' inverts."""
import pytest
import torch
from mmengine.config import Config

import dfbf_mm  # noqa: F401
from dfbf_mm.distillation.model_outputs import check_neck_outputs
from dfbf_mm.registry import MODELS
from dfbf_mm.stock_model import build_stock_model, dense_head, stock_model_cfg, stock_outputs
from tiny_data import TINY_CLASSIFIER_CFG as STOCK
from dfbf_mm.utils import output_tensors



def distiller(tmp_path, sparsity=0.5, **distill):
    cfg = Config.fromstring(STOCK, '.py')
    teacher = build_stock_model(cfg)
    torch.save({'state_dict': teacher.state_dict()}, tmp_path / 't.pth')
    model = MODELS.build(dict(
        type='DataFreeDistiller', model=stock_model_cfg(cfg), teacher_checkpoint=str(tmp_path / 't.pth'),
        pruner=dict(type='L1FilterPruner', sparsity=sparsity), input_size=(32, 32), distill=distill))
    return model, teacher


def test_neck_term_trains_the_backbone_only(tmp_path):
    model, teacher = distiller(tmp_path, neck_weight=1.0)
    # building checked the neck/head on the teacher in eval mode: its BN statistics are the checkpoint's
    for k, v in teacher.state_dict().items():
        assert torch.equal(model.teacher.state_dict()[k], v), k
    model.train()
    assert model.student.backbone.training
    assert not model.student.neck.training and not model.student.head.training
    losses = model(torch.randn(4, 3, 32, 32), mode='loss')
    assert set(losses) == {'loss_feat', 'loss_neck'}
    assert losses['loss_neck'] > 0
    head_before = {k: v.clone() for k, v in model.student.head.state_dict().items()}
    losses['loss_neck'].backward()
    assert all(p.grad is None for p in model.student.head.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.student.backbone.parameters())
    for k, v in model.student.head.state_dict().items():
        assert torch.equal(head_before[k], v)


def test_unpruned_student_has_zero_neck_loss(tmp_path):
    model, _ = distiller(tmp_path, sparsity=0.0, neck_weight=1.0, bn='frozen')
    losses = model.train()(torch.randn(4, 3, 32, 32), mode='loss')
    assert float(losses['loss_neck']) == pytest.approx(0, abs=1e-6)
    with pytest.raises(ValueError, match=r'^dfbf\.distill: unknown key .head_weight.'):
        distiller(tmp_path, neck_weight=1.0, head_weight=1.0)  # the head term went


def test_off_by_default(tmp_path):
    model, _ = distiller(tmp_path)
    assert set(model.train()(torch.randn(2, 3, 32, 32), mode='loss')) == {'loss_feat'}


def _stock(path, **backbone):
    from mmengine.hub import get_config
    cfg = get_config(path) if '::' in path else Config.fromfile(path)
    if backbone:
        cfg.model.backbone.update(backbone)
    return build_stock_model(cfg).eval()


@pytest.mark.slow
def test_detector_outputs_one_stage_head_two_stage_rpn_detr_neck():
    x = torch.randn(2, 3, 64, 64)
    yolox = _stock('configs/benchmarks/digits_det_teacher.py')
    with torch.no_grad():
        neck, head = stock_outputs(yolox, output_tensors(yolox.backbone(x)), head=True)
    assert len(neck) == 3 and len(head) == 9  # 3 levels x (cls, box, objectness)
    assert head[0].shape[1] == 10
    rcnn = _stock('mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py', init_cfg=None)
    assert dense_head(rcnn) is rcnn.rpn_head  # the RoI head needs proposals
    with torch.no_grad():
        neck, head = stock_outputs(rcnn, output_tensors(rcnn.backbone(x)), head=True)
    assert len(neck) == 5 and len(head) == 10  # 5 levels x (objectness, deltas)
    # invert='model' on a two-stage detector: backbone, neck and RPN (its tensor forward needs
    # image metas for the proposals and failed with a TypeError)
    from dfbf_mm.synthesis import inversion_target
    with torch.no_grad():
        outs = inversion_target(rcnn, 'detection', 'model')(x)
    assert len(outs) == 15 and all(torch.is_tensor(t) for t in outs)
    detr = _stock('mmdet::detr/detr_r50_8xb2-150e_coco.py', init_cfg=None)
    outs = output_tensors(detr.backbone(x))
    check_neck_outputs(detr, outs)  # its neck runs on the backbone outputs alone
    assert dense_head(detr) is None  # its head reads the transformer's queries


def test_negative_weight_is_refused_in_one_line():
    from dfbf_mm.distillation.feature_loss import FeatureMimicLoss
    with pytest.raises(ValueError, match='^neck_weight: must be a number >= 0, got -1'):
        FeatureMimicLoss(neck_weight=-1)
