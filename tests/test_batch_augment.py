"""Label-free batch augmentation of the distiller: same transform for teacher and student."""
import pytest
import torch

from dfbf_mm.distillation.batch_augment import augment_batch, check_augment


def test_augment_is_a_per_image_flip_and_roll():
    images = torch.arange(4 * 2 * 5 * 6, dtype=torch.float32).reshape(4, 2, 5, 6)
    assert augment_batch(images) is images  # nothing asked: untouched
    g = torch.Generator().manual_seed(0)
    out = augment_batch(images, flip=True, shift=2, generator=g)
    assert out.shape == images.shape and not torch.equal(out, images)
    for src, dst in zip(images, out):
        # some flip + roll (|dy|, |dx| <= 2) of the source maps it onto the output
        candidates = [torch.roll(torch.flip(src, (-1,)) if f else src, (dy, dx), (-2, -1))
                      for f in (False, True) for dy in range(-2, 3) for dx in range(-2, 3)]
        assert any(torch.equal(c, dst) for c in candidates)
    again = augment_batch(images, flip=True, shift=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, out)  # seeded: reproducible


def test_bad_augment_settings_are_one_line_errors():
    assert check_augment(None) == dict(flip=False, shift=0)
    with pytest.raises(ValueError, match=r"^dfbf\.distill\.augment: unknown key\(s\) \['scale'\]"):
        check_augment(dict(scale=2))
    with pytest.raises(ValueError, match=r'^dfbf\.distill\.augment\.flip: must be true or false'):
        check_augment(dict(flip='yes'))
