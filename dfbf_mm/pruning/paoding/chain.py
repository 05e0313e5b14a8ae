"""Finding the dense chains Paoding can prune, by tracing one forward pass.

OpenMMLab models are not ``nn.Sequential`` (heads take tuples and data samples, torch.fx cannot
trace most of them), so the chain is found from the *call order* of leaf modules recorded by
forward hooks on one example input. A leaf step is *sequential* when its input is the previous
leaf's output tensor or a reshaped view of it (same storage, same number of elements): only
then is it sound to carry an interval from one step to the next.

A dense chain is ``Linear -> act -> Linear -> act -> ... -> Linear`` with sequential steps and
only Dropout/Identity in between; every Linear but the last is a hidden layer whose units can be
pruned. A Linear that feeds another Linear through anything other than exactly one ReLU or
Sigmoid module cannot be handled, and is reported by name with what was found.
"""
import fnmatch
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import torch
import torch.nn as nn

from .intervals import TRANSPARENT

PRUNABLE_ACTS = {nn.ReLU: 'relu', nn.Sigmoid: 'sigmoid'}


@dataclass
class TraceStep:
    """One call of a leaf module during the example forward pass."""
    name: str
    module: nn.Module
    in_shape: tuple
    out_shape: tuple
    sequential: bool  # input is (a view of) the previous step's output / the model input


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


@torch.no_grad()
def trace_leaves(model: nn.Module, example_input: torch.Tensor) -> List[TraceStep]:
    """Leaf-module calls of one eval-mode forward pass of ``example_input``, in call order."""
    steps: List[TraceStep] = []
    last = {'out': example_input}
    handles = []

    def hook(name):
        def fn(module, args, output):
            x = args[0] if args else None
            seq = (isinstance(x, torch.Tensor) and isinstance(last['out'], torch.Tensor)
                   and _same_data(x, last['out']))
            if not isinstance(output, torch.Tensor):
                last['out'] = None
                return
            steps.append(TraceStep(name, module, tuple(x.shape) if isinstance(x, torch.Tensor) else (),
                                   tuple(output.shape), bool(seq)))
            last['out'] = output
        return fn

    for name, module in model.named_modules():
        if len(list(module.children())) == 0:
            handles.append(module.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        run_model(model, example_input)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return steps


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
        ok = (len(acts) == 1 and type(acts[0].module) in PRUNABLE_ACTS
              and nxt.in_features == s.module.out_features
              and calls[id(s.module)] == 1 and calls[id(nxt)] == 1)
        if not ok:
            if layers is not None and not any(fnmatch.fnmatch(s.name, p) for p in layers):
                continue  # not asked for: leave it alone
            why = ('is called more than once' if calls[id(s.module)] > 1 or calls[id(nxt)] > 1
                   else f'activation found: {_describe(acts)}')
            raise ValueError(f'model: layer {s.name!r} -> {steps[k].name!r} cannot be pruned by '
                             f'Paoding ({why}; only one nn.ReLU or nn.Sigmoid module is supported)')
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
            if not any(fnmatch.fnmatch(s.name, p) for s in steps if isinstance(s.module, nn.Linear)):
                raise ValueError(f'layers: pattern {p!r} matches no Linear layer of the model')
            if not any(fnmatch.fnmatch(n, p) for n in hidden):
                raise ValueError(f'layers: pattern {p!r} matches only Linear layers that feed no '
                                 'other Linear (output layers cannot be pruned)')
    for c in chains:
        c.prunable = [layers is None or any(fnmatch.fnmatch(n, p) for p in layers) for n in c.names[:-1]]
    if required and not any(any(c.prunable) for c in chains):
        raise ValueError('model: no prunable dense layer found (Paoding needs nn.Linear -> nn.ReLU/'
                         'nn.Sigmoid module -> nn.Linear; functional activations are not visible)')
    return chains
