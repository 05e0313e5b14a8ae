"""Bounded dependency-group search over a traced ``torch_pruning.DependencyGraph``.

Torch-Pruning's ``get_pruning_group`` / ``get_all_groups`` follow every dependency until the
set of (layer, indices) pairs stops growing. Two things make that run away on some graphs:

* ops that permute channels (``transpose`` / ``permute``, e.g. the view-transpose-view of a
  channel shuffle) are traced as element-wise ops, so the walk carries index sets through
  them unchanged, and around chunk/concat loops the same layer is reached again and again
  with new index subsets (ShuffleNetV2 did not finish in 150 s);
* the "already in the group" test scans the whole group for every new item (quadratic).

:func:`pruning_group` is the same walk as ``DependencyGraph.get_pruning_group`` (same items,
same order, same merge) with three changes: the membership test is a set look-up; the walk
does not continue *through* a ``barrier`` node (it is added to the group, which is then
never pruned: :mod:`.channel_groups` skips every group that contains one); and a deadline
turns a run-away search into a one-line :class:`TraceTimeLimitError`. Index mappings that
Torch-Pruning cannot make (its own exceptions) mark the op ``UNMAPPED`` instead of failing
the trace; such ops are barriers as well.
"""
import time
from contextlib import contextmanager
from typing import Callable, Collection, Iterator, Optional, Sequence

import torch.nn as nn
import torch_pruning as tp
from torch_pruning import _helpers, ops
from torch_pruning.dependency import index_mapping
from torch_pruning.dependency.dependency import Dependency
from torch_pruning.dependency.group import Group
from torch_pruning.pruner import function

# grad_fn names of traced ops that move channels to other positions (Torch-Pruning treats
# them as element-wise, i.e. as if channel i stayed channel i).
_PERMUTING_GRAD_FNS = ('transpose', 'permute', 'pixelshuffle', 'pixelunshuffle', 'channelshuffle')
UNMAPPED = '_dfbf_unmapped'  # attribute set on a traced op whose index mapping is missing or wrong


@contextmanager
def tolerant_index_mapping():
    """Within the block, an index mapping Torch-Pruning cannot work out is left unset, not fatal.

    * ``update_reshape_index_mapping`` divides by a channel count inferred behind the reshape,
      which is 0 when the view feeds a ``chunk`` (mmpose's ShuffleNetV2): ZeroDivisionError.
      Reshape ops are barriers of our search and every group that reaches one is skipped, so
      their mapping is never used.
    * ``update_concat_index_mapping`` sums the inferred widths of the inputs before checking
      them for None (LiteHRNet): TypeError. Such a concat is marked (``UNMAPPED``) and made a
      barrier too: without its offsets, indices would cross it unmapped.
    """
    reshape, concat = index_mapping.update_reshape_index_mapping, index_mapping.update_concat_index_mapping
    if getattr(reshape, '_dfbf_tolerant', False):  # nested
        yield
        return

    def update_reshape(graph, node):
        try:
            reshape(graph, node)
        except ZeroDivisionError:
            pass

    def update_concat(graph, node):
        try:
            concat(graph, node)
        except TypeError:
            setattr(node.module, UNMAPPED, True)

    update_reshape._dfbf_tolerant = True
    index_mapping.update_reshape_index_mapping = update_reshape
    index_mapping.update_concat_index_mapping = update_concat
    try:
        yield
    finally:
        index_mapping.update_reshape_index_mapping = reshape
        index_mapping.update_concat_index_mapping = concat


def update_index_mapping(graph: tp.DependencyGraph, skip: Collection = ()) -> None:
    """Torch-Pruning's ``update_index_mapping`` under :func:`tolerant_index_mapping`, leaving out
    the nodes in ``skip`` (barriers: no pruned group uses their mapping, and recomputing the
    reshape ones is what makes Torch-Pruning spend seconds per group on LiteHRNet)."""
    updates = {ops.OPTYPE.CONCAT: 'update_concat_index_mapping', ops.OPTYPE.SPLIT: 'update_split_index_mapping',
               ops.OPTYPE.RESHAPE: 'update_reshape_index_mapping', ops.OPTYPE.UNBIND: 'update_unbind_index_mapping',
               ops.OPTYPE.SLICE: 'update_slice_index_mapping', ops.OPTYPE.EXPAND: 'update_expand_index_mapping'}
    with tolerant_index_mapping():
        for node in list(graph.module2node.values()):
            name = updates.get(node.type)
            if name is not None and node not in skip:
                getattr(index_mapping, name)(graph, node)  # looked up now: the tolerant versions


class TraceTimeLimitError(ValueError):
    """The dependency search ran past ``trace_time_limit`` seconds."""


def is_permuting_op(module) -> bool:
    """True for a traced element-wise pseudo-op whose autograd node permutes dimensions."""
    if not isinstance(module, ops._ElementWiseOp):
        return False
    name = str(module._grad_fn).lower()
    return any(k in name for k in _PERMUTING_GRAD_FNS)


class Deadline:
    """``check(where)`` raises :class:`TraceTimeLimitError` once ``limit`` seconds have passed."""

    def __init__(self, limit: Optional[float], what: str):
        self.limit = limit
        self.what = what
        self.start = time.perf_counter()

    def check(self, where: Callable[[], str]) -> None:
        if self.limit is not None and time.perf_counter() - self.start > self.limit:
            raise TraceTimeLimitError(
                f'backbone: {self.what}: the Torch-Pruning dependency search exceeded '
                f'trace_time_limit={self.limit:g} s ({where()}); raise trace_time_limit or '
                'exclude the layers with ignore=[...]')


def pruning_group(graph: tp.DependencyGraph, module: nn.Module, pruning_fn: Callable,
                  idxs: Sequence[int], barriers: Collection = (), deadline: Optional[Deadline] = None,
                  where: Callable[[], str] = lambda: '?', update_mapping: bool = True,
                  mark_unmappable: bool = False) -> Group:
    """``graph.get_pruning_group(module, pruning_fn, idxs)``, bounded (see module docstring).

    An index mapping that raises (Torch-Pruning's split/concat mappings with offsets it could
    not infer) propagates, unless ``mark_unmappable``: then the op it leads to is marked
    ``UNMAPPED``, added to the group with the unmapped indices and not passed (the caller
    must skip such a group).
    """
    if module not in graph.module2node:
        raise ValueError(f'Module {module} is not in the dependency graph.')
    if isinstance(module, ops.TORCH_CONV) and module.groups == module.out_channels and module.out_channels > 1:
        pruning_fn = function.prune_depthwise_conv_out_channels
    idxs = [_helpers._HybridIndex(idx=i, root_idx=i) for i in idxs]
    if update_mapping:
        update_index_mapping(graph, skip=barriers)

    group = Group()
    root_node = graph.module2node[module]
    group.add_dep(Dependency(pruning_fn, pruning_fn, source=root_node, target=root_node), idxs)
    seen = set()  # (target node, handler, indices) of every item in the group
    visited = set()
    stack = [(group[0].dep, idxs)]
    steps = 0
    while stack:
        dep, idxs = stack.pop(-1)
        node, fn = dep.target, dep.handler
        visited.add(node)
        steps += 1
        if deadline is not None and steps % 64 == 0:
            deadline.check(where)
        if node in barriers and node is not root_node:
            continue
        for new_dep in node.dependencies:
            if not new_dep.is_triggered_by(fn):
                continue
            new_idxs = idxs
            try:
                for mapping in new_dep.index_mapping:
                    if mapping is not None:
                        new_idxs = mapping(new_idxs)
            except Exception:
                if not mark_unmappable:
                    raise
                setattr(new_dep.target.module, UNMAPPED, True)
                group.add_dep(new_dep, idxs)
                continue
            if len(new_idxs) == 0:
                continue
            key = (new_dep.target, new_dep.handler, tuple(new_idxs))
            if new_dep.target in visited and key in seen:
                continue
            group.add_dep(new_dep, new_idxs)
            seen.add(key)
            stack.append((new_dep, new_idxs))

    # merge items on the same layer and handler, as Torch-Pruning's Group.add_and_merge does
    # (concatenate, drop repeated indices; an item never merged keeps its list as it is)
    order, lists, seen_idx = [], {}, {}
    for n, (dep, idxs) in enumerate(group.items):
        if deadline is not None and n % 256 == 255:
            deadline.check(where)
        if isinstance(dep.target.module, nn.Parameter) and any(
                dep.target.module is p for p in graph.ignored_params):
            continue
        k = (dep.target, dep.handler)
        if k not in lists:
            order.append((k, dep))
            lists[k] = list(idxs)
            continue
        if k not in seen_idx:
            have, out = set(), []
            for x in lists[k]:
                if x.idx not in have:
                    out.append(x)
                    have.add(x.idx)
            lists[k], seen_idx[k] = out, have
        have = seen_idx[k]
        for x in idxs:
            if x.idx not in have:
                lists[k].append(x)
                have.add(x.idx)
    merged = Group()
    for k, dep in order:
        merged.add_dep(dep, lists[k])
    merged._DG = graph
    for i in range(len(merged)):
        hybrid = merged[i].idxs
        item = _helpers.GroupItem(merged[i].dep, _helpers.to_plain_idxs(hybrid))
        item.root_idxs = _helpers.to_root_idxs(hybrid)
        merged[i] = item
    return merged


def all_groups(graph: tp.DependencyGraph, ignored_layers: Sequence = (), root_module_types=(),
               barriers: Collection = (), deadline: Optional[Deadline] = None,
               names: Optional[dict] = None) -> Iterator[Group]:
    """``graph.get_all_groups(ignored_layers, root_module_types)``, bounded."""
    ignored = {id(m) for m in list(ignored_layers) + list(graph.IGNORED_LAYERS_IN_TRACING)}
    visited_layers = set()
    names = names or {}
    update_index_mapping(graph)
    for m in list(graph.module2node.keys()):
        if id(m) in ignored or not isinstance(m, tuple(root_module_types)) or id(m) in visited_layers:
            continue
        pruner = graph.get_pruner_of_module(m)
        if pruner is None or pruner.get_out_channels(m) is None:
            continue
        if deadline is not None:
            deadline.check(lambda: f'before the group rooted at {names.get(m, type(m).__name__)}')
        n = pruner.get_out_channels(m)
        group = pruning_group(graph, m, pruner.prune_out_channels, list(range(n)), barriers, deadline,
                              lambda: f'in the group rooted at {names.get(m, type(m).__name__)}',
                              update_mapping=False, mark_unmappable=True)
        prunable = True
        for dep, _ in group:
            if graph.is_out_channel_pruning_fn(dep.handler):
                visited_layers.add(id(dep.target.module))
                if id(dep.target.module) in ignored:
                    prunable = False
        if prunable:
            yield group
