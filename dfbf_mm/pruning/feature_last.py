"""Ops that keep the feature (last) dim of token tensors, trusted in groups of feature-last layers.

Torch-Pruning indexes a Linear's channels on the last dim and a conv's on dim 1, but traces
every reshape and split as if the channels were on dim 1. Where a group's layers all index
their channels on the last dim (:func:`is_feature_last_layer`: Linear, LayerNorm over one dim,
BatchNorm1d on ``(M, C)``, a per-channel layer such as GRN), three ops keep a feature index
where it is, so such groups are pruned through them:

* the view ``F.linear`` puts in front of its matrix product for an N-D input (:func:`is_linear_flatten`:
  the hidden units of a transformer FFN);
* any reshape whose input and output end in the same dim (:func:`keeps_last_dim`: LeViT's
  ``bn(x.flatten(0, 1)).reshape_as(x)`` around a BatchNorm1d); its output shape is recorded
  while the graph is traced (:class:`ShapeRecorder`), since the autograd node keeps only the input's;
* a split along the last dim of a 3-D or larger input (:func:`last_dim_split`: the two halves of
  the SwiGLU FFN, ``w12(x).chunk(2, dim=-1)``), mapped by chunk number
  (:func:`map_last_dim_split`); a group holding all of such a split's equal chunks removes the
  same positions from each (its ``divisor``), since the chunks are multiplied channel by channel.

In a group with any other layer (a conv: channels on dim 1) these ops stay barriers.
"""
from typing import Dict, Optional

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode
from torch_pruning import ops as tp_ops
from torch_pruning.dependency.index_mapping import _SplitIndexMapping

LAST_DIM_SPLIT = '_dfbf_last_dim_split'  # attribute set on a traced split mapped by map_last_dim_split


class ShapeRecorder(TorchFunctionMode):
    """Within the block, ``shapes[t.grad_fn]`` is the shape of every tensor ``t`` a torch function
    returns (the output shape of each reshape, which its autograd node does not keep)."""

    def __init__(self):
        super().__init__()
        self.shapes: Dict[object, tuple] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.grad_fn is not None:
            self.shapes[out.grad_fn] = tuple(out.shape)
        return out


def _no_mapping(node) -> bool:
    """Torch-Pruning set no index mapping on the op (it takes channel i to channel i)."""
    deps = list(node.dependencies) + [d for n in node.inputs + node.outputs for d in n.dependencies
                                      if d.target is node]
    return all(f is None for d in deps for f in d.index_mapping)


def is_linear_flatten(node) -> bool:
    """True for the view ``F.linear`` puts in front of ``addmm`` (``mm`` without a bias) for an
    N-D input.

    ``(..., C) -> (M, C)`` merges the leading (token) dims and keeps the feature dim, so a
    feature index maps to itself (Torch-Pruning traces it as a reshape).
    """
    if not isinstance(node.module, tp_ops._ReshapeOp) or len(node.outputs) != 1:
        return False
    sizes = getattr(node.grad_fn, '_saved_self_sym_sizes', None)
    mm = node.outputs[0]
    if sizes is None or len(sizes) < 3 or not isinstance(mm.module, tp_ops._ElementWiseOp) or \
            not str(mm.module._grad_fn).lower().startswith(('addmmbackward', 'mmbackward')) or len(mm.outputs) != 1:
        return False
    linear = mm.outputs[0].module
    if not isinstance(linear, nn.Linear) or int(sizes[-1]) != linear.in_features:
        return False
    return _no_mapping(node)


def keeps_last_dim(node, shapes: Dict[object, tuple]) -> bool:
    """True for a traced reshape whose input and output (both 2-D or more) end in the same dim:
    element ``[..., c]`` stays in position ``c`` of the last dim."""
    if not isinstance(node.module, tp_ops._ReshapeOp):
        return False
    sizes, out = getattr(node.grad_fn, '_saved_self_sym_sizes', None), shapes.get(node.grad_fn)
    return (sizes is not None and out is not None and len(sizes) >= 2 and len(out) >= 2
            and int(sizes[-1]) == int(out[-1]) and _no_mapping(node))


def _chunk_of(split_node, out_node) -> Optional[int]:
    """The chunk of ``split_node`` that ``out_node`` takes, or None (none, or several)."""
    fns = out_node.grad_fn.next_functions if out_node.grad_fn is not None else ()
    nrs = [nr for fn, nr in fns if fn is split_node.grad_fn]
    return nrs[0] if len(nrs) == 1 else None


def last_dim_split(node) -> Optional[list]:
    """Chunk widths of a traced split along the last dim of a 3-D or larger input whose every
    consumer takes one chunk, each chunk once; None for any other op."""
    fn = node.grad_fn
    sizes, dim = getattr(fn, '_saved_self_sym_sizes', None), getattr(fn, '_saved_dim', None)
    if not isinstance(node.module, tp_ops._SplitOp) or sizes is None or dim is None or len(sizes) < 3:
        return None
    dim = int(dim)
    dim = dim - 2 ** 64 if dim >= 2 ** 63 else dim  # -1 is saved as an unsigned 64-bit int
    if dim % len(sizes) != len(sizes) - 1:
        return None
    width = int(sizes[-1])
    split = getattr(fn, '_saved_split_sizes', None)
    if split is None:
        size = int(getattr(fn, '_saved_split_size', 0) or 0)
        if size <= 0:
            return None
        split = [size] * (width // size) + ([width % size] if width % size else [])
    split = [int(s) for s in split]
    chunks = [_chunk_of(node, out) for out in node.outputs]
    if sum(split) != width or None in chunks or sorted(chunks) != list(range(len(split))):
        return None
    return split


def map_last_dim_split(node) -> None:
    """Index mappings of a split marked ``LAST_DIM_SPLIT``, by chunk number, from its current
    ``split_sizes`` (Torch-Pruning's split pruner updates them, not the offsets)."""
    offsets = [0]
    for s in node.module.split_sizes:
        offsets.append(offsets[-1] + s)
    node.module.offsets = offsets
    for out in node.outputs:
        i = _chunk_of(node, out)
        for dep in node.dependencies:
            if dep.target is out:
                dep.index_mapping[0] = _SplitIndexMapping(offset=offsets[i:i + 2], reverse=False)
        for dep in out.dependencies:
            if dep.target is node:
                dep.index_mapping[0] = _SplitIndexMapping(offset=offsets[i:i + 2], reverse=True)


def mark_last_dim_splits(graph) -> set:
    """Mark every last-dim split of ``graph`` (``LAST_DIM_SPLIT``, its sizes set); returns their nodes."""
    marked = set()
    for m, node in graph.module2node.items():
        split = last_dim_split(node) if isinstance(m, tp_ops._SplitOp) else None
        if split is not None:
            m.split_sizes = split
            setattr(m, LAST_DIM_SPLIT, True)
            marked.add(node)
    return marked


def equal_split_divisor(module, idxs) -> int:
    """Chunks of a marked split whose equal chunks a group holds entirely (1 otherwise)."""
    sizes = getattr(module, 'split_sizes', None) if getattr(module, LAST_DIM_SPLIT, False) else None
    if not sizes or len(set(sizes)) != 1 or len(idxs) != sum(sizes):
        return 1
    return len(sizes)


def is_feature_last_layer(m: nn.Module, node, channel_wise: tuple = ()) -> bool:
    """A layer that indexes its channels on the last dim of the tensors it was traced on."""
    if isinstance(m, nn.Linear) or isinstance(m, channel_wise):
        return True
    if isinstance(m, nn.LayerNorm):
        return len(m.normalized_shape) == 1
    if isinstance(m, nn.BatchNorm1d):
        x = getattr(node.grad_fn, '_saved_input', None)
        return isinstance(x, torch.Tensor) and x.dim() == 2
    return False
