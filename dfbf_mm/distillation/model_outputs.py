"""The stock neck run on a backbone's outputs: the target of ``neck_weight``.

DFBF supervises the backbone alone, but the metric is read from the head, which reads the
neck. Detection is where the gap shows: a backbone that matches the teacher's feature maps to
within a small L1 can still move the head's scores. Running the frozen stock neck (the
student's copy is the teacher's weights, unchanged by pruning) on both backbones' outputs and
matching what it produces puts the loss where the head looks; the gradient flows through the
frozen layers into the pruned backbone only.
"""
from typing import List

import torch
from torch import nn

from ..stock_model import stock_outputs
from ..utils import first_line

__all__ = ['check_neck_outputs', 'neck_outputs']


def neck_outputs(model: nn.Module, backbone_outs) -> List[torch.Tensor]:
    """The tensors ``model``'s neck makes of ``backbone_outs`` (the backbone's without a neck)."""
    return stock_outputs(model, backbone_outs, head=False)[0]


def check_neck_outputs(model: nn.Module, backbone_outs) -> None:
    """Fail at build time, in one line, when the neck cannot run on the backbone outputs alone."""
    try:
        with torch.no_grad():
            neck_outputs(model, backbone_outs)
    except Exception as e:  # noqa: BLE001 - any failure of a stock module, named in one line
        raise ValueError(f'dfbf.distill.neck_weight: the stock neck of {type(model).__name__} '
                         f'cannot run on the backbone outputs alone: {first_line(e)}') from None
