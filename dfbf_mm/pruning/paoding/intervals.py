"""Interval arithmetic: sound value ranges of every unit from an assumed input box.

Paoding decides what to prune from the weights and an input range only (no data). Each op maps
a box ``[lo, hi]`` (elementwise, same shape as the activation) to a box that contains every
output the op can produce for an input inside the box:

- affine ops (Linear, Conv, eval-mode BatchNorm): split the weights into positive and negative
  parts, ``lo' = W+ lo + W- hi + b`` and ``hi' = W+ hi + W- lo + b``;
- monotone non-decreasing ops (ReLU, sigmoid, tanh, pooling by max or mean, flatten): apply the
  op to both ends.
"""
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

Box = Tuple[torch.Tensor, torch.Tensor]

# Elementwise activations that never decrease: f(lo) <= f(x) <= f(hi) for x in [lo, hi].
MONOTONE_ACTS = (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.ELU, nn.Hardtanh,
                 nn.Hardsigmoid)
# Pooling that is monotone and positively homogeneous (applied to each end).
MONOTONE_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
                  nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.Flatten)
TRANSPARENT = (nn.Dropout, nn.Identity)


def interval_linear(lo: torch.Tensor, hi: torch.Tensor, weight: torch.Tensor,
                    bias: torch.Tensor = None) -> Box:
    """Box of ``x @ weight.T + bias`` for ``x`` in ``[lo, hi]`` (last dimension = features)."""
    mid, rad = (hi + lo) / 2, (hi - lo) / 2
    out_mid = F.linear(mid, weight, bias)
    out_rad = F.linear(rad, weight.abs())
    return out_mid - out_rad, out_mid + out_rad


def interval_conv(lo: torch.Tensor, hi: torch.Tensor, conv: nn.Module) -> Box:
    """Box of a Conv1d/Conv2d output (centre-radius form: exact for one affine op)."""
    mid, rad = (hi + lo) / 2, (hi - lo) / 2
    w = conv.weight.detach().to(lo.dtype)
    b = conv.bias.detach().to(lo.dtype) if conv.bias is not None else None
    out_mid = conv._conv_forward(mid, w, b)
    out_rad = conv._conv_forward(rad, w.abs(), None)
    return out_mid - out_rad, out_mid + out_rad


def batchnorm_affine(bn: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` of an eval-mode BatchNorm: ``y = scale * x + shift`` per channel."""
    mean = bn.running_mean if bn.running_mean is not None else torch.zeros(bn.num_features)
    var = bn.running_var if bn.running_var is not None else torch.ones(bn.num_features)
    scale = 1.0 / torch.sqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale.detach(), shift.detach()


def interval_batchnorm(lo: torch.Tensor, hi: torch.Tensor, bn: nn.Module) -> Box:
    """Box of an eval-mode BatchNorm output; a negative scale swaps the ends."""
    scale, shift = batchnorm_affine(bn)
    view = (1, -1) + (1, ) * (lo.dim() - 2)
    scale, shift = scale.view(view), shift.view(view)
    a, b = lo * scale + shift, hi * scale + shift
    return torch.minimum(a, b), torch.maximum(a, b)


def is_supported(module: nn.Module) -> bool:
    """Whether :func:`interval_module` can propagate a box soundly through ``module``."""
    return isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d)
                      + MONOTONE_ACTS + MONOTONE_POOLS + TRANSPARENT)


@torch.no_grad()
def interval_module(lo: torch.Tensor, hi: torch.Tensor, module: nn.Module) -> Box:
    """Box of ``module``'s output for inputs in ``[lo, hi]`` (module in eval semantics)."""
    if isinstance(module, nn.Linear):
        return interval_linear(lo, hi, module.weight, module.bias)
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return interval_conv(lo, hi, module)
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return interval_batchnorm(lo, hi, module)
    if isinstance(module, MONOTONE_ACTS + MONOTONE_POOLS):
        return module(lo.clone()), module(hi.clone())  # clone: in-place ReLU must not alias
    if isinstance(module, TRANSPARENT):
        return lo, hi
    raise ValueError(f'module: interval propagation does not support {type(module).__name__}')


def act_box(lo: torch.Tensor, hi: torch.Tensor, act: str) -> Box:
    """Box after a prunable layer's activation ('relu' or 'sigmoid')."""
    if act == 'relu':
        return lo.clamp(min=0), hi.clamp(min=0)
    if act == 'sigmoid':
        return torch.sigmoid(lo), torch.sigmoid(hi)
    raise ValueError(f'act: {act!r} is not one of relu, sigmoid')
