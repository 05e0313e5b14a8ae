"""GeneratorSynthesizer: a meta-learned generator network instead of per-image optimisation.

Fast-Datafree (Fang et al., AAAI 2022; spec fast_synthesis.md). DeepInversion optimises every
pixel of every batch from noise (200-3000 teacher passes per batch); here a small DCGAN-like
generator G(z) makes the images, so batches share what G has learnt:

* a persistent *meta* generator; for every batch a copy of it and fresh latents z are adapted
  by a few Adam steps (``steps``, 10 by default) on the inversion loss (BN statistics, CE for
  classifiers, priors), the images of the best step are kept, and the meta weights move
  towards what worked (first-order MAML or Reptile), so later batches start near good images;
* BN targets with momentum: every BN input's batch mean / variance is mixed with the
  statistics of the earlier batches before it is compared with the running statistics, so a
  batch need not match them alone;
* a stream's first batch takes ``first_steps`` (the meta generator starts untrained), capped so
  that a stream spends at most ``max_passes_per_image`` passes per image overall (a one-batch
  stream: that many steps);
* optionally (``refine_steps``) the kept images are then refined per pixel by a few
  DeepInversion steps started from them: the generator gives a start far closer to the BN
  statistics than noise (det digits: BN loss 83 after the generator, 38 after 20 more pixel
  steps, vs ~125 for 20 DeepInversion steps from noise), and those steps are counted;
* batches form *streams* (``stream_batches``): one meta generator per stream, seeded by the
  stream's index. A stream is sequential (batch b starts from the meta state after b - 1), so
  after every batch the stream's state is written beside the cache; a killed run resumes from
  it and loses at most the batch in progress. A DDP rank synthesises whole streams.

Teacher passes (forward+backward) are counted per batch, the stream's longer first batch
(``first_steps``: the meta generator starts untrained) included.
"""
import copy
import math
import os.path as osp
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from torch import nn
from tqdm import tqdm

from ..device import autocast_for, cpu_seeded
from ..registry import SYNTHESIZERS
from .bn_statistics import BNStatisticsLoss, batch_statistics
from .cache import atomic_save, load_state
from .deepinversion import (DeepInversionSynthesizer, check_batch_shape, check_prior_settings, frozen_eval,
                            inversion_terms, prior_hooks)
from .patch_similarity import PATCH_SETTINGS, resolve_prior, without_unused_prior
from .inversion_target import check_image_size
from .presets import GENERATOR_SETTINGS_DOC, get_generator_preset, with_overrides
from .priors import TV_NORMS


def num_upsamples(image_size: Sequence[int]) -> int:
    """2x up-sampling stages of the generator: its first feature map is at most 8 px (>= 2 stages)."""
    return max(2, math.ceil(math.log2(max(image_size) / 8)))


def _derived_seed(gen: torch.Generator) -> int:
    return int(torch.randint(0, 2**62, (1,), generator=gen).item())


class Generator(nn.Module):
    """z (+ one-hot label) -> linear -> (2 ngf, h0, w0) -> [upsample, conv 3x3, BN, LeakyReLU] x n -> conv -> image.

    Fast-Datafree's DCGAN-like generator with as many 2x stages as the image size needs
    (:func:`num_upsamples`); the output (pre-activation) is cropped to ``image_size``.
    Always used in train mode (batch statistics in its own BN layers).
    """

    def __init__(self, latent_dim: int, channels: int, image_size: Tuple[int, int], out_channels: int,
                 num_classes: int = 0):
        super().__init__()
        self.num_classes = num_classes
        ups = num_upsamples(image_size)
        self.image_size = tuple(image_size)
        self.wide = 2 * channels
        self.init_size = tuple(-(-s // 2**ups) for s in image_size)
        self.linear = nn.Linear(latent_dim + num_classes, self.wide * self.init_size[0] * self.init_size[1])
        blocks: List[nn.Module] = [nn.BatchNorm2d(self.wide)]
        for i in range(ups):
            out = channels if i == ups - 1 else self.wide
            blocks += [nn.Upsample(scale_factor=2, mode='nearest'),
                       nn.Conv2d(self.wide, out, 3, padding=1, bias=False), nn.BatchNorm2d(out),
                       nn.LeakyReLU(0.2)]
        blocks.append(nn.Conv2d(channels, out_channels, 3, padding=1))
        self.blocks = nn.Sequential(*blocks)

    def forward(self, z: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.num_classes:  # class-conditional: the one-hot label beside the latent
            z = torch.cat([z, F.one_hot(labels, self.num_classes).to(z.dtype)], 1)
        x = self.blocks(self.linear(z).view(len(z), self.wide, *self.init_size))
        return x[:, :, :self.image_size[0], :self.image_size[1]]


class MomentumBNLoss(BNStatisticsLoss):
    """BN-statistics loss whose batch statistics are mixed with those of earlier batches.

    Per BN call i of a forward: ``mean_i = (1 - m) * batch mean + m * buffer mean`` (variance
    alike), then the usual ``||mean_i - running_mean|| + ||var_i - running_var||``. ``buffers``
    (one (mean, var) per BN call, None before the first batch) are updated by :meth:`update`
    with the statistics of the images a batch keeps.
    """

    def __init__(self, module: nn.Module, first_bn_multiplier: float, momentum: float,
                 buffers: Optional[List[Tuple[torch.Tensor, torch.Tensor]]]):
        super().__init__(module, first_bn_multiplier)
        self.momentum = float(momentum)
        self.buffers = buffers
        self.current: List[Tuple[torch.Tensor, torch.Tensor]] = []

    def _hook(self, layer, inputs, output) -> None:
        mean, var = batch_statistics(inputs[0])
        i = len(self._terms)
        self.current.append((mean.detach(), var.detach()))
        if self.momentum and self.buffers is not None and i < len(self.buffers):
            m = self.momentum
            mean = (1 - m) * mean + m * self.buffers[i][0]
            var = (1 - m) * var + m * self.buffers[i][1]
        self._terms.append(torch.norm(mean - layer.running_mean.float(), 2)
                           + torch.norm(var - layer.running_var.float(), 2))

    def reset(self) -> None:
        super().reset()
        self.current = []

    def update(self, stats: List[Tuple[torch.Tensor, torch.Tensor]]) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """The buffers after a batch whose kept images had the BN statistics ``stats``."""
        m = self.momentum
        if self.buffers is None or len(self.buffers) != len(stats):
            return [(a.clone(), b.clone()) for a, b in stats]
        return [(m * bm + (1 - m) * a, m * bv + (1 - m) * b)
                for (bm, bv), (a, b) in zip(self.buffers, stats)]


class _Stream:
    """One meta-learning stream: the meta generator, its optimizer, the BN momentum buffers."""

    def __init__(self, synth: 'GeneratorSynthesizer', seed: int, image_size, channels: int, device,
                 num_classes: int = 0, length: int = 1):
        s = synth.settings
        self.settings = s
        self.first_steps = s['first_steps']
        if s['max_passes_per_image']:  # a short stream gets a shorter warm-up
            self.first_steps = min(self.first_steps, max(
                s['steps'], (s['max_passes_per_image'] - s['refine_steps']) * length
                - s['steps'] * (length - 1)))
        self.refiner = synth.refiner()
        with cpu_seeded(seed):  # built on the CPU; no device generator re-seeded
            self.generator = Generator(s['latent_dim'], s['channels'], image_size, channels,
                                       num_classes if s['conditional'] else 0)
        self.generator.to(device).train()
        meta_lr = s['meta_lr'] if s['meta_lr'] is not None else s['lr'] * s['steps']
        self.optimizer = torch.optim.Adam(self.generator.parameters(), lr=meta_lr, betas=s['betas'])
        self.buffers: Optional[List[Tuple[torch.Tensor, torch.Tensor]]] = None
        self.done = 0  # batches this stream has made
        self.device = device

    def state_dict(self) -> dict:
        return dict(generator=self.generator.state_dict(), optimizer=self.optimizer.state_dict(),
                    buffers=[list(p) for p in self.buffers or []], done=self.done)

    def load_state_dict(self, state: dict) -> None:
        self.generator.load_state_dict(state['generator'])
        self.optimizer.load_state_dict(state['optimizer'])
        self.buffers = [(m.to(self.device), v.to(self.device)) for m, v in state['buffers']] or None
        self.done = int(state['done'])

    def steps(self) -> int:
        return self.first_steps if self.done == 0 else self.settings['steps']

    def save(self, path: str, key: str, **extra) -> None:
        """Write the stream's state (and ``extra``) to ``path`` atomically, under cache ``key``."""
        atomic_save(dict(self.state_dict(), key=key, **extra), path)

    @staticmethod
    def saved(path: str, key: str, what: str, **expected) -> Optional[dict]:
        """The state :meth:`save` wrote to ``path`` under ``key`` (and ``expected``), or None; a
        bad file is named, deleted and ignored (:func:`load_state`)."""
        return load_state(path, what, 'the stream starts afresh',
                          lambda state: None if 'generator' in state else 'no generator state', key=key, **expected)

    def batch(self, target: nn.Module, batch_size: int, pixel_range, seed: int,
              labels: Optional[torch.Tensor], bar, adversary=None
              ) -> Tuple[torch.Tensor, Dict[str, float]]:
        """Adapt a copy of the meta generator to one batch; update the meta state; the images.

        ``adversary`` (a :class:`FeatureAdversary`, entered by the caller): its term, weighted,
        is subtracted from the loss of every step, refinement included (online synthesis)."""
        s = self.settings
        device = self.device
        start = time.perf_counter()
        gen = torch.Generator().manual_seed(int(seed))
        meta = self.generator
        if s['reset_latent_layer']:
            with cpu_seeded(_derived_seed(gen)):
                fresh = nn.Linear(meta.linear.in_features, meta.linear.out_features).to(device)
            meta.linear.load_state_dict(fresh.state_dict())
        fast = copy.deepcopy(meta)
        z = torch.randn(batch_size, s['latent_dim'], generator=gen).to(device).requires_grad_(True)
        optimizer = torch.optim.Adam([{'params': list(fast.parameters())},
                                      {'params': [z], 'lr': s['lr_z']}], lr=s['lr'], betas=s['betas'])
        meta_params, fast_params = list(meta.parameters()), list(fast.parameters())
        for p in meta_params:
            p.grad = torch.zeros_like(p)
        lo, hi = (t.to(device) for t in pixel_range)
        autocast = autocast_for(device, s['amp'])
        if labels is not None:
            labels = labels.to(device).long()
        if meta.num_classes and labels is None:
            raise ValueError('conditional: a class-conditional generator needs labels (classification)')
        if resolve_prior(target, s['prior']) == 'bn':
            bn = MomentumBNLoss(target, s['first_bn_multiplier'], s['bn_momentum'], self.buffers)
        else:  # no statistics to carry across batches
            bn = prior_hooks(target, s)
        best = None
        steps = self.steps()
        student_passes = 0
        with frozen_eval(target), bn:
            for _ in range(steps):
                x = lo + (hi - lo) * torch.sigmoid(fast(z, labels).float())
                # drawn whatever the settings, so one seed gives one random stream
                dy, dx = torch.randint(-s['jitter'], s['jitter'] + 1, (2,), generator=gen).tolist()
                flip = bool(torch.rand(1, generator=gen).item() < 0.5)
                xj = torch.roll(x, shifts=(dy, dx), dims=(2, 3)) if s['jitter'] else x
                if s['flip'] and flip:
                    xj = torch.flip(xj, dims=(3,))
                optimizer.zero_grad(set_to_none=True)
                bn.reset()
                with autocast():
                    out = target(xj)
                terms = inversion_terms(s, bn, xj, out, labels)
                if adversary is not None:  # new images where the student still differs
                    terms['adv'] = adversary.term(xj)
                    terms['loss'] = terms['loss'] - adversary.weight * terms['adv']
                    student_passes += 1
                terms['loss'].backward()
                value = float(terms['loss'].item())
                if best is None or s['keep'] == 'last' or value < best[0]:
                    best = (value, x.detach().clone(), list(getattr(bn, 'current', ())),
                            {k: float(v.detach().item()) for k, v in terms.items()})
                if s['meta'] == 'fomaml':
                    for pm, pf in zip(meta_params, fast_params):
                        if pf.grad is not None:
                            pm.grad.add_(pf.grad)
                optimizer.step()
                if bar is not None:
                    bar.set_postfix({k: f'{v:.3g}' for k, v in best[3].items() if k != 'loss'},
                                    refresh=False)
                    bar.update(1)
            if s['meta'] == 'reptile':  # theta <- theta + meta_lr (theta_k - theta)
                beta = s['meta_lr'] if s['meta_lr'] is not None else 1.0
                with torch.no_grad():
                    for pm, pf in zip(meta_params, fast_params):
                        pm.add_(pf - pm, alpha=beta)
                    for bm, bf in zip(meta.buffers(), fast.buffers()):
                        bm.copy_(bf)
            else:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if isinstance(bn, MomentumBNLoss):
                self.buffers = bn.update(best[2])
            images = best[1]
            if self.refiner is not None:  # per-pixel steps from the generated images
                images, refined = self.refiner.synthesize(target, batch_size, tuple(images.shape[2:]),
                                                          pixel_range, seed, labels, progress=False,
                                                          init=images, adversary=adversary)
                steps += int(refined['teacher_passes'])
                student_passes += int(refined['student_passes'])
                if bar is not None:
                    bar.update(int(refined['teacher_passes']))
            with torch.no_grad():  # the plain prior loss of the kept images (as DeepInversion's bn_eval)
                plain = prior_hooks(target, s)
                with plain:
                    target(images)
                    prior_eval = plain.loss().item()
        self.done += 1
        stats = dict(best[3], **{f'{plain.name}_eval': prior_eval}, teacher_passes=steps, student_passes=student_passes,
                     seconds=time.perf_counter() - start)
        return images, stats


@SYNTHESIZERS.register_module()
class GeneratorSynthesizer:
    """Synthesise image batches with a meta-learned generator (Fast-Datafree).

    Used through :class:`SyntheticImageDataset` (``dfbf.synthesizer=dict(type='GeneratorSynthesizer',
    preset='classification')``), which hands it the cache to fill (:meth:`fill_cache`).

    Args:
        preset: a name from :data:`dfbf_mm.synthesis.presets.GENERATOR_PRESETS`
            (``classification``, ``detection``, ``pose``).
        **overrides: any setting of :data:`dfbf_mm.synthesis.presets.GENERATOR_SETTINGS_DOC`.
    """

    def __init__(self, preset: str = 'classification', **overrides):
        settings = with_overrides(get_generator_preset(preset), overrides, 'GeneratorSynthesizer')
        self._validate(settings)
        self.preset = preset
        self.settings = settings
        self.last_run: Dict[str, float] = {}

    @staticmethod
    def _validate(s: dict) -> None:
        for key, low in (('steps', 1), ('first_steps', 1), ('stream_batches', 0), ('latent_dim', 1),
                         ('max_passes_per_image', 0), ('refine_steps', 0),
                         ('channels', 1), ('jitter', 0)):
            if not isinstance(s[key], int) or isinstance(s[key], bool) or s[key] < low:
                raise ValueError(f'{key}: must be an integer >= {low}, got {s[key]!r}')
        for key in ('lr', 'lr_z', 'meta_lr', 'refine_lr'):
            if (s[key] is not None or key != 'meta_lr') and not (isinstance(s[key], (int, float)) and s[key] > 0):
                raise ValueError(f'{key}: must be positive, got {s[key]!r}')
        for key in ('bn_weight', 'first_bn_multiplier', 'ce_weight', 'tv_weight', 'l2_weight'):
            if not (isinstance(s[key], (int, float)) and s[key] >= 0):
                raise ValueError(f'{key}: must be a non-negative number, got {s[key]!r}')
        if s['tv_norm'] not in TV_NORMS:
            raise ValueError(f'tv_norm: {s["tv_norm"]!r} is not one of {", ".join(TV_NORMS)}')
        check_prior_settings(s)
        if not (isinstance(s['bn_momentum'], (int, float)) and 0 <= s['bn_momentum'] < 1):
            raise ValueError(f'bn_momentum: must be in [0, 1), got {s["bn_momentum"]!r}')
        if 0 < s['max_passes_per_image'] < s['steps'] + s['refine_steps']:
            raise ValueError(f"max_passes_per_image: {s['max_passes_per_image']} is below steps + "
                             f"refine_steps = {s['steps'] + s['refine_steps']} (every batch takes "
                             "that many passes); raise it or use 0")
        if s['meta'] not in ('fomaml', 'reptile'):
            raise ValueError(f"meta: {s['meta']!r} is not 'fomaml' or 'reptile'")
        if s['keep'] not in ('best', 'last'):
            raise ValueError(f"keep: {s['keep']!r} is not 'best' or 'last'")
        betas = s['betas']
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2 and all(0 <= b < 1 for b in betas)):
            raise ValueError(f'betas: must be two numbers in [0, 1), got {betas!r}')
        s['betas'] = tuple(float(b) for b in betas)

    SETTINGS_DOC = GENERATOR_SETTINGS_DOC

    def refiner(self) -> Optional[DeepInversionSynthesizer]:
        """The DeepInversion of ``refine_steps`` steps from the generated images (None when 0):
        the `fast` preset, one full-resolution phase whose second half is without jitter."""
        s = self.settings
        if not s['refine_steps']:
            return None
        return DeepInversionSynthesizer(
            preset='fast', iterations=s['refine_steps'], settle_iters=s['refine_steps'] // 2,
            half_res_iterations=0, coarse_iterations=0, warmup_iters=0, lr=s['refine_lr'],
            ce_weight=s['ce_weight'], amp=s['amp'], **{k: s[k] for k in PATCH_SETTINGS})

    @property
    def passes_per_batch(self) -> int:
        """Teacher forward+backward passes of a batch after a stream's first."""
        return self.settings['steps'] + self.settings['refine_steps']

    def config(self, target: Optional[nn.Module] = None) -> dict:
        """The fully resolved settings (what changes the images) for inverting ``target``, for
        cache keys and logs.

        Without refinement its settings are left out, and so is ``tv_norm`` at its first value
        'l2' and the patch prior's settings where it does not run, so caches made before they
        existed hit."""
        settings = without_unused_prior(self.settings, target)
        if not settings['refine_steps']:
            del settings['refine_steps'], settings['refine_lr']
        if settings['tv_norm'] == 'l2':
            del settings['tv_norm']
        return dict(type=type(self).__name__, **settings)

    def network_inputs(self) -> Sequence[Tuple[str, int]]:
        """``(phase name, factor)``: the teacher sees the generator's full-size output."""
        return [('generator (steps)', 1)]

    def synthesize(self, target: nn.Module, batch_size: int, image_size: Tuple[int, int],
                   pixel_range: Tuple[torch.Tensor, torch.Tensor], seed: int,
                   labels: Optional[torch.Tensor] = None, progress: bool = True
                   ) -> Tuple[torch.Tensor, Dict[str, float]]:
        """One batch from a fresh stream seeded by ``seed`` (``first_steps`` passes); returns
        ``(images (N, C, H, W) normalised, stats)``. Datasets use :meth:`fill_cache`."""
        check_batch_shape(batch_size, image_size)
        lo, _ = pixel_range
        device = next(target.parameters()).device
        check_image_size(target, [tuple(image_size)], lo.shape[0], device)
        k = (int(labels.max()) + 1) if labels is not None else 0
        stream = _Stream(self, seed, image_size, lo.shape[0], device, k)
        with tqdm(total=stream.steps() + self.settings['refine_steps'], desc='generator', disable=not progress, leave=False) as bar:
            return stream.batch(target, batch_size, pixel_range, seed, labels, bar)

    # ------------------------------------------------------------------ the dataset's cache
    def _state_path(self, cache, stream: int) -> str:
        return osp.join(cache.dir, f'generator_stream_{stream:04d}.pt')

    def offline_state(self, cache, stream: int, **expected) -> Optional[dict]:
        """The saved state of stream ``stream`` of ``cache``, or None (:meth:`_Stream.saved`)."""
        return _Stream.saved(self._state_path(cache, stream), cache.key, 'synthetic_data: generator state',
                             stream=stream, **expected)

    def fill_cache(self, dataset, target: nn.Module, pixel_range, labels_of: Callable[[int], Optional[torch.Tensor]],
                   num_classes: Optional[int] = None, rank: int = 0, world_size: int = 1, progress: bool = True) -> Dict[str, int]:
        """Synthesise this rank's missing batches of ``dataset`` (a prepared
        SyntheticImageDataset: its ``cache``, ``_shape``, ``seed``) stream by stream.

        Stream k holds batches ``[k S, (k + 1) S)`` (S = ``stream_batches``; 0: the batches split
        into one stream per rank, ``ceil(num_batches / world_size)`` each, so every rank
        synthesises; a single process makes one stream of all) and belongs to rank
        ``k % world_size``. A stream resumes from its saved state when that state is of the same
        batches and at or before its first missing batch (cached batches in between are
        recomputed, not rewritten), otherwise it restarts from its first batch: the same seeds give
        the same images, so either way the cache holds one stream's images. With 0, a run on
        another number of ranks lays its streams out anew (the images of a stream depend on the
        batches before it in that stream).
        """
        cache, shape, nb = dataset.cache, dataset._shape, dataset.num_batches
        per = self.settings['stream_batches'] or -(-nb // world_size)
        streams = [(k, range(s0, min(s0 + per, nb))) for k, s0 in enumerate(range(0, nb, per))]
        mine = [(k, r) for k, r in streams if k % world_size == rank]
        batches = [b for _, r in mine for b in r]
        missing = {b for b in batches if cache.load(b, shape) is None}
        print_log(f'synthetic_data: {len(batches) - len(missing)} of {len(batches)} batches cached '
                  f'in {cache.dir}; synthesising {len(missing)} (GeneratorSynthesizer)', logger='current')
        if not missing:
            return dict(generated=0, reused=len(batches))
        device = next(target.parameters()).device
        channels = shape[1]
        check_image_size(target, [tuple(shape[2:])], channels, device)
        plans = []
        for k, r in mine:
            todo = [b for b in r if b in missing]
            if not todo:
                continue
            stream = _Stream(self, _stream_seed(dataset.seed, k), shape[2:], channels, device,
                             num_classes if labels_of(r.start) is not None else 0, len(r))
            state = self.offline_state(cache, k)
            if state is not None and state.get('batches', [r.start, r.stop]) != [r.start, r.stop]:
                print_log(f'synthetic_data: generator stream {k} was of batches {state["batches"]}, '
                          f'now {[r.start, r.stop]} (another stream_batches or number of ranks); it '
                          'restarts from its first batch', logger='current', level=30)
                state = None
            if state is not None and r.start + int(state['done']) <= todo[0]:
                stream.load_state_dict(state)
            plans.append((k, stream, range(r.start + stream.done, todo[-1] + 1), [r.start, r.stop]))
        s = self.settings
        total = sum((stream.first_steps if stream.done == 0 and i == 0 else s['steps']) + s['refine_steps']
                    for _, stream, span, _ in plans for i, _ in enumerate(span))
        bar = tqdm(total=total, desc='generator steps', disable=not progress, dynamic_ncols=True)
        try:
            for k, stream, r, own in plans:
                for b in r:
                    labels = labels_of(b)
                    images, stats = stream.batch(target, dataset.batch_size, pixel_range,
                                                 _batch_seed(dataset.seed, b), labels, bar)
                    if b in missing:
                        cache.save(b, images, labels=labels, stats=stats)
                    stream.save(self._state_path(cache, k), cache.key, stream=k, batches=own)
        finally:
            bar.close()
        return dict(generated=len(missing), reused=len(batches) - len(missing))

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(preset={self.preset!r}, steps={self.settings["steps"]}, '
                f'first_steps={self.settings["first_steps"]})')


def _batch_seed(seed: int, index: int) -> int:
    from .dataset import batch_seed
    return batch_seed(seed, index)


def _stream_seed(seed: int, stream: int) -> int:
    from .dataset import batch_seed
    return batch_seed(seed, -1 - stream)


__all__ = ['GeneratorSynthesizer', 'Generator', 'MomentumBNLoss', 'num_upsamples']
