"""Named DeepInversion settings.

``classification`` and ``detection``/``pose`` are the reference's settings (spec §2).
``fast`` spends 1/10 of the classification reference's passes (200 per batch): lr 0.25, and
the roll jitter only in the first 100 steps, so the images settle on the BN statistics as they
are used; ``fast_chain`` adds warm-start chains for ``SyntheticImageDataset(chain_length=G)``.
Measured against the reference by tools/benchmarks/synthesis_speed.py (docs/synthesis_speed.md).
"""
import copy

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
    'first_bn_multiplier': 'extra factor on the first BN layer term',
    'tv_weight': 'lambda_TV',
    'tv_norm': "'l2' (reference) or 'l1' total variation",
    'l2_weight': 'lambda_l2',
    'ce_weight': 'lambda_CE (classifiers only; balanced target labels)',
    'adi_weight': 'Adaptive-DeepInversion competition weight (needs a student)',
    'adi_temperature': 'softmax temperature of the competition term',
    'amp': 'autocast (bf16) where CUDA is present',
    'init_std': 'std of the N(0, std^2) starting noise in normalised space (reference: 1)',
    'coarse_iterations': 'Adam steps first on a (H/coarse_factor)-sized image, bilinearly '
                         'upsampled into the network (0: none)',
    'coarse_factor': 'down-sampling factor of the coarse phase',
    'warm_iterations': 'Adam steps of a warm-started batch (chains; 0: same as iterations)',
    'warm_lr': 'Adam lr of a warm-started batch (None: lr)',
    'warm_warmup_iters': 'linear lr warm-up steps of a warm-started batch',
    'warm_shift': 'max random roll (pixels) of the earlier images a warm start begins from',
    'warm_noise': 'std of Gaussian noise added to a warm start',
    'settle_iters': 'last steps of the last phase without jitter and flip (the images as used)',
    'warm_settle_iters': 'settle_iters of a warm-started batch',
}

# Settings that are new since the reference, with values that leave its behaviour unchanged.
NEUTRAL_SETTINGS = dict(init_std=1.0, coarse_iterations=0, coarse_factor=4, warm_iterations=0,
                warm_lr=None, warm_warmup_iters=0, warm_shift=4, warm_noise=0.0,
                settle_iters=0, warm_settle_iters=0)

_CLASSIFICATION = dict(
    iterations=2000, half_res_iterations=0, lr=0.1, betas=(0.9, 0.99), lr_schedule='cosine',
    warmup_iters=100, jitter=2, half_res_jitter=1, flip=False, bn_weight=10.0,
    first_bn_multiplier=1.0, tv_weight=1e-3, tv_norm='l2', l2_weight=0.0, ce_weight=1.0,
    adi_weight=0.0, adi_temperature=3.0, amp=True, **NEUTRAL_SETTINGS)

_DETECTION = dict(
    iterations=1000, half_res_iterations=2000, lr=0.25, betas=(0.5, 0.9), lr_schedule='constant',
    warmup_iters=0, jitter=30, half_res_jitter=15, flip=True, bn_weight=0.01,
    first_bn_multiplier=10.0, tv_weight=1e-4, tv_norm='l2', l2_weight=1e-5, ce_weight=0.0,
    adi_weight=0.0, adi_temperature=3.0, amp=True, **NEUTRAL_SETTINGS)

_FAST = dict(_CLASSIFICATION, iterations=200, lr=0.25, warmup_iters=10, settle_iters=100)

PRESETS = {
    'classification': _CLASSIFICATION,
    'detection': _DETECTION,
    'pose': dict(_DETECTION),
    # 1/10 of the classification reference's 2000 passes; jitter only in the first half, so the
    # images settle on the statistics as they will be used (docs/synthesis_speed.md).
    'fast': _FAST,
    # SyntheticImageDataset(chain_length > 1): 'fast' for a chain's first batch, then 100 steps
    # from the previous batch (the last 50 without jitter).
    'fast_chain': dict(_FAST, warm_iterations=100, warm_warmup_iters=5, warm_settle_iters=50),
}


def get_preset(name: str) -> dict:
    """A copy of the settings of preset ``name``, or a one-line error listing the presets."""
    if name not in PRESETS:
        raise ValueError(f'preset: {name!r} is not a synthesis preset; choose one of '
                         f'{", ".join(sorted(PRESETS))}')
    return copy.deepcopy(PRESETS[name])
