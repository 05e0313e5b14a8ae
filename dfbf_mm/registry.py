"""Registries of dfbf_mm.

Models, datasets, hooks, runners and metrics are registered in MMEngine's *root* registries:
mmdet, mmpose and mmpretrain registries are children of those, and a child looks a name up in
its parents, so a dfbf type is buildable from any of the three default scopes once
``custom_imports=dict(imports=['dfbf_mm'])`` has run.

Pruners and synthesizers are our own concepts and get registries of their own.
"""
from mmengine.registry import DATASETS, HOOKS, METRICS, MODELS, RUNNERS, Registry

PRUNERS = Registry('pruner', scope='dfbf_mm')
SYNTHESIZERS = Registry('synthesizer', scope='dfbf_mm')

__all__ = ['DATASETS', 'HOOKS', 'METRICS', 'MODELS', 'RUNNERS', 'PRUNERS', 'SYNTHESIZERS']
