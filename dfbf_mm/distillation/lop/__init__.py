"""LOP: linear over-parameterization of a pruned network with an exact merge, and the
similarity-preserving KD loss used to fine-tune the expanded network (spec ``lop.md``).

Importing this package registers ``SimilarityPreservingLoss`` in ``dfbf_mm.registry.MODELS``.
"""
from .overparam import (ExpandedConv2d, ExpandedLinear, expand_model, find_expandable,
                        merge_model, merged_copy)
from .sp_loss import SimilarityPreservingLoss, similarity_preserving_loss

__all__ = ['ExpandedConv2d', 'ExpandedLinear', 'expand_model', 'find_expandable',
           'merge_model', 'merged_copy', 'SimilarityPreservingLoss',
           'similarity_preserving_loss']
