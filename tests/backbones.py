"""Shared helpers of the pruning tests: build a registered backbone, run it, list its outputs."""
import copy

import torch
from mmengine.registry import init_default_scope

from dfbf_mm.pruning import flatten_outputs
from dfbf_mm.registry import MODELS


def build(scope, cfg):
    """The backbone ``cfg`` of registry ``scope``, seeded, in eval mode."""
    init_default_scope(scope)
    __import__(scope + '.models')
    torch.manual_seed(0)
    m = MODELS.build(copy.deepcopy(cfg))
    m.eval()  # some backbones' train() returns None: do not chain it
    return m


def outs(backbone, x):
    """The backbone's outputs on ``x`` as a flat list of tensors (no grad, eval mode)."""
    with torch.no_grad():
        backbone.eval()
        return flatten_outputs(backbone(x))
