"""Activation checkpointing off while Torch-Pruning traces a backbone.

A block with checkpointing on (mmdet/mmpretrain/mmpose ``with_cp=True``, TinyViT's and MixMIM's
``use_checkpoint``, DenseNet's ``memory_efficient``) runs its inner forward under
``torch.utils.checkpoint`` whenever its input requires grad, as the traced input does: the
layers inside leave no autograd nodes, so no group can be traced through them (DINO's Swin-L,
``with_cp=True``: "every group passes a Reshape op"). :func:`checkpointing_off` clears those
flags on every submodule for the trace and restores each one after it.
"""
from contextlib import contextmanager

import torch.nn as nn

# boolean module attributes that switch activation checkpointing on in the OpenMMLab packages
CHECKPOINT_FLAGS = ('with_cp', 'use_checkpoint', 'memory_efficient', 'grad_checkpointing',
                    'gradient_checkpointing')


@contextmanager
def checkpointing_off(module: nn.Module):
    """Within the block every ``CHECKPOINT_FLAGS`` attribute of ``module`` and its submodules
    that is True is False; each is set back to True after it."""
    changed = [(m, name) for m in module.modules() for name in CHECKPOINT_FLAGS
               if getattr(m, name, None) is True]
    for m, name in changed:
        setattr(m, name, False)
    try:
        yield
    finally:
        for m, name in changed:
            setattr(m, name, True)
