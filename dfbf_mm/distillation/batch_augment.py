"""Label-free batch augmentation for feature mimicking.

Teacher and student see the *same* transformed image, so any transform is valid without
labels: it only multiplies the few synthetic images into more distinct inputs. Random
horizontal flips and circular shifts (the jitter DeepInversion already optimised the images
under, so a shifted image still matches the teacher's statistics) cost nothing.
"""
from typing import Optional

import torch

AUGMENT_KEYS = ('flip', 'shift')


def check_augment(augment: Optional[dict], field: str = 'dfbf.distill.augment') -> dict:
    """``augment`` with defaults, or a one-line error naming the bad key or value."""
    augment = dict(augment or {})
    unknown = sorted(set(augment) - set(AUGMENT_KEYS))
    if unknown:
        raise ValueError(f'{field}: unknown key(s) {unknown}; allowed: {", ".join(AUGMENT_KEYS)}')
    flip, shift = augment.get('flip', False), augment.get('shift', 0)
    if not isinstance(flip, bool):
        raise ValueError(f'{field}.flip: must be true or false, got {flip!r}')
    if not isinstance(shift, int) or isinstance(shift, bool) or shift < 0:
        raise ValueError(f'{field}.shift: must be a non-negative integer (pixels), got {shift!r}')
    return dict(flip=flip, shift=shift)


def augment_batch(images: torch.Tensor, flip: bool = False, shift: int = 0,
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Per image: flip left-right with probability 1/2, roll by up to ``shift`` pixels in y, x."""
    if not flip and not shift:
        return images
    out = []
    for img in images:
        if flip and torch.rand(1, generator=generator).item() < 0.5:
            img = torch.flip(img, dims=(-1,))
        if shift:
            dy, dx = torch.randint(-shift, shift + 1, (2,), generator=generator).tolist()
            img = torch.roll(img, shifts=(dy, dx), dims=(-2, -1))
        out.append(img)
    return torch.stack(out)
