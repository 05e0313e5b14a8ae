"""Torch-Pruning pruners for conv and per-channel layers it does not handle by itself.

Torch-Pruning prunes a layer through the pruner registered for its type. Two kinds of conv
layers of the OpenMMLab backbones are not covered:

* a conv held as a bare ``weight`` Parameter that the module passes to ``F.conv2d`` itself
  (mmdet's ``TridentConv``): Torch-Pruning sees an unknown parameter and an element-wise op,
  so every group through it is skipped (it "couples a bare nn.Parameter");
* a ``nn.Conv2d`` subclass carrying more per-output-channel tensors than ``weight``/``bias``
  (mmcv's ``ConvAWS2d``: ``weight_gamma``/``weight_beta``, DetectoRS): the stock conv pruner
  slices the weight but not them, and the forward breaks.

:func:`conv_like_pruners` finds such layer types in a backbone; they are registered with
``DependencyGraph.build_dependency(customized_pruners=...)`` and pruned by
:class:`ConvLikePruner`, which slices every tensor of the layer indexed by its output channels
(dim 0 of length ``out_channels``) and, on the input side, every tensor shaped like the weight.
Only leaf layers are taken (Torch-Pruning ignores a customized layer's children) that return
one tensor (or a one-tensor list, TridentConv's test branch) while traced.

Per-channel layers that keep bare per-channel parameters and no Torch-Pruning type (mmpretrain's
``GRN`` of ConvNeXt V2: ``gamma``/``beta`` of ``in_channels`` entries, behind the FFN's first
Linear) make every group through them "couple a bare nn.Parameter".
:func:`channel_wise_pruners` finds them and :class:`ChannelWisePruner` removes their entries
with the channels of the group they are in (input and output channels are the same ones).
"""
from contextlib import contextmanager
from typing import Dict, Sequence

import torch
import torch.nn as nn
from torch_pruning import ops
from torch_pruning.pruner import function

from ..utils import eval_mode


def _own_tensors(layer: nn.Module):
    yield from ((n, p) for n, p in layer.named_parameters(recurse=False) if p is not None)
    yield from ((n, b) for n, b in layer.named_buffers(recurse=False) if b is not None)


def _index(layer: nn.Module, name: str, t: torch.Tensor, keep: Sequence[int], dim: int) -> None:
    new = torch.index_select(t.detach(), dim, torch.tensor(keep, dtype=torch.long, device=t.device))
    if isinstance(t, nn.Parameter):
        setattr(layer, name, nn.Parameter(new.contiguous(), requires_grad=t.requires_grad))
    else:
        layer._buffers[name] = new.contiguous()


class ConvLikePruner(function.BasePruningFunc):
    """Prunes a conv-like layer (``weight`` of shape ``(out, in // groups, *kernel)``, int
    ``in_channels``/``out_channels``): output channels slice every own tensor whose dim 0 has
    ``out_channels`` entries (weight, bias, per-channel buffers), input channels every own
    tensor shaped like the weight (weight, ConvAWS's ``weight_diff`` of SAC)."""
    TARGET_MODULES = None

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        n = layer.out_channels
        keep = sorted(set(range(n)) - set(idxs))
        for name, t in list(_own_tensors(layer)):
            if t.dim() >= 1 and t.shape[0] == n:
                _index(layer, name, t, keep, 0)
        layer.out_channels = len(keep)
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        keep = sorted(set(range(layer.in_channels)) - set(idxs))
        groups = getattr(layer, 'groups', 1)
        shape = tuple(layer.weight.shape)
        for name, t in list(_own_tensors(layer)):
            if tuple(t.shape) == shape:
                _index(layer, name, t, keep[:len(keep) // groups] if groups > 1 else keep, 1)
        layer.in_channels = len(keep)
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.out_channels

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.in_channels

    def get_in_channel_groups(self, layer: nn.Module) -> int:
        return getattr(layer, 'groups', 1)

    def get_out_channel_groups(self, layer: nn.Module) -> int:
        return getattr(layer, 'groups', 1)


def _is_conv_like(m: nn.Module) -> bool:
    """A leaf conv layer Torch-Pruning's own pruners do not cover (see the module docstring)."""
    w = getattr(m, 'weight', None)
    out_c, in_c = getattr(m, 'out_channels', None), getattr(m, 'in_channels', None)
    if next(m.children(), None) is not None or not isinstance(w, nn.Parameter) or w.dim() not in (3, 4, 5) \
            or not all(isinstance(c, int) and not isinstance(c, bool) for c in (out_c, in_c)) \
            or getattr(m, 'transposed', False) or w.shape[0] != out_c \
            or w.shape[1] * getattr(m, 'groups', 1) != in_c:
        return False
    if isinstance(m, ops.TORCH_CONV):  # known to Torch-Pruning: only when it has more per-channel tensors
        return any(n not in ('weight', 'bias') and t.dim() >= 1 and t.shape[0] == out_c for n, t in _own_tensors(m))
    return True


def _one_tensor(x) -> bool:
    """A tensor, or a list/tuple of exactly one (TridentConv's input and output in eval mode)."""
    return isinstance(_single(x), torch.Tensor)


class _TracedList(list):
    """A one-tensor list output that shows Torch-Pruning's tracing hook its tensor's grad_fn."""

    @property
    def grad_fn(self):
        return self[0].grad_fn

    @property
    def shape(self):
        return self[0].shape


class _Opaque(torch.autograd.Function):
    """``out`` (computed without grad) as a function of ``x`` only: one autograd node from the
    layer's input to its output, so the ops that build its weight (ConvAWS's standardisation:
    a view of the weight) are not traced as if the input flowed through them."""

    @staticmethod
    def forward(ctx, x, out):
        return out.clone()

    @staticmethod
    def backward(ctx, grad):
        return None, None


def _single(x):
    while isinstance(x, (list, tuple)) and len(x) == 1:
        x = x[0]
    return x


def conv_like_pruners(backbone: nn.Module, example_inputs: torch.Tensor) -> Dict[type, ConvLikePruner]:
    """``{layer type: ConvLikePruner}`` for the conv-like layer types of ``backbone`` whose
    instances all return one tensor on ``example_inputs`` (one forward, only when there are
    candidates); empty for almost every backbone."""
    candidates = {type(m) for m in backbone.modules() if _is_conv_like(m)}
    if not candidates:
        return {}
    bad, hooks = set(), []

    def record(m, inputs, out):  # one input, one output: a conv, not e.g. a deformable conv(x, offset)
        if not (_one_tensor(inputs) and _one_tensor(out)):
            bad.add(type(m))
    for m in backbone.modules():
        if type(m) in candidates:
            hooks.append(m.register_forward_hook(record))
    try:
        with eval_mode(backbone), torch.no_grad():  # the mode Torch-Pruning traces in
            backbone(example_inputs)
    finally:
        for h in hooks:
            h.remove()
    return {t: ConvLikePruner() for t in candidates - bad}


class ChannelWisePruner(function.BasePruningFunc):
    """Prunes a per-channel layer (every own tensor 1-D of ``in_channels`` entries, output shaped
    like its input): a channel removed is removed from each of its tensors."""
    TARGET_MODULES = None

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        keep = sorted(set(range(layer.in_channels)) - set(idxs))
        for name, t in list(_own_tensors(layer)):
            _index(layer, name, t, keep, 0)
        layer.in_channels = len(keep)
        return layer

    prune_in_channels = prune_out_channels  # the same channels on both sides

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.in_channels

    get_in_channels = get_out_channels


def _is_channel_wise(m: nn.Module) -> bool:
    """A leaf layer of no Torch-Pruning type whose own tensors are all 1-D of ``in_channels``."""
    n = getattr(m, 'in_channels', None)
    tensors = list(_own_tensors(m))
    return (isinstance(n, int) and not isinstance(n, bool) and n > 1 and bool(tensors)
            and next(m.children(), None) is None and ops.module2type(m) == ops.OPTYPE.ELEMENTWISE
            and getattr(m, 'out_channels', n) == n and all(tuple(t.shape) == (n,) for _, t in tensors))


def channel_wise_pruners(backbone: nn.Module, example_inputs: torch.Tensor) -> Dict[type, ChannelWisePruner]:
    """``{layer type: ChannelWisePruner}`` for the per-channel layer types of ``backbone`` (GRN)
    whose instances all return one tensor of their input's shape on ``example_inputs``."""
    candidates = {type(m) for m in backbone.modules() if _is_channel_wise(m)}
    if not candidates:
        return {}
    bad, hooks = set(), []

    def record(m, inputs, out):
        x = _single(inputs)
        if not (isinstance(x, torch.Tensor) and isinstance(out, torch.Tensor) and out.shape == x.shape):
            bad.add(type(m))
    for m in backbone.modules():
        if type(m) in candidates:
            hooks.append(m.register_forward_hook(record))
    try:
        with eval_mode(backbone), torch.no_grad():
            backbone(example_inputs)
    finally:
        for h in hooks:
            h.remove()
    return {t: ChannelWisePruner() for t in candidates - bad}


@contextmanager
def traceable_outputs(backbone: nn.Module, pruners: Dict[type, function.BasePruningFunc]):
    """Within the block (Torch-Pruning's trace) each layer of ``pruners`` is one opaque node from
    its input to its output (:class:`_Opaque`), and a one-tensor list output stays a list whose
    ``grad_fn`` Torch-Pruning's tracing hook can read."""
    def wrap(m, inputs, out):
        x, t = _single(inputs), _single(out)
        t = _Opaque.apply(x, t.detach()) if x.requires_grad else t
        return _TracedList([t]) if isinstance(out, list) else t
    hooks = [m.register_forward_hook(wrap) for m in backbone.modules() if type(m) in pruners]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()
