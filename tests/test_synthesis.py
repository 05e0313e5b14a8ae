"""DeepInversionSynthesizer: determinism, the loss, state restoration and one-line errors."""
import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from torch import nn

from dfbf_mm import compat
from dfbf_mm.registry import SYNTHESIZERS
from dfbf_mm.stock_model import build_stock_model, pixel_range
from dfbf_mm.synthesis import (BNStatisticsLoss, DeepInversionSynthesizer, bn_layers, inversion_target,
                               total_variation)

torch.set_num_threads(1)  # the test machine is shared; oversubscribed threads are 20x slower


def tiny_classifier():
    cfg = Config(dict(
        default_scope='mmpretrain',
        model=dict(type='ImageClassifier',
                   backbone=dict(type='ResNet_CIFAR', depth=18, stem_channels=4, base_channels=4),
                   neck=dict(type='GlobalAveragePooling'),
                   head=dict(type='LinearClsHead', num_classes=5, in_channels=32)),
        data_preprocessor=dict(type='ClsDataPreprocessor', mean=[120., 110., 100.],
                               std=[60., 50., 40.], to_rgb=True)))
    return build_stock_model(cfg)


def calibrated(model):
    """Give BN running statistics of a smooth, colour-biased image distribution (unlike N(0, 1)
    noise), as training would; DeepInversion must then move noise towards that distribution."""
    g = torch.Generator().manual_seed(3)
    for _, bn in bn_layers(model):
        bn.momentum = None  # cumulative average
        bn.reset_running_stats()
    model.train()
    with torch.no_grad():
        for _ in range(4):
            low = torch.randn(32, 3, 4, 4, generator=g)
            smooth = F.interpolate(low, size=(16, 16), mode='bilinear', align_corners=False)
            model(smooth * 0.8 + torch.tensor([0.5, -0.3, 0.2]).view(1, 3, 1, 1), mode='tensor')
    model.eval()
    return model


@pytest.fixture(scope='module')
def model():
    return tiny_classifier()


def run(model, synth=None, **kw):
    synth = synth or DeepInversionSynthesizer('classification', iterations=6, warmup_iters=2)
    args = dict(batch_size=3, image_size=(16, 16), pixel_range=pixel_range(model), seed=0, progress=False)
    args.update(kw)
    return synth.synthesize(inversion_target(model, 'classification'), **args)


def test_same_seed_same_images_and_clamped(model):
    a, stats = run(model, seed=7)
    b, _ = run(model, seed=7)
    c, _ = run(model, seed=8)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    lo, hi = pixel_range(model)
    assert a.shape == (3, 3, 16, 16)
    assert (a >= lo - 1e-6).all() and (a <= hi + 1e-6).all()
    assert stats['teacher_passes'] == 6 and set(stats) >= {'bn', 'tv', 'l2', 'ce', 'bn_eval'}


def test_optimisation_lowers_bn_loss():
    model = calibrated(tiny_classifier())
    target = inversion_target(model, 'classification')
    noise = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with BNStatisticsLoss(target) as bn, torch.no_grad():
        target(noise)
        start = bn.loss().item()
    synth = DeepInversionSynthesizer('classification', iterations=25, lr=0.05, warmup_iters=0,
                                      tv_weight=0.0, ce_weight=0.0)
    _, stats = run(model, synth, batch_size=4, seed=0)
    assert stats['bn_eval'] < 0.5 * start


def test_target_state_restored_and_hooks_removed(model):
    model.train()
    model.head.fc.weight.requires_grad_(False)
    run(model)
    assert model.training and model.backbone.layer1[0].bn1.training
    assert not model.head.fc.weight.requires_grad
    assert model.backbone.conv1.weight.requires_grad
    assert all(not m._forward_hooks for _, m in bn_layers(model))
    model.head.fc.weight.requires_grad_(True)


def test_hooks_removed_when_forward_fails(model):
    target = inversion_target(model, 'classification')
    with pytest.raises(RuntimeError):
        with BNStatisticsLoss(target):
            target(torch.zeros(2, 5, 16, 16))  # wrong channel count
    assert all(not m._forward_hooks for _, m in bn_layers(model))


def test_two_phase(model):
    synth = SYNTHESIZERS.build(dict(type='DeepInversionSynthesizer', preset='detection',
                                    iterations=2, half_res_iterations=3, jitter=2, half_res_jitter=1))
    images, stats = run(model, synth, image_size=(32, 32))
    assert images.shape == (3, 3, 32, 32)
    assert stats['teacher_passes'] == 5 and stats['student_passes'] == 0


def test_coarse_phase_settle_and_start_image(model):
    """Coarse phase (low-res image upsampled), jitter-free settling steps, and a start image
    (the generator's refinement: no coarse phase): all deterministic; the neutral values keep
    the reference's cache key, the retired settings their one value in it."""
    synth = DeepInversionSynthesizer('classification', iterations=3, coarse_iterations=2,
                                     coarse_factor=2, settle_iters=2, warmup_iters=1)
    a, stats = run(model, synth, seed=3)
    b, _ = run(model, synth, seed=3)
    assert torch.equal(a, b) and stats['teacher_passes'] == 5 and synth.passes_per_batch == 5
    c, cstats = run(model, synth, seed=4, init=a)
    assert cstats['teacher_passes'] == 3 and c.shape == a.shape and not torch.equal(c, a)
    assert torch.equal(c, run(model, synth, seed=4, init=a)[0])
    assert DeepInversionSynthesizer('classification').config() == dict(
        type='DeepInversionSynthesizer', iterations=2000, half_res_iterations=0, lr=0.1, betas=(0.9, 0.99),
        lr_schedule='cosine', warmup_iters=100, jitter=2, half_res_jitter=1, flip=False, bn_weight=10.0,
        first_bn_multiplier=1.0, tv_weight=1e-3, tv_norm='l2', l2_weight=0.0, ce_weight=1.0,
        adi_weight=0.0, adi_temperature=3.0, amp=True)
    with pytest.raises(ValueError, match='^coarse_factor: must be a positive integer'):
        DeepInversionSynthesizer(coarse_factor=0)
    with pytest.raises(ValueError, match='^init_std: must be non-negative'):
        DeepInversionSynthesizer(init_std=-1.0)


def test_backbone_target_for_detection():
    from mmdet.models.backbones import ResNet
    backbone = ResNet(depth=18, base_channels=4, out_indices=(0, 1, 2, 3))
    detector = nn.Module()
    detector.backbone = backbone
    target = inversion_target(detector, 'detection')
    assert target is backbone
    lo, hi = -torch.ones(3, 1, 1), torch.ones(3, 1, 1)
    synth = DeepInversionSynthesizer('detection', iterations=2, half_res_iterations=0, jitter=4)
    images, stats = synth.synthesize(target, 2, (64, 64), (lo, hi), seed=1, progress=False)
    assert 'ce' not in stats and images.abs().max() <= 1.0
    with pytest.raises(ValueError, match=r'^image_size: \(8, 8\) is smaller than the total stride 32'):
        DeepInversionSynthesizer('detection', iterations=1, half_res_iterations=1).synthesize(
            target, 2, (16, 16), (lo, hi), seed=1, progress=False)


def test_whole_model_target_for_detection():
    """invert='model' inverts every BN layer of the model (backbone, neck and head), not just
    the backbone's; the choice is validated in one line."""
    from dfbf_mm.synthesis import BNStatisticsLoss, ModelTensors

    class TinyDetector(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.BatchNorm2d(4), nn.ReLU())
            self.neck = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))

        def forward(self, x, data_samples, mode='tensor'):  # mmpose: no default data_samples
            assert mode == 'tensor'
            return (self.neck(self.backbone(x)),)

    detector = TinyDetector()
    target = inversion_target(detector, 'detection', 'model')
    assert isinstance(target, ModelTensors) and target.model is detector
    assert len(BNStatisticsLoss(target).layers) == 2
    assert len(BNStatisticsLoss(inversion_target(detector, 'pose')).layers) == 1
    lo, hi = -torch.ones(3, 1, 1), torch.ones(3, 1, 1)
    synth = DeepInversionSynthesizer('detection', iterations=3, half_res_iterations=0, jitter=1)
    images, stats = synth.synthesize(target, 2, (16, 16), (lo, hi), seed=1, progress=False)
    assert images.shape == (2, 3, 16, 16) and stats['bn'] > 0
    with pytest.raises(ValueError, match=r"^invert: 'neck' is not one of auto, backbone, model$"):
        inversion_target(detector, 'detection', 'neck')
    with pytest.raises(ValueError, match=r"^invert: 'backbone' is for detection/pose"):
        inversion_target(detector, 'classification', 'backbone')


def test_bn_like_layers_found():
    from mmcv.cnn import build_norm_layer
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.SyncBatchNorm(4), build_norm_layer(dict(type='BN'), 4)[1],
                        nn.Flatten(), nn.LazyLinear(6), nn.BatchNorm1d(6),
                        nn.BatchNorm1d(6, track_running_stats=False), nn.LayerNorm(6))
    assert [name for name, _ in bn_layers(net)] == ['1', '2', '5']


def test_total_variation():
    flat = torch.full((2, 3, 8, 8), 0.5)
    assert total_variation(flat).item() == 0.0
    stripes = torch.zeros(1, 1, 4, 4)
    stripes[..., ::2] = 1.0
    # horizontal diffs: 12 of size 1; vertical 0; both diagonals 9 each.
    assert total_variation(stripes, 'l2').item() == pytest.approx(12 ** 0.5 + 2 * 3.0)
    assert total_variation(stripes, 'l1').item() == pytest.approx(1.0 + 0 + 1.0 + 1.0)


def test_one_line_errors(model):
    with pytest.raises(ValueError, match=r"^preset: 'nope' is not a synthesis preset; choose one of .*classification"):
        SYNTHESIZERS.build(dict(type='DeepInversionSynthesizer', preset='nope'))
    with pytest.raises(ValueError, match='^itterations: not a DeepInversion setting'):
        DeepInversionSynthesizer(itterations=3)
    with pytest.raises(ValueError, match='^batch_size: DeepInversion needs at least 2'):
        run(model, batch_size=1)
    with pytest.raises(ValueError, match=r'^image_size: \(4, 4\) is smaller than the total stride 8'):
        run(model, image_size=(4, 4))
    no_bn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    with pytest.raises(ValueError, match="^target: Sequential has neither BatchNorm layers \\(prior 'bn'\\) nor LayerNorm"
                                                  "/GroupNorm layers \\(prior 'patch'\\); inversion has no prior"):
        DeepInversionSynthesizer().synthesize(no_bn, 2, (8, 8), pixel_range(model), seed=0)
    for retired in ('adi_weight', 'box_weight', 'warm_iterations'):  # settings that went
        with pytest.raises(ValueError, match=f'^{retired}: not a DeepInversion setting; known settings: '):
            DeepInversionSynthesizer(**{retired: 1})
    with pytest.raises(ValueError, match=r'^image_size: must be \(H, W\)'):
        run(model, image_size=(16,))


def test_batch_statistics_match_the_per_channel_definition():
    """The fused var_mean gives every BN input's per-channel mean and biased variance (the
    DeepInversion targets), for 4-d and 3-d inputs alike, with the same gradients."""
    from dfbf_mm.synthesis.bn_statistics import batch_statistics
    for shape in ((4, 3, 5, 6), (4, 3, 7)):
        x = (torch.randn(shape) * 3 + 2).requires_grad_(True)
        flat = x.transpose(0, 1).reshape(shape[1], -1)
        mean, var = batch_statistics(x)
        assert torch.allclose(mean, flat.mean(1), atol=1e-6)
        assert torch.allclose(var, flat.var(1, unbiased=False), atol=1e-5)
        g_fused = torch.autograd.grad((mean * 2 + var).sum(), x)[0]
        g_ref = torch.autograd.grad((flat.mean(1) * 2 + flat.var(1, unbiased=False)).sum(), x)[0]
        assert torch.allclose(g_fused, g_ref, atol=1e-5)


@pytest.mark.slow
def test_compiled_step_matches_eager_and_compiles_once():
    """compile=True: the same loss as eager (float rounding aside), one compiled graph for every
    batch and phase (no recompilation per batch: new BN hooks are arguments), its own cache key."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    target = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                           nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4))
    for bn in (target[1], target[4]):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    target.eval()
    lo, hi = torch.full((3, 1, 1), -3.0), torch.full((3, 1, 1), 3.0)
    settings = dict(iterations=3, coarse_iterations=3, coarse_factor=2, settle_iters=1, warmup_iters=1,
                    ce_weight=0.0, jitter=1, flip=True)
    eager = DeepInversionSynthesizer('classification', **settings)
    compiled = DeepInversionSynthesizer('classification', compile=True, **settings)
    args = dict(batch_size=3, image_size=(8, 8), pixel_range=(lo, hi), progress=False)
    from torch._dynamo.utils import counters
    counters.clear()
    graphs = []
    for seed in (0, 1):
        a, sa = eager.synthesize(target, seed=seed, **args)
        b, sb = compiled.synthesize(target, seed=seed, **args)
        assert torch.allclose(a, b, atol=1e-4) and sb['bn_eval'] == pytest.approx(sa['bn_eval'], rel=1e-4)
        assert sb['teacher_passes'] == 6
        graphs.append(counters['stats']['unique_graphs'])
    assert graphs[1] == graphs[0]  # a new batch (new BN hooks) compiles nothing new
    # both tested stacks: torch 2.14 has both phases in one graph; torch 2.1 splits the step at
    # the BN hooks (3 graphs)
    assert graphs[1] == {(2, 14): 1, (2, 1): 3}.get(compat.TORCH, graphs[1])
    assert compiled.config()['compile'] is True and 'compile' not in eager.config()
    assert all(not m._forward_hooks for m in target.modules())
    with pytest.raises(ValueError, match='^compile: must be True or False'):
        DeepInversionSynthesizer(compile='yes')


def test_compile_failure_is_one_line(model, monkeypatch):
    """A compiler that fails (no C++ compiler on CPU, an op it lacks) is a one-line error naming
    the setting, not a page of Inductor trace."""
    def failing(fn):
        def call(*args, **kwargs):
            raise RuntimeError('InvalidCxxCompiler: No working C++ compiler found\nmore lines')
        return call
    monkeypatch.setattr(torch, 'compile', failing)
    synth = DeepInversionSynthesizer('classification', iterations=2, compile=True)
    with pytest.raises(RuntimeError, match=r'^compile: torch.compile failed on ClassifierLogits '
                                           r'\(InvalidCxxCompiler: No working C\+\+ compiler found\); set compile=False$'):
        run(model, synth)
    assert all(not m._forward_hooks for _, m in bn_layers(model))
