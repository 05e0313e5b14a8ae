"""dfbf_mm/device.py: bf16 autocast only where the model's device runs it natively, and seeding
that leaves every device generator as it was. CUDA is mocked: these run on the CPU."""
import pytest
import torch
from mmengine.config import Config

from dfbf_mm import device as device_module
from dfbf_mm.device import autocast_dtype, autocast_for, cpu_seeded
from dfbf_mm.stock_model import build_stock_model, pixel_range
from dfbf_mm.synthesis import DeepInversionSynthesizer, GeneratorSynthesizer, inversion_target
from dfbf_mm.synthesis import deepinversion as deepinversion_module
from dfbf_mm.synthesis import generator as generator_module

torch.set_num_threads(1)


@pytest.fixture
def capabilities(monkeypatch):
    """``torch.cuda.get_device_capability`` of a machine with an H100 as cuda:0 and a T4 as
    cuda:1; the devices asked are recorded."""
    asked = []
    caps = {0: (9, 0), 1: (7, 5), 2: (8, 0), 3: (7, 0)}

    def capability(device=None):
        asked.append(device)
        return caps[torch.device(device).index]
    monkeypatch.setattr(torch.cuda, 'get_device_capability', capability)
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda *a, **k: True)  # emulated counts
    return asked


def test_bf16_only_at_compute_capability_8_of_the_models_device(capabilities):
    assert autocast_dtype('cuda:0')[0] is torch.bfloat16
    assert autocast_dtype(torch.device('cuda:2'))[0] is torch.bfloat16
    dtype, why = autocast_dtype('cuda:1')  # a T4, though is_bf16_supported() says True
    assert dtype is None and why.startswith('compute capability 7.5 < 8.0 has no native bf16')
    assert autocast_dtype('cuda:3')[0] is None
    assert [torch.device(d).index for d in capabilities] == [0, 2, 1, 3]  # the device given, not the current
    assert autocast_dtype('cpu') == (None, 'autocast is used on CUDA only, cpu runs fp32')
    assert len(capabilities) == 4  # the CPU asks nothing of CUDA


def test_autocast_for_logs_its_choice(capabilities, monkeypatch):
    lines = []
    monkeypatch.setattr('mmengine.logging.print_log', lambda msg, **k: lines.append(msg))
    monkeypatch.setattr(device_module, '_logged', set())
    assert autocast_for('cuda:0', amp=False) is autocast_for('cpu', amp=True)  # nullcontext
    ctx = autocast_for(torch.device('cuda:0'), amp=True)()
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16 and ctx.device == 'cuda'
    autocast_for(torch.device('cuda:0'), amp=True)  # logged once per device
    assert autocast_for('cuda:1', amp=True)() is not None
    assert lines[1:] == ['synthesis: amp on cuda:0: bf16 (compute capability 9.0 runs bf16 natively)',
                         'synthesis: amp on cuda:1: fp32 (compute capability 7.5 < 8.0 has no native bf16 '
                         '(emulated: slower than fp32), and fp16 would need loss scaling for the image '
                         'gradients)']


@pytest.fixture(scope='module')
def teacher():
    torch.manual_seed(0)
    return build_stock_model(Config(dict(
        default_scope='mmpretrain',
        model=dict(type='ImageClassifier',
                   backbone=dict(type='ResNet_CIFAR', depth=18, stem_channels=4, base_channels=4),
                   neck=dict(type='GlobalAveragePooling'),
                   head=dict(type='LinearClsHead', num_classes=5, in_channels=32)),
        data_preprocessor=dict(type='ClsDataPreprocessor', mean=[120., 110., 100.], std=[60., 50., 40.]))))


def _generator(teacher, **kw):
    synth = GeneratorSynthesizer(channels=4, latent_dim=8, steps=1, first_steps=1, **kw)
    return synth.synthesize(inversion_target(teacher, 'classification'), 2, (8, 8), pixel_range(teacher),
                            seed=3, labels=torch.tensor([0, 4]), progress=False)[0]


def test_synthesizers_ask_the_helper_for_the_models_device(teacher, monkeypatch):
    for module, run in ((generator_module, lambda: _generator(teacher, amp=True)),
                        (deepinversion_module, lambda: DeepInversionSynthesizer(
                            'classification', iterations=1, warmup_iters=0, amp=True).synthesize(
                                inversion_target(teacher, 'classification'), 2, (8, 8), pixel_range(teacher),
                                seed=0, progress=False))):
        calls = []

        def spy(device, amp, *a, **k):
            calls.append((device, amp))
            return autocast_for(device, amp, *a, **k)
        monkeypatch.setattr(module, 'autocast_for', spy)
        run()
        assert calls and all(c == (torch.device('cpu'), True) for c in calls)


def test_generator_leaves_device_generators_as_found(teacher, monkeypatch):
    seeded = []
    for name in ('manual_seed', 'manual_seed_all'):
        monkeypatch.setattr(torch.cuda, name, lambda seed, _n=name: seeded.append(_n))
    torch.manual_seed(123)  # (recorded: the test's own seeding)
    seeded.clear()
    before = torch.get_rng_state()
    first = _generator(teacher, reset_latent_layer=True)
    assert seeded == []  # no CUDA generator re-seeded (torch.manual_seed queues that even before CUDA starts)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(7)  # another global state: the same images (the stream has its own seeds)
    assert torch.equal(_generator(teacher, reset_latent_layer=True), first)
    with cpu_seeded(5):
        a = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(a, torch.rand(3))  # the same CPU stream as torch.manual_seed
