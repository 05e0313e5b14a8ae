"""Patch-similarity prior: the inversion signal for networks without BatchNorm.

A network normalised by LayerNorm / GroupNorm (ViT, DeiT, Swin, ConvNeXt, their detectors and
pose models) remembers no statistics of its training data, so BN-statistics matching has nothing
to match. PSAQ-ViT (Li et al., ECCV 2022) observed that on real images the patches (tokens) of a
trained transformer's features are diverse in how similar they are to each other, while on noise
or on images optimised for the class term alone they are nearly all alike. The prior maximises
the differential entropy of the pairwise cosine similarities of the tokens, estimated per image
with a Gaussian kernel density over a fixed grid, at the input of every norm layer (the residual
stream of a transformer block, a ConvNeXt block's features).

:class:`PatchSimilarityLoss` has the interface of :class:`BNStatisticsLoss` (hooks as a context
manager, ``reset()``, ``loss()``), so both synthesizers use either.
"""
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .bn_statistics import LayerHooks, bn_layers, model_name

PRIORS = ('auto', 'bn', 'patch')
_NORMS = tuple(t for t in (nn.LayerNorm, nn.GroupNorm, getattr(nn, 'RMSNorm', None)) if t is not None)


def norm_layers(module: nn.Module) -> List[Tuple[str, nn.Module]]:
    """``(name, layer)`` of every LayerNorm / GroupNorm / RMSNorm layer (subclasses included,
    e.g. mmpretrain's LayerNorm2d) over one feature dimension, in module order."""
    return [(name, m) for name, m in module.named_modules()
            if isinstance(m, _NORMS) and feature_dim(m) is not None]


def feature_dim(layer: nn.Module) -> Optional[int]:
    """The channels a norm layer normalises, or None (LayerNorm over several dims)."""
    if isinstance(layer, nn.GroupNorm):
        return layer.num_channels
    shape = tuple(getattr(layer, 'normalized_shape', ()) or ())
    return shape[0] if len(shape) == 1 else None


def resolve_prior(target: nn.Module, prior: str, field: str = 'prior') -> str:
    """``'bn'`` or ``'patch'``: ``'auto'`` is BN statistics when ``target`` has BN layers with
    running statistics, else the patch prior; a named prior the target cannot give is an error."""
    if prior not in PRIORS:
        raise ValueError(f'{field}: {prior!r} is not one of {", ".join(PRIORS)}')
    if prior == 'auto':
        return 'bn' if bn_layers(target) else 'patch'
    if prior == 'patch' and not norm_layers(target):
        raise ValueError(f'{field}: {model_name(target)} has no LayerNorm/GroupNorm layers; '
                         f"the patch prior reads their inputs (use prior='bn')")
    return prior


PATCH_SETTINGS = ('prior', 'patch_weight', 'patch_tokens')


def without_unused_prior(settings: dict, target: Optional[nn.Module] = None) -> dict:
    """``settings`` for a cache key: the patch prior's settings only where it runs (a target
    without BN, or ``prior='patch'``), as ``prior='patch'``; with BN statistics they change
    nothing, so the keys of BN models' caches are those from before the settings existed."""
    prior = settings['prior']
    if target is not None and prior == 'auto':
        prior = resolve_prior(target, prior)
    settings = dict(settings)
    if prior == 'patch':
        settings['prior'] = 'patch'
        return settings
    for key in PATCH_SETTINGS:
        settings.pop(key, None)
    return settings


def tokens(x: torch.Tensor, channels: int, channels_first: bool) -> Optional[torch.Tensor]:
    """A norm layer's input as (N, L, C) tokens: (N, L, C) as is, (N, C, H, W) or (N, H, W, C)
    flattened; None for shapes without tokens (a pooled (N, C) vector)."""
    if x.dim() == 3 and x.shape[-1] == channels:
        return x
    if x.dim() == 4:
        first, last = x.shape[1] == channels, x.shape[-1] == channels
        if first and (channels_first or not last):
            return x.flatten(2).transpose(1, 2)
        if last:
            return x.flatten(1, 2)
    return None


def layer_tokens(layer: nn.Module, x: torch.Tensor) -> Optional[torch.Tensor]:
    """The input ``x`` of norm ``layer`` as (N, L, C) tokens (:func:`tokens`): channels first
    for GroupNorm and LayerNorm subclasses (mmpretrain's LayerNorm2d), last for nn.LayerNorm."""
    channels_first = isinstance(layer, nn.GroupNorm) or type(layer) is not nn.LayerNorm
    return tokens(x, feature_dim(layer), channels_first)


def similarity_entropy(t: torch.Tensor, max_tokens: int, grid: int = 16) -> torch.Tensor:
    """Differential entropy per image of the pairwise cosine similarities of (N, L, C) tokens.

    At most ``max_tokens`` tokens per image (evenly spaced) enter the (L x L) similarity
    matrix, so the cost stays bounded on large feature maps. The density is a Gaussian KDE
    (Silverman's bandwidth) on ``grid`` points between the smallest and largest similarity,
    integrated with the trapezoidal rule, as PSAQ-ViT's estimator.
    """
    t = t.float()
    if t.shape[1] > max_tokens:
        t = t[:, torch.linspace(0, t.shape[1] - 1, max_tokens, device=t.device).long()]
    f = F.normalize(t, dim=-1)
    sims = f @ f.transpose(1, 2)
    i, j = torch.triu_indices(sims.shape[1], sims.shape[2], offset=1, device=t.device)
    s = sims[:, i, j]  # (N, M) distinct pairs
    n = s.shape[1]
    bw = (1.06 * s.std(dim=1, keepdim=True) * n ** -0.2).clamp_min(1e-3)
    lo, hi = s.min(dim=1, keepdim=True)[0].detach(), s.max(dim=1, keepdim=True)[0].detach()
    pts = lo + (hi - lo) * torch.linspace(0, 1, grid, device=t.device)  # (N, grid)
    z = (pts.unsqueeze(2) - s.unsqueeze(1)) / bw.unsqueeze(2)  # (N, grid, M)
    pdf = torch.exp(-0.5 * z * z).mean(dim=2) / (bw * (2 * torch.pi) ** 0.5)
    pdf = pdf + 1e-4
    return torch.trapezoid(-pdf * torch.log(pdf), pts, dim=1)


class PatchSimilarityLoss(LayerHooks):
    """Forward hooks on every norm layer of a module (a context manager, as
    :class:`BNStatisticsLoss`); :meth:`loss` is minus the mean, over the hooked layers and the
    images, of the patch-similarity entropy of the layer inputs.

    Args:
        module: the inversion target.
        max_tokens: tokens per image entering the similarity matrix (evenly spaced subset).
    """

    name = 'patch'

    def __init__(self, module: nn.Module, max_tokens: int = 32, field: str = 'target'):
        self.layers = norm_layers(module)
        if not self.layers:
            raise ValueError(f'{field}: {model_name(module)} has neither BatchNorm layers '
                             "(prior 'bn') nor LayerNorm/GroupNorm layers (prior 'patch'); "
                             'inversion has no prior to match')
        self.max_tokens = int(max_tokens)
        self._handles = []
        self._terms: List[torch.Tensor] = []

    def _hook(self, layer: nn.Module, inputs, output) -> None:
        t = layer_tokens(layer, inputs[0])
        if t is not None and t.shape[1] > 2:
            self._terms.append(-similarity_entropy(t, self.max_tokens).mean())

    def loss(self) -> torch.Tensor:
        """Mean over the hooked layers that saw tokens since :meth:`reset`."""
        if not self._terms:
            raise RuntimeError('no norm layer saw token features since the last reset(); '
                               'call the target first')
        return torch.stack(self._terms).mean()


__all__ = ['PRIORS', 'PATCH_SETTINGS', 'without_unused_prior', 'layer_tokens', 'PatchSimilarityLoss', 'norm_layers',
           'resolve_prior', 'similarity_entropy']
