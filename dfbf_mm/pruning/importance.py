"""Channel scores of a :class:`~.channel_groups.ChannelGroup`, from Torch-Pruning's importance.

Both are ``tp.importance.GroupMagnitudeImportance``; where it gives no score (a root layer
it does not know, e.g. a bare-parameter conv with a custom pruner) the root layer's filters
are scored the same way by hand, so every group gets a score of its width.
"""
import torch
import torch_pruning as tp
from torch_pruning.pruner import function

_OUT_FNS = (function.prune_conv_out_channels, function.prune_linear_out_channels)


def _root_filter_power(group, norm: int) -> torch.Tensor:
    w = group.root.weight.detach()
    if getattr(group.root, 'transposed', False):
        w = w.transpose(0, 1)
    return w.flatten(1).float().abs().pow(norm).sum(1)


def _tp_scores(group, imp) -> torch.Tensor:
    try:
        scores = imp(group.group)
    except Exception:  # noqa: BLE001 -- an item Torch-Pruning cannot score
        return None
    if scores is None or scores.numel() != group.width or not torch.isfinite(scores).all():
        return None
    return scores.detach().float().cpu()


def filter_scores(group, norm: int) -> torch.Tensor:
    """Lp norm of each output filter of the group's root layer (which channels a group loses).

    Torch-Pruning's importance of the root item (``group_reduction='first'``, no normaliser) is
    the p-th power of that norm, hence the root. Only the root is used: the group norm can put
    every removed channel into one input slice of a concat, emptying the layer behind it
    (CSPNeXt).
    """
    scores = None
    if group.group[0].dep.handler in _OUT_FNS:  # 'first' is the root item only for these
        imp = tp.importance.GroupMagnitudeImportance(p=norm, group_reduction='first', normalizer=None)
        scores = _tp_scores(group, imp)
    if scores is None:
        scores = _root_filter_power(group, norm).cpu()
    return scores.pow(1.0 / norm)


def group_scores(group, norm: int) -> torch.Tensor:
    """Normalised group Lp norm of each channel (global ranking: how many channels a group loses).

    The mean over the group's layers of each channel's filter / input-slice / BN weight norm
    (``GroupMagnitudeImportance(p, 'mean', 'mean')``), divided by its mean over the group so
    groups of different layers compare; the root filters alone where Torch-Pruning gives no score.
    """
    imp = tp.importance.GroupMagnitudeImportance(p=norm, group_reduction='mean', normalizer='mean')
    scores = _tp_scores(group, imp)
    if scores is None:
        w = _root_filter_power(group, norm).cpu()
        scores = w / w.mean().clamp_min(1e-12)
    return scores
