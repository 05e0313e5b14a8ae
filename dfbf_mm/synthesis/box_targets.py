"""Random target boxes for detection inversion (DIODE's self-guided boxes, Chawla et al. 2021).

BN statistics alone describe the texture of the training images, not where their objects are:
a detector inverted on them alone gives images with few confident objects. Here every image
of a batch gets a few random boxes with random classes, and the detector's own training loss
towards them (the stock head's ``loss_by_feat``: classification, box regression, objectness)
joins the DeepInversion loss, so each box fills with something the detector calls an object
of that class. The boxes follow the roll, flip and pooling of every step.
"""
from typing import List, Optional, Sequence, Tuple

import torch
from mmengine.structures import InstanceData
from torch import nn


def sample_boxes(batch_size: int, image_size: Tuple[int, int], num_classes: int,
                 count: Sequence[int], size: Sequence[float], seed: int
                 ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """Per image ``(boxes (k, 4) xyxy in pixels, labels (k,))``: ``k`` uniform in ``count``
    (inclusive), each side a uniform fraction in ``size`` of the image side, placed uniformly
    inside the image; classes uniform. Deterministic for ``seed`` on every device."""
    h, w = image_size
    g = torch.Generator().manual_seed(int(seed) ^ 0xB0C5)
    out = []
    for _ in range(batch_size):
        k = int(torch.randint(count[0], count[1] + 1, (1,), generator=g))
        frac = size[0] + (size[1] - size[0]) * torch.rand(k, 2, generator=g)
        bw, bh = frac[:, 0] * w, frac[:, 1] * h
        x1 = torch.rand(k, generator=g) * (w - bw)
        y1 = torch.rand(k, generator=g) * (h - bh)
        boxes = torch.stack([x1, y1, x1 + bw, y1 + bh], dim=1)
        out.append((boxes, torch.randint(0, num_classes, (k,), generator=g)))
    return out


def move_boxes(boxes: torch.Tensor, scale: float, dy: int, dx: int, flip: bool,
               input_size: Tuple[int, int]) -> torch.Tensor:
    """``boxes`` (full-size pixels) on the step's network input of ``input_size``: scaled by
    ``scale`` (pooling), rolled by ``(dy, dx)`` (clipped at the border, where the roll wraps),
    then flipped horizontally."""
    h, w = input_size
    b = boxes * scale + boxes.new_tensor([dx, dy, dx, dy])
    b = torch.stack([b[:, 0].clamp(0, w), b[:, 1].clamp(0, h), b[:, 2].clamp(0, w), b[:, 3].clamp(0, h)], 1)
    if flip:
        b = torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], 1)
    return b


def check_count_and_size(count, size) -> None:
    """One-line errors for box settings that cannot be sampled."""
    if (not isinstance(count, (tuple, list)) or len(count) != 2
            or not all(isinstance(v, int) for v in count) or not 1 <= count[0] <= count[1]):
        raise ValueError(f'boxes_per_image: must be (min, max) integers with 1 <= min <= max, got {count!r}')
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not 0 < float(size[0]) <= float(size[1]) <= 1):
        raise ValueError(f'box_size: must be (min, max) fractions of the image side with '
                         f'0 < min <= max <= 1, got {size!r}')


class BoxTargetLoss:
    """The detector's own loss towards random boxes, on the raw head outputs of a target.

    Args:
        target: an ``invert='model'`` target (:class:`ModelTensors`) of a one-stage mmdet
            detector, whose ``bbox_head`` has the stock ``loss_by_feat``.
    """

    def __init__(self, target: nn.Module):
        model = getattr(target, 'model', None)
        head = getattr(model, 'bbox_head', None)
        if head is None or getattr(model, 'roi_head', None) is not None or not hasattr(head, 'loss_by_feat'):
            raise ValueError("box_weight: > 0 needs a one-stage detector inverted whole "
                             "(synthetic_data.invert='model', a bbox_head with loss_by_feat); "
                             f'got a {type(model if model is not None else target).__name__}')
        self.head = head
        self.num_classes = int(head.num_classes)

    def __call__(self, out, targets: Sequence[Tuple[torch.Tensor, torch.Tensor]],
                 image_size: Tuple[int, int]) -> torch.Tensor:
        # float32 outputs: the stock assigners compare them with float32 boxes (bf16 under amp)
        out = [[t.float() for t in level] for level in out]
        device = out[0][0].device
        gts = [InstanceData(bboxes=b.to(device), labels=l.to(device)) for b, l in targets]
        metas = [dict(img_shape=tuple(image_size), pad_shape=tuple(image_size),
                      batch_input_shape=tuple(image_size), scale_factor=(1.0, 1.0))] * len(gts)
        losses = self.head.loss_by_feat(*out, gts, metas)
        total: Optional[torch.Tensor] = None
        for value in losses.values():
            for v in (value if isinstance(value, (list, tuple)) else [value]):
                total = v.float() if total is None else total + v.float()
        return total


__all__ = ['sample_boxes', 'move_boxes', 'BoxTargetLoss', 'check_count_and_size']
