"""Finding the dense chains Paoding can prune, by tracing one forward pass.

OpenMMLab models are not ``nn.Sequential`` (heads take tuples and data samples, torch.fx cannot
trace most of them), so the chain is found from the *call order* of leaf modules recorded by
forward hooks on one example input. A leaf step is *sequential* when its input is the previous
leaf's output tensor or a reshaped view of it (same storage, same number of elements) *and*
nothing changed that tensor in between (the autograd node of the input is the previous output's,
up to pure reshapes: an in-place residual ``out += identity`` is an ``AddBackward`` node, so the
step after it is not sequential). Only then is it sound to carry an interval from one step to
the next.

The autograd graph of the example pass also gives each step's *fan-out*: how many operations
read its output (a functional residual add, a downsample branch or a second module count too).
A hidden unit can only be merged away when its value is read by the next layer alone.

A dense chain is ``Linear -> act -> Linear -> act -> ... -> Linear`` with sequential steps and
only Dropout/Identity in between; every Linear but the last is a hidden layer whose units can be
pruned. A Linear that feeds another Linear through anything other than exactly one ReLU or
Sigmoid module cannot be handled, and is reported by name with what was found.
"""
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import torch
import torch.nn as nn

from .intervals import TRANSPARENT
from ...utils import pattern_matches

PRUNABLE_ACTS = {nn.ReLU: 'relu', nn.Sigmoid: 'sigmoid'}


@dataclass
class TraceStep:
    """One call of a leaf module during the example forward pass."""
    name: str
    module: nn.Module
    in_shape: tuple
    out_shape: tuple
    sequential: bool  # input is (a view of) the previous step's output / the model input
    fanout: Optional[int] = None  # operations reading the output (autograd graph); None: unknown


@dataclass
class DenseChain:
    """``linears[k] -> acts[k] -> linears[k+1]``; the last Linear is the chain's output layer."""
    names: List[str]
    linears: List[nn.Linear]
    acts: List[str]
    first_step: int  # index in the trace of the first Linear
    prunable: List[bool] = field(default_factory=list)  # per hidden layer, after `layers`


def run_model(model: nn.Module, x: torch.Tensor):
    """Forward ``x`` (already normalised) through a plain module or an MMEngine model."""
    from mmengine.model import BaseModel
    if isinstance(model, BaseModel):
        return model(x, mode='tensor')
    return model(x)


def _same_data(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a is b:
        return True
    # a contiguous view of the same memory is a pure reshape; a permuted view is not
    return (a.numel() == b.numel() and a.is_contiguous() and b.is_contiguous() and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
            and a.storage_offset() == b.storage_offset())


# autograd nodes of pure reshapes (with _same_data: same storage, offset, numel, contiguous)
_RESHAPE_NODES = ('ViewBackward', 'UnsafeViewBackward', 'ReshapeAliasBackward', 'SqueezeBackward',
                  'UnsqueezeBackward', 'AliasBackward', 'AsStridedBackward')


def _strip_reshapes(node):
    while node is not None and type(node).__name__.rstrip('0123456789') in _RESHAPE_NODES:
        nxt = [n for n, _ in node.next_functions if n is not None]
        if len(nxt) != 1:
            break
        node = nxt[0]
    return node


def _tensors_in(obj) -> List[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors_in(o)]
    return []


def _reference_counts(outputs) -> dict:
    """``{autograd node: number of nodes (or model outputs) that read it}`` for the graph of
    ``outputs``."""
    counts, stack, seen = {}, [], set()
    for t in _tensors_in(outputs):
        if t.grad_fn is not None:
            counts[t.grad_fn] = counts.get(t.grad_fn, 0) + 1
            stack.append(t.grad_fn)
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for child, _ in node.next_functions:
            if child is not None:
                counts[child] = counts.get(child, 0) + 1
                stack.append(child)
    return counts


def trace_leaves(model: nn.Module, example_input: torch.Tensor) -> List[TraceStep]:
    """Leaf-module calls of one eval-mode forward pass of ``example_input``, in call order."""
    steps: List[TraceStep] = []
    nodes = []  # autograd node of each step's output
    leaf = example_input.detach().requires_grad_(True)
    x0 = leaf.clone()  # a non-leaf, so in-place ops on the input stay legal
    last = {'out': x0, 'node': x0.grad_fn}
    pending = {}  # id(module) -> autograd node of its input, taken before an in-place forward
    handles = []

    def pre_hook(module, args):
        x = args[0] if args else None
        pending[id(module)] = x.grad_fn if isinstance(x, torch.Tensor) else None

    def hook(name):
        def fn(module, args, output):
            x = args[0] if args else None
            in_node = pending.pop(id(module), None)
            seq = (isinstance(x, torch.Tensor) and isinstance(last['out'], torch.Tensor)
                   and _same_data(x, last['out']) and in_node is not None
                   and _strip_reshapes(in_node) is _strip_reshapes(last['node']))
            if not isinstance(output, torch.Tensor):
                last['out'] = last['node'] = None
                return
            steps.append(TraceStep(name, module, tuple(x.shape) if isinstance(x, torch.Tensor) else (),
                                   tuple(output.shape), bool(seq)))
            nodes.append(output.grad_fn)
            last['out'], last['node'] = output, output.grad_fn
        return fn

    for name, module in model.named_modules():
        if len(list(module.children())) == 0:
            handles.append(module.register_forward_pre_hook(pre_hook))
            handles.append(module.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            outputs = run_model(model, x0)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    counts = _reference_counts(outputs)
    for step, node in zip(steps, nodes):
        step.fanout = counts.get(node, 0) if node is not None else None
    return steps


def single_use(steps: Sequence[TraceStep]) -> bool:
    """Every step's output is read by exactly one operation (the next step)."""
    return all(s.fanout == 1 for s in steps)


def _describe(steps: Sequence[TraceStep]) -> str:
    return '+'.join(type(s.module).__name__ for s in steps) or 'none'


def find_dense_chains(steps: List[TraceStep], layers: Optional[Sequence[str]] = None,
                      required: bool = True) -> List[DenseChain]:
    """Dense chains in ``steps``; raises one line for a Linear->?->Linear link it cannot prune.

    ``layers`` (fnmatch patterns on module names) restricts which hidden layers are pruned;
    a pattern matching no Linear is an error. ``required=False`` (other unit kinds are pruned
    too) allows finding none and leaves the pattern check to the caller.
    """
    calls = {}
    for s in steps:
        calls[id(s.module)] = calls.get(id(s.module), 0) + 1
    links = {}  # index of a Linear step -> (activation name, index of the next Linear step)
    for i, s in enumerate(steps):
        if not isinstance(s.module, nn.Linear):
            continue
        between, k = [], i + 1
        while k < len(steps) and steps[k].sequential and not isinstance(steps[k].module, nn.Linear):
            between.append(steps[k])
            k += 1
        if k >= len(steps) or not steps[k].sequential:
            continue  # output feeds no Linear directly: an output layer, not a hidden one
        nxt = steps[k].module
        acts = [b for b in between if not isinstance(b.module, TRANSPARENT)]
        shared = next((b for b in [s] + between if b.fanout != 1), None)
        ok = (len(acts) == 1 and type(acts[0].module) in PRUNABLE_ACTS
              and nxt.in_features == s.module.out_features
              and calls[id(s.module)] == 1 and calls[id(nxt)] == 1 and shared is None)
        if not ok:
            if layers is not None and not any(pattern_matches(p, s.name) for p in layers):
                continue  # not asked for: leave it alone
            if calls[id(s.module)] > 1 or calls[id(nxt)] > 1:
                why = 'it is called more than once'
            elif len(acts) != 1 or type(acts[0].module) not in PRUNABLE_ACTS:
                why = (f'activation found: {_describe(acts)}; only one nn.ReLU or nn.Sigmoid module '
                       'is supported')
            elif shared is not None:
                why = (f'the output of {shared.name!r} is read by {shared.fanout} operations, not '
                       'only by the next layer')
            else:
                why = f'{steps[k].name!r} does not read its {s.module.out_features} outputs as features'
            raise ValueError(f'model: layer {s.name!r} -> {steps[k].name!r} cannot be pruned by '
                             f'Paoding ({why})')
        links[i] = (PRUNABLE_ACTS[type(acts[0].module)], k)

    chains, used = [], set()
    for i in sorted(links):
        if i in used:
            continue
        names, mods, acts, j = [steps[i].name], [steps[i].module], [], i
        while j in links:
            used.add(j)
            act, j = links[j]
            acts.append(act)
            names.append(steps[j].name)
            mods.append(steps[j].module)
        chains.append(DenseChain(names, mods, acts, i))

    hidden = [n for c in chains for n in c.names[:-1]]
    if layers is not None and required:
        for p in layers:
            if not any(pattern_matches(p, s.name) for s in steps if isinstance(s.module, nn.Linear)):
                raise ValueError(f'layers: pattern {p!r} matches no Linear layer of the model')
            if not any(pattern_matches(p, n) for n in hidden):
                raise ValueError(f'layers: pattern {p!r} matches only Linear layers that feed no '
                                 'other Linear (output layers cannot be pruned)')
    for c in chains:
        c.prunable = [layers is None or any(pattern_matches(p, n) for p in layers) for n in c.names[:-1]]
    if required and not any(any(c.prunable) for c in chains):
        raise ValueError('model: no prunable dense layer found (Paoding needs nn.Linear -> nn.ReLU/'
                         'nn.Sigmoid module -> nn.Linear; functional activations are not visible)')
    return chains
