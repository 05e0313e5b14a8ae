"""The stock neck and head run on a backbone's outputs: the targets of ``neck_weight`` /
``head_weight``.

DFBF supervises the backbone alone, but the metric is read from the head. Detection is where
the gap shows: a backbone that matches the teacher's feature maps to within a small L1 can
still move the head's scores. Running the frozen stock neck and head (the student's copies
are the teacher's weights, unchanged by pruning) on both backbones' outputs and matching what
they produce puts the loss where the evaluator looks; the gradient flows through the frozen
layers into the pruned backbone only.

The head is called on the neck's outputs alone (``head(feats)``), which the dense heads of
the three packages accept: mmdet's one-stage heads and a two-stage detector's RPN head (its
RoI head needs proposals and is left out), mmpose's heads and mmpretrain's classifier heads.
"""
import torch
from torch import nn

from ..stock_model import dense_head, stock_outputs
from ..utils import first_line

__all__ = ['check_stock_outputs', 'dense_head', 'stock_outputs']


def check_stock_outputs(model: nn.Module, backbone_outs, head: bool) -> None:
    """Fail at build time, in one line, when the neck / head cannot run this way."""
    if head and dense_head(model) is None:
        raise ValueError(f'dfbf.distill.head_weight: {type(model).__name__} has no head that runs '
                         'on the neck outputs alone (DETR-style or headless); use neck_weight')
    try:
        with torch.no_grad():
            neck_outs, head_outs = stock_outputs(model, backbone_outs, head)
    except Exception as e:  # noqa: BLE001 - any failure of a stock module, named in one line
        which = 'head_weight' if head else 'neck_weight'
        raise ValueError(f'dfbf.distill.{which}: the stock neck/head of {type(model).__name__} '
                         f'cannot run on the backbone outputs alone: {first_line(e)}') from None
    if head and not head_outs:
        raise ValueError(f'dfbf.distill.head_weight: the head of {type(model).__name__} '
                         'returned no tensor')
