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
import torch_pruning as tp


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


@torch.no_grad()
def remove_units(layer: nn.Module, next_layer: nn.Module, keep: Sequence[int],
                 norm: Optional[nn.Module] = None) -> None:
    """Physically keep only units ``keep`` of ``layer`` (its rows, ``next_layer``'s columns)
    and of ``norm``, a BatchNorm between the two (its parameters and running statistics);
    the tensors are cut by Torch-Pruning's pruning functions, as L1FilterPruner's are."""
    keep = {int(k) for k in keep}
    if not keep:
        raise ValueError('keep: at least one unit must be kept')
    width = layer.weight.shape[0]
    removed = [i for i in range(width) if i not in keep]
    if not removed:
        return
    linear = isinstance(layer, nn.Linear)
    (tp.prune_linear_out_channels if linear else tp.prune_conv_out_channels)(layer, removed)
    if norm is not None:
        tp.prune_batchnorm_out_channels(norm, removed)
    (tp.prune_linear_in_channels if isinstance(next_layer, nn.Linear)
     else tp.prune_conv_in_channels)(next_layer, removed)
