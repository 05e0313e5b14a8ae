"""Which channels of a backbone may be removed: Torch-Pruning dependency groups + output guard.

A backbone is traced with ``torch_pruning.DependencyGraph``; every output feature map is fed
into a tiny *sentinel* layer (a 1x1 conv / linear per output) that is part of the traced
graph. A dependency group that touches a sentinel couples its channels to a width that leaves
the backbone (an ``out_indices`` map, a residual stream, a shortcut conv) and is never pruned,
so the stock neck/head keep fitting. Groups that would need constructs we cannot prune safely
(reshapes into heads, bare ``nn.Parameter`` tensors, attention modules, incompatible grouped
convs, channel shuffles and other transposes, concats/splits whose offsets Torch-Pruning
cannot make or gets wrong) are skipped with a reason instead of being handed to
Torch-Pruning. The group search itself is :mod:`.group_search` (Torch-Pruning's, stopped at
those constructs and bounded by a time limit). Reshapes and splits that keep the last dim of
token tensors are trusted in groups whose layers all index channels on that dim
(:mod:`.feature_last`: the hidden units of a transformer FFN, fc1 rows and fc2 columns, with a
BatchNorm1d, GRN or SwiGLU gate between them; attention and the residual stream stay).
Activation checkpointing is off while tracing (:mod:`.checkpointing`).
One shuffle is crossed: a group that ends at a channel shuffle from its input side, with all
the shuffle's channels, is pruned together with the group behind the shuffle, the indices
mapped through it (:mod:`.shuffle`, ShuffleNetV1).
"""
import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch_pruning import ops as tp_ops

from ..utils import eval_mode, first_line, output_tensors
from .checkpointing import checkpointing_off
from .feature_last import (ShapeRecorder, equal_split_divisor, is_feature_last_layer, is_linear_flatten,
                           keeps_last_dim, mark_last_dim_splits)
from .group_search import UNMAPPED, BoundedDependencyGraph, Deadline, TraceTimeLimitError, is_permuting_op
from .layer_pruners import channel_wise_pruners, conv_like_pruners, traceable_outputs
from .shuffle import ShuffleCoupling, chain_nodes, shuffle_chain, unsupported_behind

# Torch-Pruning pseudo-ops whose index mapping we do not trust for pruning (channels folded
# into heads, sliced, expanded): groups through them are skipped, not pruned. They and the
# permuting ops (transpose/permute) are barriers of the group search: a group stops there.
_UNSAFE_OPS = (tp_ops._ReshapeOp, tp_ops._UnbindOp, tp_ops._ExpandOp, tp_ops._SliceOp,
               tp_ops._CustomizedOp)
_ROOT_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


flatten_outputs = output_tensors  # the name the pruning code and tests use


def _sentinel_for(t: torch.Tensor) -> nn.Module:
    """A layer that consumes every channel of output ``t`` (channel dim 1 for maps, last for tokens)."""
    if t.dim() == 4:
        return nn.Conv2d(t.shape[1], 1, 1)
    if t.dim() == 5:
        return nn.Conv3d(t.shape[1], 1, 1)
    if t.dim() == 3 and not t.is_floating_point():
        raise ValueError('backbone: an output tensor is not floating point')
    if t.dim() in (2, 3):
        return nn.Linear(t.shape[-1], 1)
    raise ValueError(f'backbone: cannot guard an output of shape {tuple(t.shape)} '
                     '(expected 2-D, 3-D, 4-D or 5-D feature tensors)')


class SentinelWrapper(nn.Module):
    """Backbone + one sentinel consumer per output tensor; forward returns the sentinel outputs.

    The input also passes an identity 1x1 conv (values unchanged) so that Torch-Pruning knows
    the input's channel count when the backbone concatenates slices of the raw image (YOLOX's
    Focus stem); groups touching it are never pruned either (the input width is fixed).
    """

    def __init__(self, backbone: nn.Module, example_outputs: Sequence[torch.Tensor], in_channels: int):
        super().__init__()
        self.backbone = backbone
        self.sentinels = nn.ModuleList(_sentinel_for(t) for t in example_outputs)
        self.input_sentinel = nn.Conv2d(in_channels, in_channels, 1, bias=False)
        with torch.no_grad():
            self.input_sentinel.weight.copy_(torch.eye(in_channels).view(in_channels, in_channels, 1, 1))
        device = next(iter(backbone.parameters())).device
        self.sentinels.to(device)
        self.input_sentinel.to(device)

    def forward(self, x):
        if x.dim() == 4:
            x = self.input_sentinel(x)
        outs = flatten_outputs(self.backbone(x))
        return [s(o) for s, o in zip(self.sentinels, outs)]


@dataclass
class ChannelGroup:
    """One prunable set of coupled channels, rooted at a conv/linear's output filters."""
    root_name: str                   # backbone-relative name of the root layer
    root: nn.Module
    width: int                       # original number of channels of the group
    group: object                    # torch_pruning Group (all channels)
    module_names: List[str]          # every backbone module touched by the group
    out_names: List[str]             # modules whose output channels/features the group removes
    divisor: int = 1                 # grouped convs: remove the same positions in each of `divisor` chunks
    shuffle: Optional[ShuffleCoupling] = None  # the channels end at a channel shuffle: the group behind it

    def items(self):
        """Every Torch-Pruning item the group prunes (both sides of a channel shuffle)."""
        yield from self.group
        if self.shuffle is not None:
            yield from self.shuffle.group


@dataclass
class TraceResult:
    """Outcome of :func:`trace_channel_groups`."""
    graph: BoundedDependencyGraph  # its barriers and deadline bound every later group search
    wrapper: SentinelWrapper
    prunable: List[ChannelGroup]
    skipped: List[Tuple[str, str]] = field(default_factory=list)  # (root name, reason)
    output_shapes: List[Tuple[int, ...]] = field(default_factory=list)


def run_backbone(backbone: nn.Module, example_inputs: torch.Tensor, field_name: str = 'example_inputs'):
    """Forward ``backbone`` in eval mode without grad; a failure becomes a one-line error."""
    try:
        with eval_mode(backbone), torch.no_grad():
            return backbone(example_inputs)
    except Exception as e:  # too-small input, wrong channel count, ...
        raise ValueError(
            f'{field_name}: {type(backbone).__name__} cannot run on an input of shape '
            f'{tuple(example_inputs.shape)} ({type(e).__name__}: {first_line(e)}); is the input smaller '
            'than the backbone stride or of the wrong channel count?') from None


def check_outputs(outputs, field_name: str = 'example_inputs') -> List[Tuple[int, ...]]:
    """Shapes of the output tensors; an empty spatial map means the input is below the stride."""
    tensors = flatten_outputs(outputs)
    if not tensors:
        raise ValueError('backbone: its forward returned no tensors')
    for t in tensors:
        if t.numel() == 0:
            raise ValueError(f'{field_name}: an output of the backbone is empty {tuple(t.shape)}; '
                             'the input is smaller than the backbone stride')
    return [tuple(t.shape) for t in tensors]


def _group_divisor(group, graph) -> Optional[int]:
    """Chunk count the group's channels must be removed uniformly over (grouped convs), or None."""
    divisor = 1
    for dep, idxs in group:
        m = dep.target.module
        k = equal_split_divisor(m, idxs)  # the equal chunks of a SwiGLU gate: same positions in each
        if k > 1:
            divisor = divisor * k // math.gcd(divisor, k)
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and m.groups > 1:
            depthwise = m.groups == m.in_channels == m.out_channels
            if depthwise:
                continue
            n = m.out_channels if graph.is_out_channel_pruning_fn(dep.handler) else m.in_channels
            if len(idxs) != n:  # only part of the conv's channels (e.g. behind a concat)
                return None
            lcm = divisor * m.groups // math.gcd(divisor, m.groups)
            if lcm > n or n % lcm:
                return None
            divisor = lcm
    return divisor


def _is_residual_add(m, graph) -> bool:
    """True for a traced tensor addition of two (or more) feature maps."""
    if not isinstance(m, tp_ops._ElementWiseOp) or not str(m._grad_fn).lower().startswith('addbackward'):
        return False  # (not AddmmBackward: the matrix product inside a Linear)
    node = graph.module2node.get(m)
    return node is not None and len(node.inputs) >= 2


def _split_outputs_in_order(node) -> bool:
    """Whether Torch-Pruning's split mapping is right: it gives chunk i to ``node.outputs[i]``,
    but the outputs are listed in tracing order (LiteHRNet's stem: the two halves swapped)."""
    if len(node.outputs) != len(node.module.offsets) - 1:
        return False  # a chunk is unused, or one consumer takes two chunks
    for i, out in enumerate(node.outputs):
        fns = out.grad_fn.next_functions if out.grad_fn is not None else ()
        if [nr for fn, nr in fns if fn is node.grad_fn] != [i]:
            return False
    return True


def _in_channel_shuffle(node) -> bool:
    """True for the ops of a channel shuffle: view -> transpose/permute [-> contiguous] -> view."""
    def reshape_near(nodes, out: bool, hops: int = 2) -> bool:
        for n in nodes:
            if isinstance(n.module, tp_ops._ReshapeOp):
                return True
            if hops > 1 and isinstance(n.module, tp_ops._ElementWiseOp) and not is_permuting_op(n.module) \
                    and reshape_near(n.outputs if out else n.inputs, out, hops - 1):
                return True
        return False

    def permute_near(nodes, out: bool, hops: int = 2):
        for n in nodes:
            if is_permuting_op(n.module):
                return n
            if hops > 1 and isinstance(n.module, tp_ops._ElementWiseOp):
                hit = permute_near(n.outputs if out else n.inputs, out, hops - 1)
                if hit is not None:
                    return hit
        return None

    if isinstance(node.module, tp_ops._ReshapeOp):
        p = permute_near(node.outputs, True) or permute_near(node.inputs, False)
        return p is not None and _in_channel_shuffle(p)
    return is_permuting_op(node.module) and reshape_near(node.inputs, False) and reshape_near(node.outputs, True)


SHUFFLE_REASON = 'passes a channel shuffle (view, transpose, view)'


def _barrier_reason(node, linear_root: bool = False) -> str:
    """Skip reason of a group that reaches ``node``, a barrier of the group search (from a Linear
    root a view-permute-view is a token reshuffle, Swin's windows, not a channel shuffle)."""
    if not linear_root and _in_channel_shuffle(node):
        return SHUFFLE_REASON
    m = node.module
    if getattr(m, UNMAPPED, False):
        return f'passes a {type(m).__name__.strip("_").replace("Op", "")} op Torch-Pruning cannot map'
    if is_permuting_op(m):
        return f'passes a {str(m._grad_fn).split("Backward")[0] or "permute"} op'
    return f'passes a {type(m).__name__.strip("_").replace("Op", "")} op'


def trace_channel_groups(backbone: nn.Module, example_inputs: torch.Tensor,
                         ignore_names: Sequence[str] = (), outputs=None,
                         keep_residual: bool = True, time_limit: Optional[float] = None) -> TraceResult:
    """Trace ``backbone`` and classify its dependency groups into prunable and skipped.

    ``ignore_names`` are backbone module names whose shapes must not change: any group that
    touches one of them is skipped. ``outputs``: the backbone's output on ``example_inputs``
    when the caller already has it (saves a forward). ``keep_residual``: also keep every group
    whose channels are summed with another feature map (residual streams, as DFBF does: ResNet
    keeps its block outputs and shortcut convs, only the channels inside blocks are pruned).
    ``time_limit``: seconds the tracing and group search may take (None: no limit); past it a
    one-line :class:`~.group_search.TraceTimeLimitError` (a ValueError) is raised.
    """
    deadline = Deadline(time_limit, type(backbone).__name__)
    if outputs is None:
        outputs = run_backbone(backbone, example_inputs)
    out_shapes = check_outputs(outputs)
    wrapper = SentinelWrapper(backbone, flatten_outputs(outputs), example_inputs.shape[1])
    # Frozen stages (requires_grad=False) would drop out of the autograd trace.
    flags = {n: p.requires_grad for n, p in backbone.named_parameters()}
    for p in backbone.parameters():
        p.requires_grad_(True)
    was_training = backbone.training
    custom = conv_like_pruners(backbone, example_inputs)  # TridentConv, ConvAWS2d: see layer_pruners
    channel_wise = channel_wise_pruners(backbone, example_inputs)  # GRN
    pruners, shapes = {**custom, **channel_wise}, ShapeRecorder()  # shapes: of every reshape's output
    try:
        with checkpointing_off(backbone), torch.enable_grad(), traceable_outputs(backbone, pruners), shapes:
            graph = BoundedDependencyGraph(deadline).build_dependency(
                wrapper, example_inputs=[example_inputs.clone().requires_grad_(True)], verbose=False,
                customized_pruners=pruners)
    except Exception as e:
        raise ValueError(f'backbone: Torch-Pruning cannot trace {type(backbone).__name__} '
                         f'({type(e).__name__}: {first_line(e, 160)})') from None
    finally:
        for n, p in backbone.named_parameters():
            p.requires_grad_(flags.get(n, True))
        backbone.train(was_training)

    deadline.check(lambda: 'while tracing the graph')

    names = {m: n[len('backbone.'):] for n, m in wrapper.named_modules() if n.startswith('backbone.')}
    sentinels = set(wrapper.sentinels) | {wrapper.input_sentinel}
    param_names = {p: n[len('backbone.'):] for n, p in wrapper.named_parameters()}
    ignored = set(ignore_names)
    # ops that keep the feature (last) dim: trusted only in groups of feature-last layers
    last_splits = mark_last_dim_splits(graph)
    linear_flatten = {node for node in graph.module2node.values() if is_linear_flatten(node)}
    # barriers that a walk from a Linear root passes (its group is then checked by classify)
    graph.linear_only = {node for node in graph.module2node.values()
                         if node not in linear_flatten and keeps_last_dim(node, shapes.shapes)} | last_splits
    shapes.shapes.clear()
    for m, node in graph.module2node.items():  # concat/split offsets Torch-Pruning got wrong or not at all
        if node not in last_splits and isinstance(m, (tp_ops._ConcatOp, tp_ops._SplitOp)) and (
                m.offsets is None or (isinstance(m, tp_ops._SplitOp) and not _split_outputs_in_order(node))):
            setattr(m, UNMAPPED, True)
    barriers = {node for m, node in graph.module2node.items()
                if (isinstance(m, _UNSAFE_OPS) or is_permuting_op(m) or getattr(m, UNMAPPED, False)
                    or node in last_splits) and node not in linear_flatten}
    graph.barriers = barriers
    result = TraceResult(graph, wrapper, [], [], out_shapes)

    def classify(group, allowed=frozenset()):
        """(touched names, out-channel names, skip reason or None, conv-group divisor, the
        channel-shuffle barriers reached when they are the only reason, else None); the nodes in
        ``allowed`` (a shuffle the caller pairs groups across) are passed over."""
        touched, out_touched, reason, via_flatten, shuffles, other = [], [], None, None, [], False
        linear_root = isinstance(group[0].dep.target.module, nn.Linear)
        passable = graph.linear_only if linear_root else ()
        for dep, _ in group:
            m = dep.target.module
            if m is wrapper.input_sentinel:
                reason, other = 'is the input image', True
                break
            if m in sentinels:
                reason, other = 'reaches a backbone output', True
                break
            if dep.target in allowed:
                continue
            if isinstance(m, nn.Parameter):
                reason, other = f'couples a bare nn.Parameter ({param_names.get(m, "?")})', True
            elif dep.target in linear_flatten or dep.target in passable:
                via_flatten = dep.target if via_flatten is None else via_flatten
            elif dep.target in barriers:
                reason = _barrier_reason(dep.target, linear_root)
                if reason == SHUFFLE_REASON:
                    shuffles.append(dep.target)
                else:
                    other = True
            elif keep_residual and _is_residual_add(m, graph):
                reason, other = reason or 'is a residual stream (summed with another feature map)', True
            elif isinstance(m, nn.MultiheadAttention):
                reason, other = 'couples nn.MultiheadAttention', True
            elif isinstance(m, nn.LayerNorm) and len(m.normalized_shape) > 1:
                # Torch-Pruning cuts the last normalised dim; a (C, 1, 1) norm (GCNet's context
                # block, ViPNAS) is normalised over channels first
                reason, other = f'couples a LayerNorm over {tuple(m.normalized_shape)}', True
            elif m in names:
                touched.append(names[m])
                if graph.is_out_channel_pruning_fn(dep.handler):
                    out_touched.append(names[m])
                if names[m] in ignored:
                    reason, other = reason or f'touches ignored module {names[m]}', True
        if reason is None and via_flatten is not None and not all(
                is_feature_last_layer(dep.target.module, dep.target, tuple(channel_wise))
                for dep, _ in group if dep.target.module in names):
            # a reshape / split that keeps the last dim, in a group with a layer of channels on dim 1
            reason, other = f'passes a {"Split" if via_flatten in last_splits else "Reshape"} op', True
        divisor = None
        if reason is None or not other:
            divisor = _group_divisor(group, graph)
            if divisor is None:
                reason, other = reason or 'grouped conv channels cannot be removed uniformly per conv group', True
        return touched, out_touched, reason, divisor, (shuffles if reason is not None and not other else None)

    def couple(group, width, divisor, shuffles):
        """The group behind the one shuffle ``group`` reaches from its input side, when both can
        be pruned together (see :mod:`.shuffle`): ``(ShuffleCoupling, its touched names)`` or None."""
        chain = shuffle_chain(shuffles[0]) if len(set(shuffles)) == 1 else None
        if chain is None:
            return None
        last, G, channels = chain  # the group must hold every channel of the shuffle
        if width != channels or width % G or G % divisor or \
                any(len(idxs) != width for dep, idxs in group if dep.target is shuffles[0]):
            return None
        handler = graph.get_pruner_of_module(last.module).prune_out_channels
        try:
            behind = graph.get_pruning_group(last.module, handler, list(range(width)), update_mapping=False,
                                             where=lambda: 'behind a channel shuffle')
        except TraceTimeLimitError:
            raise
        except Exception:  # noqa: BLE001 -- an index mapping behind it that Torch-Pruning cannot make
            return None
        touched, _, reason, d, _ = classify(behind, allowed=chain_nodes(shuffles[0], last))
        if reason is not None or width % d or unsupported_behind(behind):
            return None
        coupling = ShuffleCoupling(G, last.module, handler, behind, d)
        return (coupling, touched) if coupling.steps_available(width) >= 1 else None

    for group in graph.get_all_groups(ignored_layers=list(sentinels), root_module_types=_ROOT_TYPES + tuple(custom),
                                      names=names):
        root = group[0].dep.target.module
        root_name = names.get(root, '?')
        touched, out_touched, reason, divisor, shuffles = classify(group)
        coupling = None
        if shuffles:  # the channels end at a channel shuffle: prunable with the group behind it?
            coupling = couple(group, graph.get_out_channels(root), divisor, shuffles)
            if coupling is not None:
                coupling, more = coupling
                touched, reason = touched + more, None
        if reason is not None:
            result.skipped.append((root_name, reason))
            continue
        width = graph.get_out_channels(root)
        result.prunable.append(ChannelGroup(root_name, root, width, group, sorted(set(touched)),
                                            sorted(set(out_touched)), divisor, coupling))
    return result
