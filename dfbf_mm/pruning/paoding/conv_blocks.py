"""Our extension (not the paper's claim): Paoding on the inner channels of conv blocks.

In ``conv1 -> BN -> ReLU/Sigmoid -> conv2`` every output channel of conv1 is a hidden unit: at
each pixel, conv1 with BN folded into it is an affine map of the input patch and conv2 a
linear map of the activations, so the dense theory applies per pixel. Two channels with equal
folded filters and biases produce equal feature maps, and merging one into the other (adding
its conv2 input-channel kernels to the other's) is then exact, also at zero-padded borders.

The BN stays in the model: saliency and intervals use the folded affine map (scale and shift of
the eval-mode BN applied to conv1's filters and bias), merges change only conv2's input
kernels, and removal slices conv1, the BN and conv2 together. So the pruned model keeps the
stock module structure (and state-dict keys) and a channel spec rebuilds it from the stock
config. A block is only taken when conv1, the BN and the activation are each read by the next
op alone (autograd fan-out 1): a stem whose output also feeds a residual add or a downsample
branch is not a block.

The impact of a merge is measured at conv2's output channels (what lies after a block is, in
general, not a dense chain: residual adds, pooling heads), i.e. L and ENT over conv2's output
channels; the channel value intervals are the hull over all pixels.
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
import torch.nn as nn

from .chain import PRUNABLE_ACTS, TraceStep, single_use
from .intervals import TRANSPARENT, batchnorm_affine
from ...utils import pattern_matches


@dataclass
class ConvBlock:
    """``conv1 -> [bn] -> act -> conv2``; ``first_step`` indexes conv1 in the trace."""
    name: str
    conv1: nn.Conv2d
    bn_name: Optional[str]
    act: str
    next_name: str
    conv2: nn.Conv2d
    first_step: int
    bn: Optional[nn.Module] = None


def _skip_transparent(steps: List[TraceStep], k: int) -> int:
    while k < len(steps) and steps[k].sequential and isinstance(steps[k].module, TRANSPARENT):
        k += 1
    return k


def find_conv_blocks(steps: List[TraceStep], layers: Optional[Sequence[str]] = None) -> List[ConvBlock]:
    """Sequential ``Conv2d -> [BatchNorm2d] -> ReLU/Sigmoid -> Conv2d`` blocks (groups 1)."""
    calls = {}
    for s in steps:
        calls[id(s.module)] = calls.get(id(s.module), 0) + 1
    blocks = []
    for i, s in enumerate(steps):
        if type(s.module) is not nn.Conv2d or s.module.groups != 1:
            continue
        if layers is not None and not any(pattern_matches(p, s.name) for p in layers):
            continue
        bn, act = None, None
        k = _skip_transparent(steps, i + 1)
        if (k < len(steps) and steps[k].sequential and isinstance(steps[k].module, nn.BatchNorm2d)
                and steps[k].module.running_mean is not None):  # eval BN without stats is not affine
            bn, k = steps[k], _skip_transparent(steps, k + 1)
        if k < len(steps) and steps[k].sequential and type(steps[k].module) in PRUNABLE_ACTS:
            act, k = PRUNABLE_ACTS[type(steps[k].module)], k + 1
        k = _skip_transparent(steps, k)
        if act is None or k >= len(steps) or not steps[k].sequential or not single_use(steps[i:k]):
            continue
        nxt = steps[k].module
        if (type(nxt) is not nn.Conv2d or nxt.groups != 1 or nxt.in_channels != s.module.out_channels
                or any(calls[id(m)] > 1 for m in (s.module, nxt) + ((bn.module, ) if bn else ()))):
            continue
        blocks.append(ConvBlock(s.name, s.module, bn.name if bn else None, act, steps[k].name, nxt, i,
                                bn.module if bn else None))
    return blocks


def folded_affine(layer: nn.Module, bn: Optional[nn.Module] = None):
    """``(weight, bias)`` of ``bn(layer(x))`` as one Linear/conv (float64, detached; BN in eval
    mode); a missing bias is zero."""
    w = layer.weight.detach().double()
    b = layer.bias.detach().double() if layer.bias is not None else torch.zeros(
        w.shape[0], dtype=torch.float64, device=w.device)
    if bn is None:
        return w, b
    scale, shift = (t.double() for t in batchnorm_affine(bn))
    return w * scale.view(-1, *([1] * (w.dim() - 1))), b * scale + shift


@torch.no_grad()
def fold_batchnorm(model: nn.Module, block: ConvBlock) -> None:
    """Fold the block's eval-mode BN into conv1 and replace the BN by ``nn.Identity``.

    A utility (e.g. for deployment); the pruner does not fold: it keeps the stock structure.
    """
    if block.bn_name is None:
        return
    bn = model.get_submodule(block.bn_name)
    scale, shift = batchnorm_affine(bn)
    conv = block.conv1
    conv.weight.mul_(scale.view(-1, 1, 1, 1))
    bias = conv.bias.detach() * scale + shift if conv.bias is not None else shift
    conv.bias = nn.Parameter(bias.clone().to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)
    parent_name, _, attr = block.bn_name.rpartition('.')
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, nn.Identity())
    block.bn_name, block.bn = None, None
