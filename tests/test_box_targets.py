"""Random target boxes for detection inversion (DeepInversion's ``box_weight``)."""
import pytest
import torch

from dfbf_mm.synthesis import DeepInversionSynthesizer, inversion_target
from dfbf_mm.synthesis.box_targets import BoxTargetLoss, move_boxes, sample_boxes


def tiny_yolox(num_classes=3):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    torch.manual_seed(0)
    model = MODELS.build(dict(
        type='YOLOX',
        backbone=dict(type='CSPDarknet', deepen_factor=0.33, widen_factor=0.125),
        neck=dict(type='YOLOXPAFPN', in_channels=[32, 64, 128], out_channels=16, num_csp_blocks=1),
        bbox_head=dict(type='YOLOXHead', num_classes=num_classes, in_channels=16, feat_channels=16,
                       stacked_convs=1),
        train_cfg=dict(assigner=dict(type='SimOTAAssigner', center_radius=2.5)),
        test_cfg=dict(score_thr=0.01, nms=dict(type='nms', iou_threshold=0.65))))
    return model.eval()


def test_sampled_boxes_are_seeded_and_inside_the_image():
    a = sample_boxes(6, (64, 96), 5, count=(1, 3), size=(0.1, 0.5), seed=7)
    b = sample_boxes(6, (64, 96), 5, count=(1, 3), size=(0.1, 0.5), seed=7)
    c = sample_boxes(6, (64, 96), 5, count=(1, 3), size=(0.1, 0.5), seed=8)
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))
    assert not all(x[0].shape == y[0].shape and torch.equal(x[0], y[0]) for x, y in zip(a, c))
    for boxes, labels in a:
        assert 1 <= len(boxes) <= 3 and len(labels) == len(boxes)
        assert labels.min() >= 0 and labels.max() < 5
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 96).all() and (boxes[:, 3] <= 64).all()
        assert (w >= 9.6 - 1e-4).all() and (w <= 48 + 1e-4).all() and (h >= 6.4 - 1e-4).all()


def test_boxes_follow_the_roll_flip_and_pooling_of_a_step():
    box = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    assert move_boxes(box, 1.0, 0, 0, False, (64, 64)).tolist() == box.tolist()
    # rolled by dy=2, dx=-15: the box moves with the image, clipped at the border
    assert move_boxes(box, 1.0, 2, -15, False, (64, 64)).tolist() == [[0.0, 22.0, 15.0, 42.0]]
    assert move_boxes(box, 1.0, 0, 0, True, (64, 64)).tolist() == [[34.0, 20.0, 54.0, 40.0]]
    # the half-resolution phase sees the image pooled by 2, then rolled in its own pixels
    assert move_boxes(box, 0.5, 1, 1, False, (32, 32)).tolist() == [[6.0, 11.0, 16.0, 21.0]]


def test_box_term_draws_the_targets_into_the_images():
    """The detector's own loss towards the sampled boxes falls when it is optimised, and it is
    left out (with the cache key unchanged) at box_weight 0."""
    model = tiny_yolox()
    target = inversion_target(model, 'detection', 'model')
    lo, hi = -3 * torch.ones(3, 1, 1), 3 * torch.ones(3, 1, 1)
    # flipped views (the boxes flipped with them); a random-weights detector: no roll, whose
    # wrap-around makes its loss erratic
    kw = dict(preset='fast', iterations=25, settle_iters=0, ce_weight=0, bn_weight=0.01, jitter=0, flip=True)
    plain = DeepInversionSynthesizer(**kw)
    boxed = DeepInversionSynthesizer(**kw, box_weight=1.0, boxes_per_image=[1, 2])
    assert 'box_weight' not in plain.config() and plain.config() == DeepInversionSynthesizer(
        **kw, box_weight=0.0).config()
    assert boxed.config()['box_weight'] == 1.0
    x0, s0 = plain.synthesize(target, 2, (64, 64), (lo, hi), seed=3, progress=False)
    x1, s1 = boxed.synthesize(target, 2, (64, 64), (lo, hi), seed=3, progress=False)
    assert 'box' not in s0 and s1['box'] > 0
    boxes = sample_boxes(2, (64, 64), 3, (1, 2), (0.1, 0.5), seed=3)
    term = BoxTargetLoss(target)
    with torch.no_grad():
        before, after = term(target(x0), boxes, (64, 64)), term(target(x1), boxes, (64, 64))
    assert after < 0.9 * before


def test_box_term_errors_name_the_setting():
    with pytest.raises(ValueError, match=r'^boxes_per_image: must be \(min, max\) integers'):
        DeepInversionSynthesizer('fast', boxes_per_image=(0, 2))
    with pytest.raises(ValueError, match=r'^box_size: must be \(min, max\) fractions'):
        DeepInversionSynthesizer('fast', box_size=(0.5, 1.5))
    with pytest.raises(ValueError, match=r'^box_weight: must be non-negative'):
        DeepInversionSynthesizer('fast', box_weight=-1)
    backbone = tiny_yolox().backbone  # invert='backbone': no head to take the loss from
    synth = DeepInversionSynthesizer('fast', iterations=1, box_weight=1.0)
    lo, hi = -torch.ones(3, 1, 1), torch.ones(3, 1, 1)
    with pytest.raises(ValueError, match=r"^box_weight: > 0 needs a one-stage detector inverted whole"):
        synth.synthesize(backbone, 2, (64, 64), (lo, hi), seed=0, progress=False)
