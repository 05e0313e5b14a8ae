"""Synthesis for teachers without BatchNorm: the patch-similarity prior, chosen by ``prior``."""
import pytest
import torch
from mmengine.config import Config
from torch import nn

from dfbf_mm.stock_model import build_stock_model, pixel_range
from dfbf_mm.synthesis import (DeepInversionSynthesizer, GeneratorSynthesizer, SyntheticImageDataset,
                               inversion_target)
from dfbf_mm.synthesis.patch_similarity import (PatchSimilarityLoss, norm_layers, resolve_prior,
                                                similarity_entropy, tokens)

torch.set_num_threads(1)


def classifier(backbone, in_channels, head='LinearClsHead', neck=False):
    cfg = Config(dict(
        default_scope='mmpretrain',
        model=dict(type='ImageClassifier', backbone=backbone,
                   neck=dict(type='GlobalAveragePooling') if neck else None,
                   head=dict(type=head, num_classes=4, in_channels=in_channels)),
        data_preprocessor=dict(type='ClsDataPreprocessor', mean=[120.] * 3, std=[60.] * 3)))
    return build_stock_model(cfg).eval()


@pytest.fixture(scope='module')
def vit():
    torch.manual_seed(0)
    return classifier(dict(type='VisionTransformer', img_size=16, patch_size=4,
                           arch=dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64)),
                      32, head='VisionTransformerClsHead')


@pytest.fixture(scope='module')
def convnext():
    torch.manual_seed(0)
    return classifier(dict(type='ConvNeXt', arch=dict(depths=[1, 1], channels=[16, 32]), stem_patch_size=2,
                           out_indices=(1, ), gap_before_final_norm=True), 32)


@pytest.fixture(scope='module')
def resnet():
    return classifier(dict(type='ResNet_CIFAR', depth=18, stem_channels=4, base_channels=4), 32, neck=True)


def synth(**kw):
    return DeepInversionSynthesizer('fast', **dict(dict(iterations=4, warmup_iters=1, settle_iters=1), **kw))


def test_auto_picks_bn_statistics_or_the_patch_prior(vit, convnext, resnet):
    assert resolve_prior(inversion_target(resnet, 'classification'), 'auto') == 'bn'
    assert resolve_prior(inversion_target(vit, 'classification'), 'auto') == 'patch'
    assert resolve_prior(inversion_target(convnext, 'classification'), 'auto') == 'patch'
    with pytest.raises(ValueError, match="^prior: 'stats' is not one of auto, bn, patch$"):
        resolve_prior(vit, 'stats')
    with pytest.raises(ValueError, match='^prior: ResNet_CIFAR has no LayerNorm/GroupNorm layers'):
        resolve_prior(resnet.backbone, 'patch')
    with pytest.raises(ValueError, match="^prior: 'x' is not one of"):
        DeepInversionSynthesizer('fast', prior='x')
    with pytest.raises(ValueError, match='^patch_weight: must be a non-negative number'):
        GeneratorSynthesizer(patch_weight=-1)
    with pytest.raises(ValueError, match='^target: ImageClassifier has no BatchNorm layers'):
        synth(prior='bn').synthesize(inversion_target(vit, 'classification'), 2, (16, 16),
                                     pixel_range(vit), seed=0, progress=False)


def test_tokens_of_every_layout():
    x = torch.randn(2, 5, 3, 8)  # (N, C=5, H, W) and (N, H, W, C=8)
    assert tokens(x, 5, channels_first=True).shape == (2, 24, 5)
    assert tokens(x, 8, channels_first=False).shape == (2, 15, 8)
    assert tokens(torch.randn(2, 7, 6), 6, False).shape == (2, 7, 6)
    assert tokens(torch.randn(2, 6), 6, False) is None  # a pooled vector has no patches


def test_entropy_is_higher_for_diverse_patches_and_bounded_in_tokens():
    g = torch.Generator().manual_seed(0)
    alike = torch.ones(2, 40, 16) + 0.01 * torch.randn(2, 40, 16, generator=g)
    diverse = torch.randn(2, 40, 16, generator=g)
    assert (similarity_entropy(diverse, 128) > similarity_entropy(alike, 128) + 0.5).all()
    assert similarity_entropy(torch.randn(2, 500, 8, generator=g), 32).shape == (2, )


def test_vit_and_convnext_images_raise_the_entropy(vit, convnext):
    for model in (vit, convnext):
        target = inversion_target(model, 'classification')
        layers = norm_layers(target)
        assert layers
        s = synth(iterations=30, settle_iters=5, lr=0.1)
        with PatchSimilarityLoss(target) as prior, torch.no_grad():
            start = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
            target(start)
            noise_loss = prior.loss().item()
        images, stats = s.synthesize(target, 8, (16, 16), pixel_range(model), seed=0, progress=False,
                                     labels=torch.arange(8) % 4)
        assert {'patch', 'ce', 'tv', 'patch_eval'} <= set(stats) and 'bn' not in stats
        assert stats['patch_eval'] < noise_loss  # minus the entropy: the patches grew more diverse


def test_patch_weight_is_what_moves_the_entropy(vit):
    target = inversion_target(vit, 'classification')
    kw = dict(iterations=15, settle_iters=0, lr=0.1, ce_weight=0.0, tv_weight=0.0)
    _, on = synth(**kw).synthesize(target, 4, (16, 16), pixel_range(vit), seed=1, progress=False)
    _, off = synth(patch_weight=0.0, **kw).synthesize(target, 4, (16, 16), pixel_range(vit), seed=1,
                                                     progress=False)
    assert on['patch_eval'] < off['patch_eval']


def test_cache_keys_of_bn_models_unchanged_and_patch_settings_keyed_where_used(vit, resnet, tmp_path):
    s = synth()
    bn_target = inversion_target(resnet, 'classification')
    assert s.config(bn_target) == s.config() and 'patch_weight' not in s.config(bn_target)
    vit_target = inversion_target(vit, 'classification')
    assert s.config(vit_target)['prior'] == 'patch'
    assert synth(patch_weight=2.0).config(vit_target) != s.config(vit_target)
    assert synth(patch_weight=2.0).config(bn_target) == s.config(bn_target)
    gen = GeneratorSynthesizer(steps=2, first_steps=2, max_passes_per_image=0, channels=8)
    assert 'prior' not in gen.config(bn_target) and gen.config(vit_target)['patch_tokens'] == 32


def test_generator_and_dataset_on_a_vit(vit, tmp_path):
    ds = SyntheticImageDataset(num_images=4, batch_size=2, image_size=(16, 16),
                               synthesizer=dict(type="GeneratorSynthesizer", steps=2, first_steps=3,
                                                max_passes_per_image=0, channels=8, latent_dim=8),
                               cache_dir=str(tmp_path), seed=0, num_classes=4)
    done = ds.prepare(vit, 'classification', progress=False)
    assert done['generated'] == 2
    stats = ds.cache.load(0, ds._shape)['stats']
    assert 'patch_eval' in stats and 'bn_eval' not in stats
    assert torch.isfinite(ds[0]['inputs']).all()


def test_images_too_small_for_the_patch_prior_are_a_config_error(vit):
    """At patch 4, 16x16 images leave 2x2 + 1 tokens in the detection preset's half-resolution
    phase; 8x8 images leave 1 + 1 there, so they stop before any step, naming the phase."""
    from dfbf_mm.synthesis.inversion_target import check_phase_sizes
    target = inversion_target(vit, 'classification')
    phases = DeepInversionSynthesizer('detection').network_inputs()
    check_phase_sizes(target, (16, 16), phases, 3, 'cpu')
    with pytest.raises(ValueError, match=r'^image_size: \(8, 8\) cannot be synthesised \(in the half-resolution '
                                         r'\(half_res_iterations\) phase the network sees 4x4: 4x4 images leave at most 2 tokens at every '
                                         r'LayerNorm/GroupNorm input of ImageClassifier \(the patch prior compares '
                                         r'3 or more\)\)'):
        check_phase_sizes(target, (8, 8), phases, 3, 'cpu')


def test_teacher_student_adversary_on_a_vit(vit):
    """The adversary of online synthesis needs no BN either: with the patch prior it still
    finds images where the pruned ViT differs more from its teacher."""
    import copy

    from dfbf_mm.pruning import L1FilterPruner
    from dfbf_mm.synthesis import FeatureAdversary
    student = copy.deepcopy(vit)
    L1FilterPruner(sparsity=0.5).prune(student.backbone, torch.zeros(1, 3, 16, 16))
    taps = ['layers.0.ln1', 'layers.1.ln1']

    def l1(s_taps, t_taps, s_outs, t_outs):
        return sum((s - t).abs().mean() for s, t in zip(s_taps, t_taps))

    target = inversion_target(vit, 'classification')
    plain, stats = synth(iterations=15).synthesize(target, 4, (16, 16), pixel_range(vit), seed=0, progress=False)
    adversary = FeatureAdversary(vit.backbone, student.backbone, taps, l1, weight=50.0)
    with adversary:
        hard, stats = synth(iterations=15).synthesize(target, 4, (16, 16), pixel_range(vit), seed=0,
                                                      progress=False, adversary=adversary)
    assert stats['student_passes'] == 15 and 'patch' in stats
    with adversary, torch.no_grad():
        distances = []
        for images in (plain, hard):
            vit.backbone(images)
            distances.append(adversary.term(images).item())
    assert distances[1] > distances[0]
