"""What DeepInversion inverts: the whole model, or only its backbone.

A classifier is always inverted whole: its logits give a class signal (the CE term). A
detector's or pose model's head needs boxes/keypoints that data-free synthesis does not have,
so by default (``invert='auto'``) only its backbone (where the pruning happens) is inverted;
``invert='model'`` runs the whole model in tensor mode instead, so the BN statistics of the
neck and head constrain the images too (more layers remembering the training data).
"""
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from ..stock_model import get_backbone
from .bn_statistics import bn_layers, model_name

TASKS = ('classification', 'detection', 'pose')
INVERT = ('auto', 'backbone', 'model')


class ClassifierLogits(nn.Module):
    """A stock classifier seen as ``x -> logits``: ``model(x, mode='tensor')``.

    mmpretrain's ImageClassifier returns the head's logits in tensor mode; a tuple output
    (multi-task heads) is reduced to its last element.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x, mode='tensor')
        if isinstance(out, (tuple, list)):
            out = out[-1]
        return out


class ModelTensors(nn.Module):
    """A stock detector / pose model seen as ``x -> model(x, mode='tensor')`` (raw head outputs).

    Only its BN layers matter for inversion; the outputs are returned for shape probing.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        # mmpose's forward has no default for data_samples; mmdet's does
        return self.model(x, None, mode='tensor')


def inversion_target(model: nn.Module, task: str, invert: str = 'auto') -> nn.Module:
    """The module to invert for ``task``: logits of a classifier; a detector's / pose model's
    backbone (``invert='auto'`` or ``'backbone'``) or whole tensor-mode forward (``'model'``)."""
    if task not in TASKS:
        raise ValueError(f'task: {task!r} is not one of {", ".join(TASKS)}')
    if invert not in INVERT:
        raise ValueError(f'invert: {invert!r} is not one of {", ".join(INVERT)}')
    if task == 'classification':
        if invert == 'backbone':
            raise ValueError("invert: 'backbone' is for detection/pose; a classifier is "
                             "inverted whole (its logits carry the class signal)")
        return ClassifierLogits(model)
    if invert == 'model':
        return ModelTensors(model)
    return get_backbone(model, field='teacher_model')


def num_classes_of(model: nn.Module) -> Optional[int]:
    """Number of classes of a stock classifier's head, when it says."""
    head = getattr(model, 'head', None)
    n = getattr(head, 'num_classes', None)
    return int(n) if isinstance(n, int) and n > 0 else None


def _spatial_sizes(target: nn.Module, x: torch.Tensor) -> Sequence[Tuple[int, int]]:
    """(h, w) of every 4-D BN input and 4-D output of one no-grad forward of ``target``."""
    sizes = []

    def hook(_, inputs, __):
        if inputs[0].dim() == 4:
            sizes.append(tuple(inputs[0].shape[2:]))

    handles = [m.register_forward_hook(hook) for _, m in bn_layers(target)]
    try:
        with torch.no_grad():
            out = target(x)
    finally:
        for h in handles:
            h.remove()
    outs = out if isinstance(out, (tuple, list)) else [out]
    sizes += [tuple(o.shape[2:]) for o in outs if torch.is_tensor(o) and o.dim() == 4]
    return sizes


def total_stride(target: nn.Module, channels: int, device, probe: int = 256) -> Optional[int]:
    """The target's total stride, measured as probe size / smallest feature map at ``probe``.

    Returns None when it cannot be measured (no 4-D feature maps, or a fixed-size network).
    """
    try:
        sizes = _spatial_sizes(target, torch.zeros(2, channels, probe, probe, device=device))
    except RuntimeError:
        return None
    smallest = min((min(s) for s in sizes if min(s) > 0), default=None)
    return None if smallest is None else max(1, round(probe / smallest))


def check_image_size(target: nn.Module, sizes: Sequence[Tuple[int, int]], channels: int,
                     device, field: str = 'image_size') -> None:
    """One-line error when the target cannot run on images of every (H, W) in ``sizes``.

    Catches images smaller than the total stride (which many networks silently turn into
    1x1 feature maps) as well as forwards that fail or produce empty feature maps.
    """
    smallest = min(sizes, key=lambda s: min(s))
    was_training = {m: m.training for m in target.modules()}
    target.eval()
    try:
        stride = total_stride(target, channels, device)
        if stride is not None and min(smallest) < stride:
            raise ValueError(f'{field}: {tuple(smallest)} is smaller than the total stride '
                             f'{stride} of {model_name(target)} (its last feature map would '
                             f'be empty); use images of at least {stride}x{stride} per phase')
        for h, w in sizes:
            try:
                maps = _spatial_sizes(target, torch.zeros(2, channels, h, w, device=device))
            except RuntimeError as e:
                raise ValueError(f'{field}: {model_name(target)} cannot run on {h}x{w} images '
                                 f'({str(e).splitlines()[0][:200]})') from None
            if any(min(s) == 0 for s in maps if len(s) == 2):
                raise ValueError(f'{field}: {h}x{w} images give an empty feature map in '
                                 f'{model_name(target)}; use larger images')
    finally:
        for m, mode in was_training.items():
            m.training = mode
