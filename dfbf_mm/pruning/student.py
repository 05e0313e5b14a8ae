"""The pruning stage as one call: a trained teacher in, its pruned student and channel spec out."""
import copy
from typing import Optional, Tuple, Union

import torch
from torch import nn

from ..registry import PRUNERS
from ..stock_model import get_backbone
from .channel_spec import apply_channel_spec
from .reparam import fuse_backbone


def build_student(teacher: nn.Module, example: torch.Tensor, pruner: Union[dict, object, None] = None,
                  channel_spec: Optional[dict] = None) -> Tuple[nn.Module, dict]:
    """``(student, channel_spec)``: a copy of ``teacher`` whose backbone is pruned by ``pruner``
    (a ``PRUNERS`` config or a pruner) on ``example``, or shrunk to ``channel_spec`` (a resumed
    run: the weights then come from its checkpoint). The teacher is left unchanged. A
    re-parameterisable backbone (RepVGG, MobileOne) is fused first: the student is its deploy form."""
    student = copy.deepcopy(teacher)
    fuse_backbone(student)
    backbone = get_backbone(student, 'model')
    if channel_spec is not None:
        apply_channel_spec(backbone, channel_spec)
        return student, channel_spec
    if pruner is None:
        raise ValueError('pruner: a pruner or a channel spec is needed to build the student')
    if isinstance(pruner, dict):
        pruner = PRUNERS.build(pruner)
    return student, pruner.prune(backbone, example)
