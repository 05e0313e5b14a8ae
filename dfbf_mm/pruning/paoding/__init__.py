"""Paoding: progressive, stochastic, robustness-preserving data-free pruning of dense units.

Importing this package registers ``PaodingPruner`` in ``dfbf_mm.registry.PRUNERS``.
"""
from .chain import DenseChain, find_dense_chains, trace_leaves
from .conv_blocks import ConvBlock, find_conv_blocks, fold_batchnorm
from .impact import impact_score, metric_ent, metric_l
from .intervals import interval_module
from .merge import merge_units, remove_units
from .paoding_pruner import PaodingPruner
from .saliency import disjoint_pairs, saliency_matrix

__all__ = ['PaodingPruner', 'DenseChain', 'ConvBlock', 'find_conv_blocks', 'fold_batchnorm', 'find_dense_chains', 'trace_leaves', 'impact_score',
           'metric_l', 'metric_ent', 'interval_module', 'merge_units', 'remove_units',
           'saliency_matrix', 'disjoint_pairs']
