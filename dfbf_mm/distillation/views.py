"""Random augmented views of a training batch, the same view for teacher and student.

The DFBF loss compares the student's features with the teacher's features on the same input,
and the teacher's are computed online (``DataFreeDistiller.forward``), so the fine-tuning
images need no labels: any view of a synthetic image is a valid training input. A few cached
synthetic images then stand for many (data-free KD with augmented / mixed inputs). This module
turns one normalised batch into a random view of it, of the same shape:

* a random resized crop (area fraction in ``[crop, 1]``, aspect ratio in [3/4, 4/3], resized
  back to the input size) and a horizontal flip (probability ``flip``), as one bilinear resample;
* brightness and contrast jitter (factors in ``[1 - jitter, 1 + jitter]``, torchvision's
  ColorJitter on the [0, 255] pixel scale), clamped to the valid pixel range;
* batch-level mixing of each image with another image of the batch (probability ``mix_prob``):
  ``'mixup'`` (a blend) or ``'cutmix'`` (a pasted box), with a mixing weight drawn from U(0, 1)
  (Beta(1, 1)).

Draws come from a ``torch.Generator`` seeded by (seed, step, rank): a run is repeatable, a
resumed run draws the same views from its resumed iteration on, and DDP ranks draw apart.
"""
import hashlib
import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

MIX = ('mixup', 'cutmix')
RATIO = (3 / 4, 4 / 3)  # aspect ratios of the random resized crop (torchvision's default)


def view_seed(seed: int, step: int, rank: int = 0) -> int:
    """Seed of the views of training step ``step`` on ``rank``: a hash, so steps are independent."""
    digest = hashlib.sha256(f'dfbf-views:{seed}:{step}:{rank}'.encode()).digest()
    return int.from_bytes(digest[:8], 'little') & (2**63 - 1)


class BatchViews:
    """``views(images, step)``: a random view of an (N, C, H, W) normalised batch (see module doc).

    Args:
        pixel_range: (lo, hi), the normalised values of pixels 0 and 255, per channel (C, 1, 1)
            (``stock_model.pixel_range``); jitter works on that scale and clamps to it.
        flip: probability of a horizontal flip.
        crop: smallest area fraction of the random resized crop (1: no crop).
        jitter: brightness / contrast factors in [1 - jitter, 1 + jitter] (0: none).
        mix: None, 'mixup' or 'cutmix'.
        mix_prob: probability that an image is mixed with another one of the batch.
        seed: base seed of the draws.
    """

    def __init__(self, pixel_range: Tuple[torch.Tensor, torch.Tensor], flip: float = 0.5,
                 crop: float = 0.5, jitter: float = 0.2, mix: Optional[str] = None,
                 mix_prob: float = 0.5, seed: int = 0):
        if mix is not None and mix not in MIX:
            raise ValueError(f'views.mix: {mix!r} is not one of None, {", ".join(MIX)}')
        self.lo, self.hi = (torch.as_tensor(t, dtype=torch.float32) for t in pixel_range)
        self.flip, self.crop, self.jitter = float(flip), float(crop), float(jitter)
        self.mix, self.mix_prob, self.seed = mix, float(mix_prob), int(seed)

    def __call__(self, images: torch.Tensor, step: int, rank: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(view_seed(self.seed, step, rank))
        n = images.shape[0]
        out = images
        if self.flip > 0 or self.crop < 1:
            out = self._geometric(out, g)
        if self.jitter > 0:
            out = self._jitter(out, g)
        if self.mix is not None and self.mix_prob > 0 and n > 1:
            out = self._mix(out, g)
        return out

    def _uniform(self, g, n, lo=0.0, hi=1.0):
        return lo + (hi - lo) * torch.rand(n, generator=g)

    def _geometric(self, x, g):
        """Crop + flip as one affine resample (output coordinate u maps to input a * u + t)."""
        n = x.shape[0]
        if self.crop < 1:
            area = self._uniform(g, n, self.crop, 1.0)
            ratio = torch.exp(self._uniform(g, n, math.log(RATIO[0]), math.log(RATIO[1])))
            w, h = (area * ratio).sqrt().clamp(max=1), (area / ratio).sqrt().clamp(max=1)
            tx, ty = (1 - w) * self._uniform(g, n, -1, 1), (1 - h) * self._uniform(g, n, -1, 1)
        else:
            w = h = torch.ones(n)
            tx = ty = torch.zeros(n)
        sign = torch.where(torch.rand(n, generator=g) < self.flip, -1.0, 1.0)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0], theta[:, 0, 2] = w * sign, tx
        theta[:, 1, 1], theta[:, 1, 2] = h, ty
        theta = theta.to(x)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode='bilinear', padding_mode='border', align_corners=False)

    def _jitter(self, x, g):
        """Brightness then contrast (around each image's mean) on the [0, 1] pixel scale."""
        n = x.shape[0]
        lo, hi = self.lo.to(x), self.hi.to(x)
        p = (x - lo) / (hi - lo)
        bright = self._uniform(g, n, 1 - self.jitter, 1 + self.jitter).to(x).view(n, 1, 1, 1)
        contrast = self._uniform(g, n, 1 - self.jitter, 1 + self.jitter).to(x).view(n, 1, 1, 1)
        p = (p * bright).clamp(0, 1)
        mean = p.mean(dim=(1, 2, 3), keepdim=True)
        p = ((p - mean) * contrast + mean).clamp(0, 1)
        return lo + p * (hi - lo)

    def _mix(self, x, g):
        """Each image, with probability ``mix_prob``, mixed with image perm[i] of the batch."""
        n, _, height, width = x.shape
        perm = torch.randperm(n, generator=g)
        lam = self._uniform(g, n)  # weight of the image itself
        mixed = torch.rand(n, generator=g) < self.mix_prob
        other = x[perm.to(x.device)]
        if self.mix == 'mixup':
            keep = torch.where(mixed, lam, torch.ones(n)).to(x).view(n, 1, 1, 1)
            return keep * x + (1 - keep) * other
        # cutmix: a box of area fraction 1 - lam from the other image, centre anywhere
        cut = (1 - lam).sqrt()
        cy, cx = self._uniform(g, n, 0, height), self._uniform(g, n, 0, width)
        y0, y1 = (cy - cut * height / 2).clamp(0, height), (cy + cut * height / 2).clamp(0, height)
        x0, x1 = (cx - cut * width / 2).clamp(0, width), (cx + cut * width / 2).clamp(0, width)
        ys, xs = torch.arange(height) + 0.5, torch.arange(width) + 0.5
        inside = (((ys >= y0[:, None]) & (ys < y1[:, None]))[:, :, None]
                  & ((xs >= x0[:, None]) & (xs < x1[:, None]))[:, None, :])
        box = (inside & mixed.view(n, 1, 1)).unsqueeze(1).to(x.device)
        return torch.where(box, other, x)


def build_views(views: Optional[dict], pixel_range: Sequence[torch.Tensor]) -> Optional[BatchViews]:
    """A :class:`BatchViews` from the schema's ``dfbf.views`` block, or None when it is off."""
    return None if not views else BatchViews(pixel_range, **views)
