"""``PrunedBackbone``: build a stock backbone from its config and shrink it to a channel spec.

Registered in MODELS as a *function*, so the built object is the stock backbone class itself
and state-dict keys are the stock ones; a deploy config differs from the stock config only in
``model.backbone = dict(type='PrunedBackbone', backbone=<stock cfg>, channel_spec=<path>)``.
"""
from typing import Union

import torch.nn as nn

from ..registry import MODELS
from .channel_spec import apply_channel_spec, load_channel_spec


@MODELS.register_module()
def PrunedBackbone(backbone: dict, channel_spec: Union[str, dict]) -> nn.Module:  # noqa: N802
    """The backbone built from ``backbone`` (cfg dict) with the shapes of ``channel_spec``.

    ``channel_spec`` is a spec dict or a JSON path (in a config, ``'{{ fileDirname }}/x.json'``
    keeps the deploy folder relocatable).
    """
    if not isinstance(backbone, dict) or 'type' not in backbone:
        raise ValueError('backbone: PrunedBackbone needs the stock backbone config (a dict with `type`)')
    spec = load_channel_spec(channel_spec)
    return apply_channel_spec(MODELS.build(backbone), spec)
