"""Normalised model inputs <-> ordinary 8-bit images, so people can look at synthetic data."""
import os
import os.path as osp
from typing import Sequence

import cv2
import numpy as np
import torch
from torchvision.utils import make_grid


def to_uint8(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) normalised → uint8 pixels (N, C, H, W) in the model's channel order."""
    pixels = images.detach().float().cpu() * std + mean
    return pixels.round().clamp(0, 255).to(torch.uint8)


def from_uint8(pixels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_uint8` up to rounding: uint8 (N, C, H, W) → normalised float."""
    return (pixels.float() - mean) / std


def _to_bgr_hwc(image_chw: torch.Tensor, rgb: bool) -> np.ndarray:
    img = image_chw.permute(1, 2, 0).numpy()
    if img.shape[2] == 3 and rgb:
        img = img[:, :, ::-1]  # cv2 writes BGR
    return np.ascontiguousarray(img)


def save_pngs(pixels: torch.Tensor, out_dir: str, rgb: bool, start: int = 0) -> Sequence[str]:
    """Write each uint8 (C, H, W) image as ``out_dir/{index:06d}.png``; returns the paths.

    ``rgb``: whether the model's channels are RGB (its preprocessor converts BGR→RGB).
    """
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for i, img in enumerate(pixels):
        path = osp.join(out_dir, f'{start + i:06d}.png')
        if not cv2.imwrite(path, _to_bgr_hwc(img, rgb)):
            raise OSError(f'out: could not write {path}')
        paths.append(path)
    return paths


def grid_image(pixels: torch.Tensor, max_images: int = 64) -> torch.Tensor:
    """One uint8 (C, H, W) contact sheet of the first ``max_images`` images (8 per row)."""
    shown = pixels[:max_images]
    return make_grid(shown, nrow=min(8, len(shown)), padding=2, pad_value=255)


def write_image(image_chw: torch.Tensor, path: str, rgb: bool) -> str:
    """Write one uint8 (C, H, W) image in the model's channel order as ``path``."""
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    if not cv2.imwrite(path, _to_bgr_hwc(image_chw, rgb)):
        raise OSError(f'out: could not write {path}')
    return path


def save_grid(pixels: torch.Tensor, path: str, rgb: bool, max_images: int = 64) -> str:
    """Write the contact sheet of the first ``max_images`` uint8 images to ``path``."""
    return write_image(grid_image(pixels, max_images), path, rgb)
