"""Where the student is told to match the teacher: feature taps.

DFBF supervises intermediate feature maps at places whose width pruning did not change, so
teacher and student features can be compared element-wise. The reference taps the last BN of
every ResNet block (before the residual addition) and the BN after each unpruned VGG conv; the
general rule here is "every normalisation layer of the backbone whose width is unpruned", in
forward order. Name patterns from the config override the automatic choice.
"""
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from ..utils import FeatureRecorder, eval_mode, matches_any, pattern_matches  # noqa: F401 (re-exported)

NORM_TYPES = (_BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)


def _width(module: nn.Module) -> Optional[int]:
    for attr in ('num_features', 'num_channels'):
        if hasattr(module, attr):
            return int(getattr(module, attr))
    if isinstance(module, nn.LayerNorm):
        return int(module.normalized_shape[-1])
    return None


def forward_order(module: nn.Module, example: torch.Tensor) -> List[str]:
    """Names of the submodules of ``module`` in the order a forward pass first calls them."""
    first_call: Dict[str, None] = {}  # insertion-ordered set
    handles = [sub.register_forward_hook(lambda m, i, o, name=name: first_call.setdefault(name))
               for name, sub in module.named_modules() if name]
    try:
        with eval_mode(module), torch.no_grad():
            module(example)
    finally:
        for h in handles:
            h.remove()
    return list(first_call)


def select_taps(teacher: nn.Module, student: nn.Module, example: torch.Tensor,
                patterns: Optional[Sequence[str]] = None) -> List[str]:
    """Module names (relative to the backbones) to supervise, shallow to deep.

    Args:
        teacher, student: the unpruned and the pruned backbone (same module names).
        example: an input for one forward pass that fixes the forward order.
        patterns: module name patterns (fnmatch or ``re:``); default: unpruned-width norm layers.
    """
    teacher_modules = dict(teacher.named_modules())
    student_modules = dict(student.named_modules())
    candidates = []
    for name in forward_order(student, example):
        t, s = teacher_modules.get(name), student_modules[name]
        if t is None:
            continue
        if patterns:
            if matches_any(name, patterns):
                candidates.append(name)
        elif isinstance(s, NORM_TYPES) and _width(s) is not None and _width(s) == _width(t):
            candidates.append(name)
    if patterns:
        unmatched = [p for p in patterns if not any(pattern_matches(p, n) for n in candidates)]
        if unmatched:
            raise ValueError(f'distill.taps: pattern {unmatched[0]!r} matches no module called in '
                             f'the backbone forward (e.g. {", ".join(list(student_modules)[1:4])})')
    return candidates
