"""``BoundedDependencyGraph``: Torch-Pruning's ``DependencyGraph`` with a group search that ends.

What upstream (torch-pruning 1.6) lacks, and is all this file adds:

* ops that permute channels (``transpose`` / ``permute``, e.g. the view-transpose-view of a
  channel shuffle) are traced as element-wise ops, so ``get_pruning_group`` carries index sets
  through them unchanged, and around chunk/concat loops reaches the same layer again and again
  with new index subsets (ShuffleNetV2 did not finish in 150 s). Here the walk stops at
  ``barriers`` (the node joins the group, which is then never pruned: :mod:`.channel_groups`
  skips every group that contains one);
* the "already in the group" test scans the whole group for every new item (quadratic); here
  it is a set look-up;
* no time limit: a deadline turns a run-away search into a one-line :class:`TraceTimeLimitError`;
* index mappings it cannot make raise from inside the trace (reshape before a chunk, concat of
  a split chunk, see :func:`tolerant_index_mapping`); here such an op is marked ``UNMAPPED``
  and becomes a barrier;
* it maps splits only along dim 1; a split along the last dim of token tensors that the caller
  marked (:mod:`.feature_last`) is mapped by chunk number.

Otherwise the walk is upstream's: same items, same order, same merge of items on one layer.
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

from .feature_last import LAST_DIM_SPLIT, map_last_dim_split

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

    A split marked ``LAST_DIM_SPLIT`` is mapped by :func:`~.feature_last.map_last_dim_split`.
    """
    reshape, concat = index_mapping.update_reshape_index_mapping, index_mapping.update_concat_index_mapping
    split = index_mapping.update_split_index_mapping
    if getattr(reshape, '_dfbf_tolerant', False):  # nested
        yield
        return

    def update_reshape(graph, node):
        try:
            reshape(graph, node)
        except ZeroDivisionError:
            pass

    def update_concat(graph, node):
        if node.type == ops.OPTYPE.CONCAT and node.module.concat_sizes is None:
            node.module.concat_sizes = concat_sizes_from_splits(graph, node)
        try:
            concat(graph, node)
            if node.type == ops.OPTYPE.CONCAT and node.module.offsets is None and _feeds_channel_concat(graph, node):
                with _no_out_size_check():  # the size check inferred the outer concat's width
                    concat(graph, node)
        except TypeError:
            setattr(node.module, UNMAPPED, True)

    def update_split(graph, node):
        if getattr(node.module, LAST_DIM_SPLIT, False):
            map_last_dim_split(node)
        else:
            split(graph, node)

    update_reshape._dfbf_tolerant = True
    index_mapping.update_reshape_index_mapping = update_reshape
    index_mapping.update_concat_index_mapping = update_concat
    index_mapping.update_split_index_mapping = update_split
    try:
        yield
    finally:
        index_mapping.update_reshape_index_mapping = reshape
        index_mapping.update_concat_index_mapping = concat
        index_mapping.update_split_index_mapping = split


# single-input autograd ops that keep the channel count (walked back from a concat input)
_CHANNEL_KEEPING_FNS = ('relu', 'gelu', 'silu', 'sigmoid', 'hardswish', 'hardsigmoid', 'leakyrelu', 'elu',
                        'clone', 'avgpool', 'maxpool', 'adaptiveavgpool', 'adaptivemaxpool', 'mulbackward0s',
                        'nativebatchnorm', 'cudnnbatchnorm', 'nativedropout', 'tobackward')


def _split_chunk_width(fn, nr: int) -> Optional[int]:
    """Channels of output ``nr`` of a channel split/chunk autograd node, or None."""
    sizes, dim = getattr(fn, '_saved_self_sym_sizes', None), getattr(fn, '_saved_dim', None)
    if sizes is None or dim != 1:
        return None
    split = getattr(fn, '_saved_split_sizes', None)
    if split is None:
        size = getattr(fn, '_saved_split_size', None)
        if not size:
            return None
        total = int(sizes[1])
        split = [size] * (total // size) + ([total % size] if total % size else [])
    return int(split[nr]) if nr < len(split) else None


def concat_sizes_from_splits(graph, cat_node) -> Optional[list]:
    """Input widths of a channel concat, or None when Torch-Pruning's inference is enough.

    Torch-Pruning infers a split chunk fed (directly or through an activation or pooling) into a
    concat as the width of the whole split input (Res2Net's ``cat((out, spx[-1]))``), so the
    offsets do not add up and the concat stays unmapped. Here such an input gets the width of its
    chunk, read from the split's autograd node; the other inputs keep Torch-Pruning's inference.
    """
    from torch_pruning.dependency import shape_infer
    fns = list(cat_node.grad_fn.next_functions)
    chunks = [_walk_to_split(fn, nr) for fn, nr in fns]
    if len(fns) != len(cat_node.inputs) or all(c is None for c in chunks):
        return None
    sizes = []
    for width, node in zip(chunks, cat_node.inputs):
        if width is None:
            width = shape_infer.infer_channels_between(graph, node, cat_node)
        if width is None:
            return None
        sizes.append(width)
    return sizes


def _feeds_channel_concat(graph, cat_node, depth: int = 8) -> bool:
    """True when ``cat_node`` (input widths known) is an input of a channel concat of the width
    they add up to (Res2Net's ``cat((cat((a, b)), c))``): Torch-Pruning checks a concat's width
    against the width it infers downstream, which behind another concat is the outer width."""
    sizes = cat_node.module.concat_sizes
    if depth <= 0 or not sizes or any(s is None for s in sizes) or len(cat_node.outputs) != 1:
        return False
    outer = cat_node.outputs[0]
    if outer.type != ops.OPTYPE.CONCAT or outer.grad_fn is None:
        return False
    pos = [i for i, (f, _) in enumerate(outer.grad_fn.next_functions) if f is cat_node.grad_fn]
    outer_sizes = outer.module.concat_sizes
    if len(pos) != 1 or not outer_sizes or pos[0] >= len(outer_sizes) or outer_sizes[pos[0]] != sum(sizes):
        return False
    return outer.module.offsets is not None or _feeds_channel_concat(graph, outer, depth - 1)


@contextmanager
def _no_out_size_check():
    from torch_pruning.dependency import shape_infer
    infer = shape_infer.infer_in_channels_recursively
    shape_infer.infer_in_channels_recursively = lambda *a, **k: None
    try:
        yield
    finally:
        shape_infer.infer_in_channels_recursively = infer


def _walk_to_split(fn, nr: int, hops: int = 4) -> Optional[int]:
    """Chunk width when ``fn`` (output ``nr``) is a split, or reaches one through channel-keeping ops."""
    for _ in range(hops):
        if fn is None:
            return None
        name = fn.name().lower()
        if 'split' in name:
            return _split_chunk_width(fn, nr)
        if not any(k in name for k in _CHANNEL_KEEPING_FNS):
            return None
        nxt = [(f, n) for f, n in fn.next_functions if f is not None and 'accumulategrad' not in f.name().lower()]
        if len(nxt) != 1:
            return None
        fn, nr = nxt[0]
    return None


def update_index_mapping(graph: tp.DependencyGraph, skip: Collection = ()) -> None:
    """Torch-Pruning's ``update_index_mapping`` under :func:`tolerant_index_mapping`, leaving out
    the nodes in ``skip`` (barriers: no pruned group uses their mapping, and recomputing the
    reshape ones is what makes Torch-Pruning spend seconds per group on LiteHRNet), except the
    last-dim splits a Linear root's group passes."""
    updates = {ops.OPTYPE.CONCAT: 'update_concat_index_mapping', ops.OPTYPE.SPLIT: 'update_split_index_mapping',
               ops.OPTYPE.RESHAPE: 'update_reshape_index_mapping', ops.OPTYPE.UNBIND: 'update_unbind_index_mapping',
               ops.OPTYPE.SLICE: 'update_slice_index_mapping', ops.OPTYPE.EXPAND: 'update_expand_index_mapping'}
    with tolerant_index_mapping():
        for node in list(graph.module2node.values()):
            name = updates.get(node.type)
            if name is not None and (node not in skip or getattr(node.module, LAST_DIM_SPLIT, False)):
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


class BoundedDependencyGraph(tp.DependencyGraph):
    """``tp.DependencyGraph`` whose group search is bounded (see the module docstring).

    ``barriers``: nodes the walk does not pass (set by the caller after tracing);
    ``linear_only``: barriers that a walk from a Linear root passes (the ops of
    :mod:`.feature_last` that keep the last dim of token tensors);
    ``deadline``: a :class:`Deadline` checked during the walk (None: no limit).
    """

    def __init__(self, deadline: Optional[Deadline] = None):
        super().__init__()
        self.barriers: Collection = frozenset()
        self.linear_only: Collection = frozenset()
        self.deadline = deadline

    def build_dependency(self, *args, **kwargs):
        with tolerant_index_mapping():
            return super().build_dependency(*args, **kwargs)

    def get_pruning_group(self, module: nn.Module, pruning_fn: Callable, idxs: Sequence[int],
                          where: Callable[[], str] = lambda: '?', update_mapping: bool = True,
                          mark_unmappable: bool = False) -> Group:
        """Upstream's ``get_pruning_group``, bounded. An index mapping that raises propagates,
        unless ``mark_unmappable``: then the op it leads to is marked ``UNMAPPED``, added to the
        group with the unmapped indices and not passed (the caller must skip such a group)."""
        barriers, deadline = self.barriers, self.deadline
        passable = self.linear_only if isinstance(module, nn.Linear) else frozenset()
        if module not in self.module2node:
            raise ValueError(f'Module {module} is not in the dependency graph.')
        if isinstance(module, ops.TORCH_CONV) and module.groups == module.out_channels and module.out_channels > 1:
            pruning_fn = function.prune_depthwise_conv_out_channels
        idxs = [_helpers._HybridIndex(idx=i, root_idx=i) for i in idxs]
        if update_mapping:
            update_index_mapping(self, skip=barriers)

        group = Group()
        root_node = self.module2node[module]
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
            if node in barriers and node is not root_node and node not in passable:
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
        return self._merged(group, where)

    def _merged(self, group: Group, where: Callable[[], str]) -> Group:
        """Items on the same layer and handler merged, as upstream's ``Group.add_and_merge`` does
        (concatenated, repeated indices dropped; an item never merged keeps its list as it is)."""
        deadline = self.deadline
        order, lists, seen_idx = [], {}, {}
        for n, (dep, idxs) in enumerate(group.items):
            if deadline is not None and n % 256 == 255:
                deadline.check(where)
            if isinstance(dep.target.module, nn.Parameter) and any(
                    dep.target.module is p for p in self.ignored_params):
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
        merged._DG = self
        for i in range(len(merged)):
            hybrid = merged[i].idxs
            item = _helpers.GroupItem(merged[i].dep, _helpers.to_plain_idxs(hybrid))
            item.root_idxs = _helpers.to_root_idxs(hybrid)
            merged[i] = item
        return merged

    def get_all_groups(self, ignored_layers: Sequence = (), root_module_types=(),
                       names: Optional[dict] = None) -> Iterator[Group]:
        """Upstream's ``get_all_groups``, bounded; ``names`` (module -> name) for the messages."""
        ignored = {id(m) for m in list(ignored_layers) + list(self.IGNORED_LAYERS_IN_TRACING)}
        visited_layers = set()
        names = names or {}
        update_index_mapping(self)
        for m in list(self.module2node.keys()):
            if id(m) in ignored or not isinstance(m, tuple(root_module_types)) or id(m) in visited_layers:
                continue
            pruner = self.get_pruner_of_module(m)
            if pruner is None or pruner.get_out_channels(m) is None:
                continue
            if self.deadline is not None:
                self.deadline.check(lambda: f'before the group rooted at {names.get(m, type(m).__name__)}')
            n = pruner.get_out_channels(m)
            group = self.get_pruning_group(m, pruner.prune_out_channels, list(range(n)),
                                           lambda: f'in the group rooted at {names.get(m, type(m).__name__)}',
                                           update_mapping=False, mark_unmappable=True)
            prunable = True
            for dep, _ in group:
                if self.is_out_channel_pruning_fn(dep.handler):
                    visited_layers.add(id(dep.target.module))
                    if id(dep.target.module) in ignored:
                        prunable = False
            if prunable:
                yield group
