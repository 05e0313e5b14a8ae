"""An object prior for inverting one-stage detectors (our extension, after DIODE's targets).

BN statistics alone say what textures a detector's training images had, not that they held
objects: the images come out as texture. A classifier gets its class signal from the CE term;
a dense detector head gets the analogue here: each synthetic image is assigned a few random
"objects" (position, pyramid level, class), and the head's class logit (and objectness, where
the head has one) at that cell is pushed towards "this class is here" with a one-hot BCE.
The objects follow the image through the jitter roll and flip, so they stay where they were
put.

Needs the tensor-mode output of a dense head: a tuple whose first element is the list of
per-level class maps ``(N, C, H_l, W_l)`` (mmdet YOLOX/FCOS/RetinaNet-style heads); with a
third element of 1-channel maps (YOLOX), those are the objectness maps.
"""
from typing import Optional

import torch
import torch.nn.functional as F


def sample_objects(batch_size: int, max_objects: int, generator: torch.Generator) -> torch.Tensor:
    """``(M, 5)`` rows ``(image, u, v, level_frac, class_frac)``; 1..max_objects per image.

    Positions ``u, v`` and the level/class fractions are in [0, 1), so they are drawn before
    the head's number of levels and classes is known.
    """
    rows = []
    for i in range(batch_size):
        k = int(torch.randint(1, max_objects + 1, (1,), generator=generator))
        draws = torch.rand(k, 4, generator=generator)
        rows.append(torch.cat([torch.full((k, 1), float(i)), draws], 1))
    return torch.cat(rows)


def dense_head_maps(out, field: str = 'object_weight'):
    """(class maps, objectness maps or None) of a dense head's tensor output, or a one-line error."""
    ok = (isinstance(out, (tuple, list)) and len(out) >= 1 and isinstance(out[0], (tuple, list))
          and len(out[0]) > 0 and all(torch.is_tensor(m) and m.dim() == 4 for m in out[0]))
    if not ok:
        raise ValueError(f'{field}: the object prior needs a dense detection head (tensor output '
                         f'= per-level class maps first); got {type(out).__name__}. Use '
                         "synthetic_data.invert='model' with a one-stage detector, or object_weight=0")
    objectness = None
    if (len(out) >= 3 and isinstance(out[2], (tuple, list)) and len(out[2]) == len(out[0])
            and all(torch.is_tensor(m) and m.dim() == 4 and m.shape[1] == 1 for m in out[2])):
        objectness = out[2]
    return out[0], objectness


def object_prior_loss(out, objects: torch.Tensor, input_size, shift=(0, 0),
                      flipped: bool = False) -> torch.Tensor:
    """Per object: BCE of its class logit towards 1, mean BCE of the other classes towards 0
    and BCE of the objectness towards 1, at its cell; averaged over the objects.

    Args:
        out: the dense head's tensor output for the batch as the network saw it.
        objects: rows of :func:`sample_objects`, positions relative to the un-jittered image.
        input_size: (H, W) of the network input (the image after pooling / upsampling).
        shift: the (dy, dx) roll applied to the input, in its pixels.
        flipped: whether the input was flipped left-right (after the roll).
    """
    cls_maps, obj_maps = dense_head_maps(out)
    h, w = input_size
    levels, num_classes = len(cls_maps), cls_maps[0].shape[1]
    img = objects[:, 0].long()
    y = (torch.floor(objects[:, 2] * h).long() + shift[0]) % h
    x = (torch.floor(objects[:, 1] * w).long() + shift[1]) % w
    if flipped:
        x = w - 1 - x
    level = torch.clamp((objects[:, 3] * levels).long(), max=levels - 1)
    cls = torch.clamp((objects[:, 4] * num_classes).long(), max=num_classes - 1)
    losses = []
    for lvl in range(levels):
        sel = level == lvl
        if not sel.any():
            continue
        cmap = cls_maps[lvl]
        hl, wl = cmap.shape[2:]
        cy = torch.clamp(y[sel] * hl // h, max=hl - 1)
        cx = torch.clamp(x[sel] * wl // w, max=wl - 1)
        logits = cmap[img[sel], :, cy, cx].float()  # (k, C)
        target = F.one_hot(cls[sel], num_classes).float()
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction='none')
        # the object's class present, the other classes absent (on average)
        positive = (bce * target).sum()
        negative = (bce * (1 - target)).sum() / max(num_classes - 1, 1)
        losses.append(positive + negative)
        if obj_maps is not None:
            obj = obj_maps[lvl][img[sel], 0, cy, cx].float()
            losses.append(F.binary_cross_entropy_with_logits(obj, torch.ones_like(obj),
                                                             reduction='sum'))
    return sum(losses) / max(len(objects), 1)


def check_max_objects(value: Optional[int]) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f'max_objects: must be a positive integer, got {value!r}')
