"""Named DeepInversion settings.

``classification`` and ``detection``/``pose`` are the reference's settings (spec §2).
``fast`` spends 1/10 of the classification reference's passes (200 per batch): lr 0.25, and
the roll jitter only in the first 100 steps, so the images settle on the BN statistics as they
are used. Measured against the reference by tools/benchmarks/synthesis_speed.py
(docs/synthesis_speed.md).
"""
import copy

# The inversion prior, the same settings in both synthesizers.
PRIOR_SETTINGS_DOC = {
    'prior': "what the images must satisfy inside the teacher: 'bn' (BatchNorm running statistics), "
             "'patch' (patch-similarity entropy at the LayerNorm/GroupNorm inputs, PSAQ-ViT; for "
             "models without BN) or 'auto' ('bn' when the inversion target has BN layers, else "
             "'patch')",
    'patch_weight': "weight of the patch prior (prior 'patch')",
    'patch_tokens': 'tokens per image (evenly spaced) in the patch prior\'s similarity matrix',
}
_PRIOR = dict(prior='auto', patch_weight=1.0, patch_tokens=32)

# Every setting a synthesizer understands, with its meaning; a preset gives each a value.
SETTINGS_DOC = {
    'iterations': 'Adam steps at full resolution',
    'half_res_iterations': 'Adam steps before those, on the 2x avg-pooled image (0: single phase)',
    'lr': 'Adam learning rate',
    'betas': 'Adam betas',
    'lr_schedule': "'constant' or 'cosine' (per phase, after warm-up)",
    'warmup_iters': 'linear warm-up steps at the start of each phase',
    'jitter': 'max random roll in pixels at full resolution',
    'half_res_jitter': 'max random roll in pixels in the half-resolution phase',
    'flip': 'random horizontal flip',
    'bn_weight': 'lambda_BN',
    'first_bn_multiplier': "extra factor on the first BN layer's term (the DeepInversion reference "
                           "code's setting: 10 in the detection/pose presets; on the digits detector "
                           '10 is level with 1, docs/detection_synthesis.md)',
    'tv_weight': 'lambda_TV',
    'tv_norm': "'l2' (reference) or 'l1' total variation",
    'l2_weight': 'lambda_l2',
    'ce_weight': 'lambda_CE (classifiers only; balanced target labels)',
    'amp': 'bf16 autocast where the device runs it natively (CUDA compute capability >= 8.0), else fp32',
    'compile': "torch.compile the teacher's forward and the loss terms of a step, compiled once per "
               'teacher and image size (a one-off compile, then 1.5-1.6x the steps per second of the '
               'digits detector on one CPU thread, docs/detection_synthesis.md; needs a C++ '
               'compiler on CPU; float rounding differs from eager, so it is part of the cache key; online '
               'rounds with an adversary run eager)',
    'init_std': 'std of the N(0, std^2) starting noise in normalised space (reference: 1)',
    'coarse_iterations': 'Adam steps first on a (H/coarse_factor)-sized image, bilinearly '
                         'upsampled into the network (0: none)',
    'coarse_factor': 'down-sampling factor of the coarse phase',
    'settle_iters': 'last steps of the last phase without jitter and flip (the images as used)',
    **PRIOR_SETTINGS_DOC,
}

# Settings that are new since the reference, with values that leave its behaviour unchanged.
NEUTRAL_SETTINGS = dict(init_std=1.0, coarse_iterations=0, coarse_factor=4, settle_iters=0, compile=False)
# Settings of earlier versions at the one value they had in every cache made: still part of the
# cache key (``DeepInversionSynthesizer.config``), so those caches keep hitting.
RETIRED_SETTINGS = dict(adi_weight=0.0, adi_temperature=3.0)

_CLASSIFICATION = dict(
    iterations=2000, half_res_iterations=0, lr=0.1, betas=(0.9, 0.99), lr_schedule='cosine',
    warmup_iters=100, jitter=2, half_res_jitter=1, flip=False, bn_weight=10.0,
    first_bn_multiplier=1.0, tv_weight=1e-3, tv_norm='l2', l2_weight=0.0, ce_weight=1.0,
    amp=True, **_PRIOR, **NEUTRAL_SETTINGS)

_DETECTION = dict(
    iterations=1000, half_res_iterations=2000, lr=0.25, betas=(0.5, 0.9), lr_schedule='constant',
    warmup_iters=0, jitter=30, half_res_jitter=15, flip=True, bn_weight=0.01,
    first_bn_multiplier=10.0, tv_weight=1e-4, tv_norm='l2', l2_weight=1e-5, ce_weight=0.0,
    amp=True, **_PRIOR, **NEUTRAL_SETTINGS)

_FAST = dict(_CLASSIFICATION, iterations=200, lr=0.25, warmup_iters=10, settle_iters=100)

PRESETS = {
    'classification': _CLASSIFICATION,
    'detection': _DETECTION,
    'pose': dict(_DETECTION),
    # 1/10 of the classification reference's 2000 passes; jitter only in the first half, so the
    # images settle on the statistics as they will be used (docs/synthesis_speed.md).
    'fast': _FAST,
}


def get_preset(name: str) -> dict:
    """A copy of the settings of preset ``name``, or a one-line error listing the presets."""
    if name not in PRESETS:
        raise ValueError(f'preset: {name!r} is not a synthesis preset; choose one of '
                         f'{", ".join(sorted(PRESETS))}')
    return copy.deepcopy(PRESETS[name])


# ----------------------------------------------------------------------------- generator
# Every setting of GeneratorSynthesizer (Fast-Datafree, spec fast_synthesis.md), with its meaning.
GENERATOR_SETTINGS_DOC = {
    'steps': 'Adam steps (teacher forward+backward passes) per batch, after the first of a stream',
    'first_steps': "steps of a stream's first batch (the meta generator starts untrained; counted)",
    'max_passes_per_image': "cap on a stream's teacher passes per image, warm-up included: the "
                            'first batch is shortened to fit (0: no cap)',
    'stream_batches': 'batches per meta-learning stream (0: one stream per DDP rank, all '
                      'batches in one on a single process); a rank synthesises whole streams',
    'latent_dim': 'size of the latent vector z',
    'channels': 'generator width (ngf): 2x channels up to the last block, x1 in it',
    'lr': 'Adam lr of the per-batch (fast) generator',
    'lr_z': 'Adam lr of the per-batch latents',
    'betas': 'Adam betas of the fast generator, the latents and the meta optimizer',
    'meta': "'fomaml' (sum of the fast gradients) or 'reptile' (towards the adapted weights)",
    'meta_lr': "fomaml: Adam lr of the meta generator (None: lr x steps, as Fast-Datafree); "
               "reptile: the step beta towards the adapted weights (None: 1)",
    'conditional': 'classifiers: the one-hot CE label is a generator input beside z',
    'reset_latent_layer': "re-initialise the generator's first (linear) layer for every batch",
    'bn_momentum': 'momentum of the BN statistics targets across batches (0: each batch alone)',
    'bn_weight': 'lambda_BN',
    'first_bn_multiplier': "extra factor on the first BN layer's term",
    'ce_weight': 'lambda_CE (classifiers only; balanced target labels)',
    'tv_weight': 'lambda_TV',
    'tv_norm': "'l2' or 'l1' total variation (as DeepInversion's)",
    'l2_weight': 'lambda_l2',
    'jitter': 'max random roll in pixels before the teacher',
    'flip': 'random horizontal flip before the teacher',
    'keep': "images kept per batch: 'best' (lowest loss of the steps) or 'last' step's",
    'amp': 'bf16 autocast where the device runs it natively (CUDA compute capability >= 8.0), else fp32',
    'refine_steps': "per-pixel DeepInversion steps on each batch's generated images after the "
                    "generator's (counted as passes; 0: none)",
    'refine_lr': 'Adam lr of those steps (the `fast` preset otherwise)',
    **PRIOR_SETTINGS_DOC,
}

_GEN_CLASSIFICATION = dict(
    steps=10, first_steps=50, max_passes_per_image=20, stream_batches=0, latent_dim=100, channels=64, lr=5e-3,
    lr_z=0.015, betas=(0.5, 0.999), meta='fomaml', meta_lr=None, reset_latent_layer=False,
    conditional=True,
    bn_momentum=0.9, bn_weight=10.0, first_bn_multiplier=1.0, ce_weight=2.0, tv_weight=0.0,
    tv_norm='l2', l2_weight=0.0, jitter=2, flip=False, keep='best', amp=True, refine_steps=0, refine_lr=0.05, **_PRIOR)
# pose: no logits; a 16-wide generator (the 64-wide one cost 5x the digits teacher per step at
# 128 px), Reptile steps all the way to the adapted weights, lighter BN momentum, and a longer
# first batch (90 + 7 x 10 = 20 passes per image over a stream of 8 batches).
_GEN_POSE = dict(_GEN_CLASSIFICATION, bn_weight=1.0, first_bn_multiplier=10.0,
                 ce_weight=0.0, jitter=8, flip=True, channels=16, meta='reptile',
                 bn_momentum=0.5, first_steps=90)
# detection: the pose generator at 5 steps per batch, then 12 per-pixel steps from its images
# (digits det at 0.5 uniform: 46.6 / 44.2 mAP after fine-tuning vs 35.5 for the plain
# generator, 20 passes per image each; docs/synthesis_methods.md). The first batch is capped
# to fit the 20 passes (29 steps over a stream of 8 batches, 90 over long streams).
_GEN_DETECTION = dict(_GEN_POSE, steps=5, refine_steps=12, refine_lr=0.1)

GENERATOR_PRESETS = {
    'classification': _GEN_CLASSIFICATION,
    'detection': _GEN_DETECTION,
    'pose': _GEN_POSE,
}


def get_generator_preset(name: str) -> dict:
    """A copy of the settings of GeneratorSynthesizer preset ``name``, or a one-line error."""
    if name not in GENERATOR_PRESETS:
        raise ValueError(f'preset: {name!r} is not a generator preset; choose one of '
                         f'{", ".join(sorted(GENERATOR_PRESETS))}')
    return copy.deepcopy(GENERATOR_PRESETS[name])



def with_overrides(settings: dict, overrides: dict, kind: str) -> dict:
    """``settings`` (a preset's copy) with ``overrides`` applied; a key that is no setting of
    ``kind`` (the synthesizer) is a one-line error listing the settings."""
    for key in overrides:
        if key not in settings:
            raise ValueError(f'{key}: not a {kind} setting; known settings: {", ".join(sorted(settings))}')
    settings.update(overrides)
    return settings
