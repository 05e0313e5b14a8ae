"""NoiseImageDataset: Gaussian-noise inputs, the lower-bound baseline of the benchmarks.

The same distillation on images that were never optimised: N(0, 1) in the model's normalised
input space, which is where DeepInversion starts. Deterministic per index.
"""
from typing import Tuple

import torch
from torch.utils.data import Dataset

from ..registry import DATASETS


@DATASETS.register_module()
class NoiseImageDataset(Dataset):
    """``num_images`` N(0, 1) images of ``image_size`` (already normalised)."""

    def __init__(self, num_images: int, image_size: Tuple[int, int], seed: int = 0,
                 channels: int = 3):
        if not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f'num_images: must be a positive integer, got {num_images!r}')
        self.num_images = num_images
        self.image_size = tuple(image_size)
        self.seed = int(seed)
        self.channels = channels

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> dict:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        return dict(inputs=torch.randn(self.channels, *self.image_size, generator=gen))
