"""Pair merge (masking during the loop) and physical removal of merged units at the end.

Works for Linear units (rows of ``layer``, columns of ``next_layer``) and for conv channels
(output channels of ``layer``, input channels of ``next_layer``, channels of a BatchNorm
between them): all index units on dim 0 of the layer's weight and dim 1 of the next layer's.

During the progressive loop a merged unit stays in the tensors but is dead: its outgoing
weights are moved onto the kept unit and zeroed, its incoming weights and bias zeroed. A dead
unit then cannot influence anything (whatever a BN after it outputs is multiplied by zero), so the masked model and the physically shrunk model
compute exactly the same function; only :func:`remove_units` changes shapes.
"""
from typing import Optional, Sequence

import torch
import torch.nn as nn


@torch.no_grad()
def merge_units(layer: nn.Module, next_layer: nn.Module, removed: int, kept: int) -> None:
    """Merge hidden unit ``removed`` of ``layer`` into unit ``kept`` (in place).

    The next layer then reads ``h_kept`` where it read ``h_removed``: exact when the two units
    compute the same activation.
    """
    if removed == kept:
        raise ValueError(f'pair: a unit cannot be merged into itself (unit {removed})')
    next_layer.weight[:, kept] += next_layer.weight[:, removed]
    next_layer.weight[:, removed] = 0
    layer.weight[removed] = 0
    if layer.bias is not None:
        layer.bias[removed] = 0


def _shrink(param: torch.Tensor, index: torch.Tensor, dim: int) -> nn.Parameter:
    return nn.Parameter(param.detach().index_select(dim, index).clone(),
                        requires_grad=param.requires_grad)


@torch.no_grad()
def remove_units(layer: nn.Module, next_layer: nn.Module, keep: Sequence[int],
                 norm: Optional[nn.Module] = None) -> None:
    """Physically keep only units ``keep`` of ``layer`` (its rows, ``next_layer``'s columns)
    and of ``norm``, a BatchNorm between the two (its parameters and running statistics)."""
    index = torch.as_tensor(sorted(int(k) for k in keep), dtype=torch.long,
                            device=layer.weight.device)
    if index.numel() == 0:
        raise ValueError('keep: at least one unit must be kept')
    layer.weight = _shrink(layer.weight, index, 0)
    if layer.bias is not None:
        layer.bias = _shrink(layer.bias, index, 0)
    if norm is not None:
        for t in ('weight', 'bias'):
            if getattr(norm, t, None) is not None:
                setattr(norm, t, _shrink(getattr(norm, t), index, 0))
        for t in ('running_mean', 'running_var'):
            if getattr(norm, t, None) is not None:
                norm._buffers[t] = getattr(norm, t).index_select(0, index).clone()
        norm.num_features = index.numel()
    next_layer.weight = _shrink(next_layer.weight, index, 1)
    if isinstance(layer, nn.Linear):
        layer.out_features = index.numel()
    else:
        layer.out_channels = index.numel()
    if isinstance(next_layer, nn.Linear):
        next_layer.in_features = index.numel()
    else:
        next_layer.in_channels = index.numel()
