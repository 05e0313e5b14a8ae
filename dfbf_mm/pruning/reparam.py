"""Re-parameterisable backbones (RepVGG, MobileOne, RepMLPNet, ...): prune their deploy form.

In training form their blocks sum parallel branches (3x3, 1x1, identity BN), so every inner
channel is a residual stream and nothing prunes. ``switch_to_deploy()`` fuses each block into
one conv with the same function; that plain network prunes like a VGG, and the deploy config
(``deploy=True`` in ``model.backbone``) rebuilds it with the stock registry.
"""
import inspect

import torch.nn as nn


def is_reparameterizable(backbone: nn.Module) -> bool:
    """A stock backbone with ``switch_to_deploy()`` and a ``deploy`` constructor option, not yet fused."""
    return (callable(getattr(backbone, 'switch_to_deploy', None))
            and 'deploy' in inspect.signature(type(backbone).__init__).parameters
            and not getattr(backbone, 'deploy', False))


def reparameterize(model: nn.Module, cfg) -> bool:
    """Fuse ``model.backbone`` to its deploy form in place and set ``deploy=True`` in
    ``cfg.model.backbone`` (an mmengine Config) so it rebuilds that form; False if not re-parameterisable.

    Call it on the trained model before pruning, and use ``cfg`` as the stock config from then on.
    """
    backbone = getattr(model, 'backbone', None)
    if not isinstance(backbone, nn.Module) or not is_reparameterizable(backbone):
        return False
    backbone.switch_to_deploy()
    cfg.model.backbone.deploy = True
    return True
