"""Registries of dfbf_mm.

Models, datasets, hooks, runners and metrics are registered in MMEngine's *root* registries:
mmdet, mmpose and mmpretrain registries are children of those, and a child looks a name up in
its parents, so a dfbf type is buildable from any of the three default scopes once
``custom_imports=dict(imports=['dfbf_mm'])`` has run.

Pruners and synthesizers are our own concepts and get registries of their own.
"""
from mmengine.registry import (DATASETS, HOOKS, METRICS, MODELS, RUNNERS, DefaultScope, Registry,
                               build_from_cfg)


def _build_in_own_scope(cfg, registry, default_args=None):
    # These registries have no mmdet/mmpose/mmpretrain children: build them in their own scope
    # instead of letting MMEngine look for (and warn about) the current default scope.
    with DefaultScope.overwrite_default_scope(registry.scope):
        return build_from_cfg(cfg, registry, default_args)


PRUNERS = Registry('pruner', scope='dfbf_mm', build_func=_build_in_own_scope)
SYNTHESIZERS = Registry('synthesizer', scope='dfbf_mm', build_func=_build_in_own_scope)

__all__ = ['DATASETS', 'HOOKS', 'METRICS', 'MODELS', 'RUNNERS', 'PRUNERS', 'SYNTHESIZERS']
