"""DeepInversion: optimise a batch of input pixels until the teacher's BN statistics match.

Implements spec §2 (DeepInversion, Yin et al. CVPR 2020, as used by DFBF): BN-statistics
matching on every BN-like layer, TV and l2 image priors and cross-entropy towards balanced
labels for classifiers (:func:`inversion_terms`, which the generator shares); random roll
jitter and flips drawn from a seeded generator, a coarse, a half-resolution and a full-resolution
phase, Adam with a constant or cosine (warm-up) learning rate, and a clamp to the model's own
valid pixel range after every step.
"""
import math
import time
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..compat import compile_fn
from ..device import autocast_for
from ..registry import SYNTHESIZERS
from ..utils import eval_mode, first_line
from .bn_statistics import BNStatisticsLoss
from .inversion_target import check_image_size
from .patch_similarity import PRIORS, PatchSimilarityLoss, resolve_prior, without_unused_prior
from .presets import NEUTRAL_SETTINGS, RETIRED_SETTINGS, get_preset, with_overrides
from .priors import TV_NORMS, l2_prior, total_variation


def _lr_factor(iters: int, warmup: int, schedule: str):
    """LambdaLR factor: linear warm-up, then constant or cosine decay to 0 over the phase."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == 'constant':
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, iters - warmup)))
    return factor


def frozen_eval(*modules: Optional[nn.Module]):
    """Eval mode and ``requires_grad=False`` inside; every module's previous state after."""
    return eval_mode(*modules, frozen=True)


def is_logits(out) -> bool:
    return torch.is_tensor(out) and out.dim() == 2


def class_term(out, labels: Optional[torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of a classifier's logits towards ``labels`` (default: balanced
    ``arange(N) % K``); a target that returns no logits is a one-line error."""
    if not is_logits(out):
        raise ValueError(f'labels: a CE term needs a logits target, but it returns '
                         f'{type(out).__name__}; use the whole classifier as target')
    if labels is None:
        labels = torch.arange(out.shape[0], device=out.device) % out.shape[1]
    return F.cross_entropy(out.float(), labels)


def prior_hooks(target: nn.Module, s: dict, field: str = 'target'):
    """The hooks of the inversion prior on ``target``: BN statistics or, for a target without
    BatchNorm (``prior='auto'``) or by name (``prior='patch'``), the patch-similarity prior."""
    if resolve_prior(target, s['prior']) == 'patch':
        return PatchSimilarityLoss(target, s['patch_tokens'], field)
    return BNStatisticsLoss(target, s['first_bn_multiplier'], field)


def check_prior_settings(s: dict) -> None:
    """One-line errors for the prior's settings (both synthesizers)."""
    if s['prior'] not in PRIORS:
        raise ValueError(f"prior: {s['prior']!r} is not one of {', '.join(PRIORS)}")
    if not (isinstance(s['patch_weight'], (int, float)) and s['patch_weight'] >= 0):
        raise ValueError(f"patch_weight: must be a non-negative number, got {s['patch_weight']!r}")
    if not (isinstance(s['patch_tokens'], int) and s['patch_tokens'] >= 3):
        raise ValueError(f"patch_tokens: must be an integer >= 3, got {s['patch_tokens']!r}")


def inversion_terms(s: dict, prior, xj: torch.Tensor, out, labels) -> Dict[str, torch.Tensor]:
    """The unweighted loss terms of one teacher forward on ``xj`` and their weighted sum ``loss``:
    the prior (``prior``, hooked on the teacher: BN statistics ``bn`` or patch similarity
    ``patch``), total variation (``tv_norm``), l2 and, for logits, CE; the weights are the
    settings ``s``' (both synthesizers)."""
    terms = {prior.name: prior.loss(), 'tv': total_variation(xj, s['tv_norm']), 'l2': l2_prior(xj)}
    loss = (s[f'{prior.name}_weight'] * terms[prior.name] + s['tv_weight'] * terms['tv']
            + s['l2_weight'] * terms['l2'])
    if s['ce_weight'] > 0 and (labels is not None or is_logits(out)):
        terms['ce'] = class_term(out, labels)
        loss = loss + s['ce_weight'] * terms['ce']
    terms['loss'] = loss
    return terms


def check_batch_shape(batch_size, image_size) -> None:
    """One-line errors for a batch DeepInversion cannot optimise."""
    if not isinstance(batch_size, int) or batch_size < 2:
        raise ValueError(f'batch_size: DeepInversion needs at least 2 images per batch '
                         f'(per-batch BN statistics are undefined for 1), got {batch_size!r}')
    if (not isinstance(image_size, (tuple, list)) or len(image_size) != 2
            or not all(isinstance(v, int) and v > 0 for v in image_size)):
        raise ValueError(f'image_size: must be (H, W) positive integers, got {image_size!r}')


def check_pixel_range(pixel_range) -> Tuple[torch.Tensor, torch.Tensor]:
    lo, hi = pixel_range
    if lo.dim() != 3 or lo.shape[1:] != (1, 1) or lo.shape != hi.shape:
        raise ValueError(f'pixel_range: expected two (C, 1, 1) tensors, got shapes '
                         f'{tuple(lo.shape)} and {tuple(hi.shape)}')
    return lo, hi


@SYNTHESIZERS.register_module()
class DeepInversionSynthesizer:
    """Synthesise image batches from a trained network's BatchNorm statistics.

    Args:
        preset: a name from :data:`dfbf_mm.synthesis.presets.PRESETS` (``classification``,
            ``detection``, ``pose``, ``fast``).
        **overrides: any setting of :data:`dfbf_mm.synthesis.presets.SETTINGS_DOC`, replacing the preset's value.
    """

    def __init__(self, preset: str = 'classification', **overrides):
        settings = with_overrides(get_preset(preset), overrides, 'DeepInversion')
        self._validate(settings)
        self.preset = preset
        self.settings = settings
        self._checked_sizes = set()
        self._compiled = {}  # id(target) -> CompiledStep (setting `compile`)

    @staticmethod
    def _validate(s: dict) -> None:
        for key in ('iterations', 'half_res_iterations', 'warmup_iters', 'jitter', 'half_res_jitter',
                    'coarse_iterations', 'settle_iters'):
            if not isinstance(s[key], int) or s[key] < 0:
                raise ValueError(f'{key}: must be a non-negative integer, got {s[key]!r}')
        if s['iterations'] + s['half_res_iterations'] + s['coarse_iterations'] == 0:
            raise ValueError('iterations: iterations + half_res_iterations + coarse_iterations '
                             'must be positive')
        if not isinstance(s['compile'], bool):
            raise ValueError(f"compile: must be True or False, got {s['compile']!r}")
        if not isinstance(s['coarse_factor'], int) or s['coarse_factor'] < 1:
            raise ValueError(f'coarse_factor: must be a positive integer, got {s["coarse_factor"]!r}')
        if s['lr'] is None or not s['lr'] > 0:
            raise ValueError(f"lr: must be positive, got {s['lr']!r}")
        if not s['init_std'] >= 0:
            raise ValueError(f"init_std: must be non-negative, got {s['init_std']!r}")
        if s['lr_schedule'] not in ('constant', 'cosine'):
            raise ValueError(f"lr_schedule: {s['lr_schedule']!r} is not 'constant' or 'cosine'")
        if s['tv_norm'] not in TV_NORMS:
            raise ValueError(f'tv_norm: {s["tv_norm"]!r} is not one of {", ".join(TV_NORMS)}')
        check_prior_settings(s)
        s['betas'] = tuple(float(b) for b in s['betas'])

    @property
    def passes_per_batch(self) -> int:
        """Teacher forward+backward passes spent on one batch started from noise."""
        s = self.settings
        return s['iterations'] + s['half_res_iterations'] + s['coarse_iterations']

    def config(self, target: Optional[nn.Module] = None) -> dict:
        """The fully resolved settings (what changes the images) for inverting ``target``, for
        cache keys and logs.

        Settings added after the reference are left out while they hold their neutral value
        (the reference's behaviour), so adding one does not invalidate existing caches; the
        retired ones keep their one value there for the same reason; the patch prior's settings
        appear only where it runs (:func:`without_unused_prior`).
        """
        settings = {k: v for k, v in without_unused_prior(self.settings, target).items()
                    if not (k in NEUTRAL_SETTINGS and v == NEUTRAL_SETTINGS[k])}
        return dict(type=type(self).__name__, **RETIRED_SETTINGS, **settings)

    def _phases(self, from_image: bool = False) -> Sequence[Tuple[str, int, int, int]]:
        """(kind, factor, iterations, jitter) per phase, in order.

        ``coarse``: the pixels are a (H/f, W/f) image, bilinearly upsampled to full size before
        the network (few, smooth degrees of freedom: a fast start); ``pool``: the reference's
        half-resolution phase, the full-size image avg-pooled by 2 into the network; ``full``.
        ``from_image``: the start is already an image (the generator's refinement): no coarse phase.
        """
        s = self.settings
        phases = []
        if s['coarse_iterations'] and not from_image:
            phases.append(('coarse', s['coarse_factor'], s['coarse_iterations'], s['jitter']))
        if s['half_res_iterations']:
            phases.append(('pool', 2, s['half_res_iterations'], s['half_res_jitter']))
        if s['iterations']:
            phases.append(('full', 1, s['iterations'], s['jitter']))
        return phases or [('full', 1, s['coarse_iterations'], s['jitter'])]

    PHASE_NAMES = dict(coarse='coarse (coarse_iterations)',
                       pool='half-resolution (half_res_iterations)',
                       full='full-resolution (iterations)')

    def network_inputs(self) -> Sequence[Tuple[str, int]]:
        """``(phase name, factor)`` per phase: the network sees ``image_size // factor``
        (a coarse phase is upsampled to full size before the network)."""
        return [(self.PHASE_NAMES[kind], 1 if kind == 'coarse' else f)
                for kind, f, _, _ in self._phases()]

    def synthesize(self, target: nn.Module, batch_size: int, image_size: Tuple[int, int],
                   pixel_range: Tuple[torch.Tensor, torch.Tensor], seed: int,
                   labels: Optional[torch.Tensor] = None, progress: bool = True,
                   init: Optional[torch.Tensor] = None, adversary=None
                   ) -> Tuple[torch.Tensor, Dict[str, float]]:
        """Optimise one batch; returns ``(images (N, C, H, W) normalised, stats)``.

        Args:
            target: the module to invert (see :func:`inversion_target`); runs frozen in eval
                mode, its previous mode and ``requires_grad`` are restored afterwards.
            pixel_range: ``(lo, hi)`` per channel (C, 1, 1) in normalised space.
            seed: seeds the initial noise and every jitter/flip draw (same seed, same images
                on CPU).
            labels: CE targets for a logits target; default: balanced ``arange(N) % K``.
            init: start from these images instead of noise (the generator's refinement).
            adversary: a :class:`FeatureAdversary` the caller has entered; ``weight * term`` is
                subtracted from the loss (online synthesis against the current student).
        """
        s = self.settings
        check_batch_shape(batch_size, image_size)
        lo, hi = check_pixel_range(pixel_range)
        device = next(target.parameters()).device
        phases = self._phases(from_image=init is not None)
        self._check_sizes(target, image_size, phases, lo.shape[0], device)
        gen = torch.Generator().manual_seed(int(seed))
        x = self._start(init, phases[0], batch_size, lo.shape[0], image_size, gen)
        lo, hi = lo.to(device), hi.to(device)
        autocast = autocast_for(device, s['amp'])
        if labels is not None:
            labels = labels.to(device).long()
        forward_terms = self._forward_terms
        if s['compile'] and adversary is None:  # the adversary's taps are hooks of its own: eager
            if id(target) not in self._compiled:  # built once: not a new wrapper every batch
                self._compiled[id(target)] = CompiledStep(target)
            forward_terms = self._compiled[id(target)]
        bn_hooks = prior_hooks(target, s)
        passes = student_passes = 0
        terms: Dict[str, torch.Tensor] = {}
        start = time.perf_counter()
        with frozen_eval(target), bn_hooks, tqdm(total=sum(p[2] for p in phases), desc='DeepInversion',
                                                  disable=not progress, dynamic_ncols=True, leave=False) as bar:
            for kind, factor, iters, jitter in phases:
                # the coarse phase optimises the small image; the others the full-size one
                param = (x.to(device).clamp_(lo, hi) if kind == 'coarse' else x.to(device)).requires_grad_(True)
                optimizer = torch.optim.Adam([param], lr=s['lr'], betas=s['betas'])
                scheduler = torch.optim.lr_scheduler.LambdaLR(
                    optimizer, _lr_factor(iters, s['warmup_iters'], s['lr_schedule']))
                for it in range(iters):
                    # the last settle_iters steps see the images as they will be used
                    settle = kind == phases[-1][0] and it >= iters - s['settle_iters']
                    xj = self._view(param, kind, factor, image_size, jitter, gen, settle)
                    optimizer.zero_grad(set_to_none=True)
                    bn_hooks.reset()
                    with autocast():
                        terms, out = forward_terms(self, target, bn_hooks, xj, labels)
                    if adversary is not None:
                        terms['adv'] = adversary.term(xj)
                        terms['loss'] = terms['loss'] - adversary.weight * terms['adv']
                        student_passes += 1
                    terms['loss'].backward()
                    optimizer.step()
                    scheduler.step()
                    with torch.no_grad():
                        param.clamp_(lo, hi)
                    passes += 1
                    if progress and (it % 10 == 0 or it == iters - 1):
                        bar.set_postfix({k: f'{v.item():.3g}' for k, v in terms.items() if k != 'loss'},
                                        refresh=False)
                    bar.update(1)
                x = _upsample(param.detach(), image_size).clamp_(lo, hi) if kind == 'coarse' else param
            with torch.no_grad():
                bn_hooks.reset()
                target(x)
                prior_eval = bn_hooks.loss().item()
        stats = {k: float(v.detach().item()) for k, v in terms.items()}
        stats.update({f'{bn_hooks.name}_eval': prior_eval}, teacher_passes=passes, student_passes=student_passes,
                     seconds=time.perf_counter() - start)
        return x.detach(), stats

    def _check_sizes(self, target, image_size, phases, channels, device) -> None:
        """The network accepts every phase's input size (checked once per target and sizes)."""
        h, w = image_size
        sizes = tuple((h, w) if kind == 'coarse' else (h // f, w // f) for kind, f, _, _ in phases)
        if (id(target), sizes, str(device)) not in self._checked_sizes:
            check_image_size(target, sizes, channels, device)
            self._checked_sizes.add((id(target), sizes, str(device)))

    def _start(self, init, first_phase, batch_size, channels, image_size, gen) -> torch.Tensor:
        """The starting pixels: ``init``, or N(0, init_std^2) noise (the coarse phase's size)."""
        h, w = image_size
        if init is not None:
            if tuple(init.shape) != (batch_size, channels, h, w):
                raise ValueError(f'init: expected shape {(batch_size, channels, h, w)}, got {tuple(init.shape)}')
            return init.detach().clone().float()
        kind, f = first_phase[:2]
        size = (-(-h // f), -(-w // f)) if kind == 'coarse' else (h, w)
        return torch.randn(batch_size, channels, *size, generator=gen) * self.settings['init_std']

    def _view(self, param, kind, factor, image_size, jitter, gen, settle) -> torch.Tensor:
        """What the network sees of ``param`` this step: upsampled (coarse) or pooled, rolled
        by up to ``jitter`` pixels and flipped (``flip``), both off while settling."""
        xj = _upsample(param, image_size) if kind == 'coarse' else (
            F.avg_pool2d(param, factor) if factor > 1 else param)
        # drawn whatever the settings, so one seed gives one random stream
        dy, dx = torch.randint(-jitter, jitter + 1, (2,), generator=gen).tolist()
        flip = bool(torch.rand(1, generator=gen).item() < 0.5)
        if jitter and not settle:
            xj = torch.roll(xj, shifts=(dy, dx), dims=(2, 3))
        if self.settings['flip'] and flip and not settle:
            xj = torch.flip(xj, dims=(3,))
        return xj

    @staticmethod
    def _forward_terms(synthesizer, target, bn_hooks, xj, labels):
        """The teacher's forward on ``xj`` and the loss terms: ``(terms, out)``. What the
        setting ``compile`` compiles (:class:`CompiledStep`)."""
        out = target(xj)
        return inversion_terms(synthesizer.settings, bn_hooks, xj, out, labels), out

    def __repr__(self) -> str:
        return f'{type(self).__name__}(preset={self.preset!r}, passes_per_batch={self.passes_per_batch})'


def _upsample(z: torch.Tensor, image_size) -> torch.Tensor:
    return F.interpolate(z, size=tuple(image_size), mode='bilinear', align_corners=False)


class CompiledStep:
    """``DeepInversionSynthesizer._forward_terms`` under ``torch.compile``, one per teacher.

    The BN hooks, the synthesizer's settings and the labels are arguments, not closure cells,
    so a new batch (new hooks) reuses the compiled graph instead of recompiling; another input
    size (the half-resolution phase) compiles once more. Backward runs through the compiled graph too.
    """

    def __init__(self, target: nn.Module):
        self.target_name = type(target).__name__
        self.fn = compile_fn(DeepInversionSynthesizer._forward_terms, 'compile')
        self.calls = 0

    def __call__(self, synthesizer, target, bn_hooks, xj, labels):
        # one view of the input in every phase and step (a leaf image, a rolled or upsampled
        # one): the graph's guards see the same kind of tensor, so nothing recompiles
        xj = xj.view_as(xj)
        if self.calls:
            return self.fn(synthesizer, target, bn_hooks, xj, labels)
        try:
            result = self.fn(synthesizer, target, bn_hooks, xj, labels)
        except Exception as err:  # the compiler's own failure (no C++ compiler, an op it lacks)
            raise RuntimeError(f'compile: torch.compile failed on {self.target_name} '
                               f'({first_line(err)}); set compile=False') from err
        self.calls += 1
        return result


__all__ = ['DeepInversionSynthesizer', 'CompiledStep', 'inversion_terms', 'prior_hooks', 'frozen_eval']
