"""The object prior for dense detection heads: sampling, geometry under jitter, the one-line error."""
import pytest
import torch
from torch import nn

from dfbf_mm.synthesis import DeepInversionSynthesizer
from dfbf_mm.synthesis.object_prior import object_prior_loss, sample_objects


def test_sampled_objects_per_image():
    objs = sample_objects(5, 3, torch.Generator().manual_seed(0))
    counts = torch.bincount(objs[:, 0].long(), minlength=5)
    assert objs.shape[1] == 5 and counts.min() >= 1 and counts.max() <= 3
    assert ((objs[:, 1:] >= 0) & (objs[:, 1:] < 1)).all()


def _maps(h=4, w=4, classes=3):
    cls = torch.zeros(1, classes, h, w, requires_grad=True)
    obj = torch.zeros(1, 1, h, w, requires_grad=True)
    return cls, obj


def test_loss_targets_the_object_cell_through_roll_and_flip():
    # one object at pixel (y=1, x=2) of an 8x8 input, class 2 of 3, on the only level (4x4)
    objects = torch.tensor([[0, 2.5 / 8, 1.5 / 8, 0.0, 0.9]])
    for shift, flipped, cell in [((0, 0), False, (0, 1)), ((4, 0), False, (2, 1)),
                                 ((0, 2), True, (0, 1)), ((2, 3), True, (1, 1))]:
        cls, obj = _maps()
        loss = object_prior_loss(([cls], [None], [obj]), objects, (8, 8), shift, flipped)
        loss.backward()
        grad = cls.grad[0].abs().sum(0)
        assert grad.nonzero().tolist() == [list(cell)], (shift, flipped)
        assert cls.grad[0, 2, cell[0], cell[1]] < 0 and obj.grad[0, 0, cell[0], cell[1]] < 0
    # a confident, correct head costs less than an unsure one
    cls, obj = _maps()
    unsure = object_prior_loss(([cls], [None], [obj]), objects, (8, 8))
    with torch.no_grad():
        cls[0, :, 0, 1] = torch.tensor([-5.0, -5.0, 5.0])
        obj[0, 0, 0, 1] = 5.0
    assert object_prior_loss(([cls], [None], [obj]), objects, (8, 8)) < unsure / 10


class TinyDenseDetector(nn.Module):
    """conv-BN backbone and a 2-level dense head returning (cls maps, box maps, objectness)."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.cls = nn.Conv2d(8, 3, 1)
        self.obj = nn.Conv2d(8, 1, 1)

    def forward(self, x, data_samples=None, mode='tensor'):
        f1 = self.backbone(x)
        f2 = nn.functional.avg_pool2d(f1, 2)
        return [self.cls(f1), self.cls(f2)], [f1, f2], [self.obj(f1), self.obj(f2)]


def test_synthesizer_lowers_the_object_term_and_rejects_other_outputs():
    from dfbf_mm.synthesis import inversion_target
    torch.manual_seed(0)
    target = inversion_target(TinyDenseDetector().eval(), 'detection', 'model')
    lo, hi = -3 * torch.ones(3, 1, 1), 3 * torch.ones(3, 1, 1)
    common = dict(iterations=1, half_res_iterations=0, jitter=2, object_weight=1.0, bn_weight=0.0,
                  tv_weight=0.0, l2_weight=0.0)
    _, first = DeepInversionSynthesizer('detection', **common).synthesize(
        target, 2, (16, 16), (lo, hi), seed=0, progress=False)
    _, last = DeepInversionSynthesizer('detection', **dict(common, iterations=200)).synthesize(
        target, 2, (16, 16), (lo, hi), seed=0, progress=False)
    assert last['obj'] < 0.8 * first['obj']  # a random tiny head cannot be made fully confident
    backbone_only = inversion_target(TinyDenseDetector().eval(), 'detection')
    with pytest.raises(ValueError, match=r'^object_weight: the object prior needs a dense detection head'):
        DeepInversionSynthesizer('detection', **common).synthesize(
            backbone_only, 2, (16, 16), (lo, hi), seed=0, progress=False)
    with pytest.raises(ValueError, match=r'^max_objects: must be a positive integer'):
        DeepInversionSynthesizer('detection', max_objects=0)
