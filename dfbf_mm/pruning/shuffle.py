"""Channels through a channel shuffle: the pair of groups on its two sides, pruned as one.

A channel shuffle of ``G`` groups (``view(N, G, n, ...) -> transpose(1, 2) -> view(N, C, ...)``,
ShuffleNetV1) sends channel ``g*n + i`` (group ``g``, index ``i``) to position ``i*G + g``.
Torch-Pruning maps indices through it as if nothing moved, so the group search stops there
(:mod:`.group_search`) and leaves two groups: the channels in front of the shuffle (reached from
its input side: the layers producing them) and those behind it (reached from its output side:
the layers consuming them). Removing the same index set ``R`` from every one of the ``G``
groups in front, i.e. ``{g*n + i : i in R}``, removes exactly the blocks ``[i*G, i*G + G)``
behind it, and the shuffle of the narrower tensor (``view(N, G, n - |R|, ...)``) keeps the
remaining channels in the same order: the pruned network computes what the stock one does with
those channels removed.

A grouped conv behind the shuffle (``d`` groups of ``C/d`` inputs) must lose as many inputs in
each group: only blocks lying wholly inside one of its groups are removed, the same number from
each (a *step* removes one block per conv group, ``d*G`` channels). The blocks sit at other
in-group positions in each conv group (``n`` is rarely a multiple of ``G``), which
Torch-Pruning's ``prune_in_channels`` cannot do (it removes the first group's positions from
every group): :func:`prune_behind` removes each group's own. A grouped conv in front (``G`` a
multiple of its group count) loses ``|R|`` channels per shuffle group: balanced.
"""
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch_pruning import ops as tp_ops

from .group_search import is_permuting_op


@dataclass
class ShuffleCoupling:
    """The far side of a shuffle-coupled :class:`~.channel_groups.ChannelGroup` (whose own
    ``group`` holds the channels in front of the shuffle, pre-shuffle order)."""
    shuffle_groups: int          # G of the shuffle
    root: nn.Module              # the shuffle's last view: the group behind it is rooted at its output
    handler: Callable            # the pruning function of that root
    group: object                # Torch-Pruning group of the channels behind the shuffle
    conv_groups: int             # d: groups of the grouped conv(s) behind the shuffle (1: none)

    def blocks(self, width: int) -> List[List[int]]:
        """Per group of the conv behind, the in-group indices ``i`` whose block lies inside it."""
        G, d = self.shuffle_groups, self.conv_groups
        m = width // d
        segs = [[] for _ in range(d)]
        for i in range(width // G):
            if (i * G) // m == (i * G + G - 1) // m:
                segs[(i * G) // m].append(i)
        return segs

    def steps_available(self, width: int) -> int:
        """Steps that can be removed: one block from each group behind, while each has one left
        (a shuffle group keeps at least one channel)."""
        k = min(len(s) for s in self.blocks(width))
        n = width // self.shuffle_groups
        return min(k, (n - 1) // self.conv_groups)

    def step(self) -> int:
        return self.shuffle_groups * self.conv_groups

    def keep(self, desired: int, width: int, round_to: int = 1) -> int:
        """The feasible kept count closest to ``desired`` from above (removing whole steps;
        a multiple of ``round_to`` where one is reachable, else the full width)."""
        k = max(0, min(self.steps_available(width), (width - desired) // self.step()))
        while k and (width - k * self.step()) % round_to:
            k -= 1
        return width - k * self.step()

    def removed(self, scores: torch.Tensor, keep: int, width: int) -> List[int]:
        """Pre-shuffle channels to remove for ``keep``: per group behind, the blocks whose
        summed score over the ``G`` shuffle groups (``scores``: per pre-shuffle channel) is lowest."""
        k = (width - keep) // self.step()
        if k <= 0:
            return []
        G, n = self.shuffle_groups, width // self.shuffle_groups
        per_index = scores.view(G, n).sum(0)
        drop = []
        for seg in self.blocks(width):
            order = torch.argsort(per_index[seg], stable=True)[:k].tolist()
            drop += [seg[j] for j in order]
        return sorted(g * n + i for g in range(G) for i in drop)

    def post_indices(self, pre: Sequence[int], width: int) -> List[int]:
        """Where the pre-shuffle channels ``pre`` are behind the shuffle (``g*n + i -> i*G + g``)."""
        G, n = self.shuffle_groups, width // self.shuffle_groups
        return sorted((p % n) * G + p // n for p in pre)

    def step_scores(self, scores: torch.Tensor, width: int) -> List[Tuple[float, int]]:
        """Global ranking: the removal steps in order as (score, channels): step ``j`` takes the
        ``j``-th lowest block of every group behind; its score is their mean (non-decreasing in ``j``)."""
        G, n = self.shuffle_groups, width // self.shuffle_groups
        per_index = scores.view(G, n).mean(0)
        segs = [sorted(float(per_index[i]) for i in seg) for seg in self.blocks(width)]
        return [(sum(s[j] for s in segs) / len(segs), self.step())
                for j in range(self.steps_available(width))]


def _single_output(node):
    return node.outputs[0] if len(node.outputs) == 1 else None


def shuffle_chain(first_view) -> Optional[Tuple[object, int, int]]:
    """``(last view node, G, channels)`` when ``first_view`` starts a channel shuffle ``view(N, C, ...) ->
    view(N, G, n, ...) -> transpose(1, 2) [-> contiguous] -> view(N, C, ...)``, read from the
    autograd saved sizes (the last view's input is ``(N, n, G, ...)``); else None."""
    if not isinstance(first_view.module, tp_ops._ReshapeOp):
        return None
    sizes = getattr(first_view.grad_fn, '_saved_self_sym_sizes', None)
    t = _single_output(first_view)
    if sizes is None or len(sizes) < 3 or t is None or not is_permuting_op(t.module) or \
            {getattr(t.grad_fn, '_saved_dim0', None), getattr(t.grad_fn, '_saved_dim1', None)} != {1, 2}:
        return None  # (a permute has no saved dim0/dim1)
    node = _single_output(t)
    for _ in range(2):  # contiguous() (a clone) between the transpose and the last view
        if node is None or not isinstance(node.module, tp_ops._ElementWiseOp) or is_permuting_op(node.module):
            break
        node = _single_output(node)
    if node is None or not isinstance(node.module, tp_ops._ReshapeOp):
        return None
    last = getattr(node.grad_fn, '_saved_self_sym_sizes', None)
    if last is None or len(last) != len(sizes) + 1 or int(last[1]) * int(last[2]) != int(sizes[1]) or \
            tuple(last[3:]) != tuple(sizes[2:]) or int(last[2]) < 2:
        return None
    return node, int(last[2]), int(sizes[1])


def chain_nodes(first_view, last_view) -> set:
    """The nodes of the shuffle from its first view to its last view."""
    nodes, node = {first_view}, first_view
    while node is not last_view:
        node = node.outputs[0]
        nodes.add(node)
    return nodes


def _prune_grouped_in_channels(conv: nn.Module, idxs: Sequence[int]) -> None:
    """Remove input channels ``idxs`` of a grouped conv, each conv group its own positions
    (every group must lose as many)."""
    per, drop = conv.in_channels // conv.groups, set(idxs)
    keep = [[j for j in range(per) if g * per + j not in drop] for g in range(conv.groups)]
    if len({len(k) for k in keep}) != 1:
        raise ValueError(f'the groups of {conv} would lose different numbers of input channels')
    rows, w = conv.out_channels // conv.groups, conv.weight
    new = torch.cat([w[g * rows:(g + 1) * rows, k] for g, k in enumerate(keep)])
    conv.weight = nn.Parameter(new.detach().clone(), requires_grad=w.requires_grad)
    conv.in_channels -= len(drop)


def prune_behind(graph, group) -> None:
    """``group.prune()`` for the channels behind a shuffle, a grouped conv losing each of its
    groups' own input positions (see the module docstring)."""
    for dep, idxs in group:
        m = dep.target.module
        if graph.is_in_channel_pruning_fn(dep.handler) and isinstance(m, nn.modules.conv._ConvNd) \
                and m.groups > 1:
            _prune_grouped_in_channels(m, idxs)
        else:
            dep(idxs)


def unsupported_behind(group) -> bool:
    """True when a layer behind the shuffle is a grouped conv :func:`prune_behind` cannot cut
    (transposed, or depthwise)."""
    return any(isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 and (m.transposed or m.groups == m.in_channels)
               for m in (dep.target.module for dep, _ in group))
