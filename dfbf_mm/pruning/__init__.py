"""Structured pruning of a backbone's inner channels (see ARCHITECTURE.md, stage "prune")."""
from .channel_groups import ChannelGroup, TraceResult, flatten_outputs, trace_channel_groups
from .channel_spec import (apply_channel_spec, extract_channel_spec, load_channel_spec,
                           save_channel_spec, snapshot_shapes, sub_spec)
from .l1_pruner import L1FilterPruner
from .pruned_backbone import PrunedBackbone
from .ratios import check_sparsity, kept_channels, layer_dependent_ratio
from .reparam import deploy_backbone_cfg, is_reparameterizable, reparameterize
from .student import build_student

__all__ = ['ChannelGroup', 'TraceResult', 'flatten_outputs', 'trace_channel_groups',
           'apply_channel_spec', 'extract_channel_spec', 'load_channel_spec', 'save_channel_spec',
           'snapshot_shapes', 'sub_spec', 'L1FilterPruner', 'PrunedBackbone', 'check_sparsity',
           'kept_channels', 'layer_dependent_ratio', 'deploy_backbone_cfg', 'is_reparameterizable', 'reparameterize',
           'build_student']
