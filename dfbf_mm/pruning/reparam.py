"""Re-parameterisable backbones (RepVGG, MobileOne, RepMLPNet, ...): prune their deploy form.

In training form their blocks sum parallel branches (3x3, 1x1, identity BN), so every inner
channel is a residual stream and nothing prunes. ``switch_to_deploy()`` fuses each block into
one conv with the same function; that plain network prunes like a VGG, and the deploy config
(``deploy=True`` in ``model.backbone``) rebuilds it with the stock registry. The teacher stays
in training form: DeepInversion needs its BN layers, which the fused form no longer has.
"""
import inspect
from typing import Optional

import torch.nn as nn


def reparameterizable_type(cls: type) -> bool:
    """A backbone class with ``switch_to_deploy()`` and a ``deploy`` constructor option."""
    return (callable(getattr(cls, 'switch_to_deploy', None))
            and 'deploy' in inspect.signature(cls.__init__).parameters)


def _fused(backbone: nn.Module) -> bool:
    """Every ``deploy`` flag in the backbone is set (RepMLPNet keeps them in its blocks only)."""
    flags = [m.deploy for m in backbone.modules() if isinstance(getattr(m, 'deploy', None), bool)]
    return bool(flags) and all(flags)


def is_reparameterizable(backbone: nn.Module) -> bool:
    """A stock backbone of a re-parameterisable class, not yet fused."""
    return reparameterizable_type(type(backbone)) and not _fused(backbone)


def fuse_backbone(model: nn.Module) -> bool:
    """Fuse ``model.backbone`` to its deploy form in place; False if it is not re-parameterisable."""
    backbone = getattr(model, 'backbone', None)
    if not isinstance(backbone, nn.Module) or not is_reparameterizable(backbone):
        return False
    backbone.switch_to_deploy()
    return True


def deploy_backbone_cfg(model_cfg: dict, backbone_cls: Optional[type]) -> bool:
    """Set ``deploy=True`` in ``model_cfg['backbone']`` when ``backbone_cls`` is re-parameterisable
    (the config then rebuilds the fused form); False if it is not or already deploys."""
    backbone = model_cfg.get('backbone')
    if backbone_cls is None or not isinstance(backbone, dict) or backbone.get('deploy') \
            or not reparameterizable_type(backbone_cls):
        return False
    backbone['deploy'] = True
    return True


def reparameterize(model: nn.Module, cfg) -> bool:
    """Fuse ``model.backbone`` to its deploy form in place and set ``deploy=True`` in
    ``cfg.model.backbone`` (an mmengine Config) so it rebuilds that form; False if not re-parameterisable.

    Call it on the trained model before pruning, and use ``cfg`` as the stock config from then on.
    """
    if not fuse_backbone(model):
        return False
    cfg.model.backbone.deploy = True
    return True
