"""Tiny labelled data sets the tests make on the fly (no download, seconds)."""
import os
import os.path as osp

import cv2
import numpy as np

# a small stock mmpretrain classifier config (ResNet-18 CIFAR, 8 wide, 3 classes)
TINY_CLASSIFIER_CFG = """
default_scope = 'mmpretrain'
model = dict(type='ImageClassifier',
             backbone=dict(type='ResNet_CIFAR', depth=18, stem_channels=8, base_channels=8),
             neck=dict(type='GlobalAveragePooling'),
             head=dict(type='LinearClsHead', num_classes=3, in_channels=64))
"""


def imagenet_style_folder(root: str, num_classes: int = 3, per_class: int = 4, size: int = 32,
                          seed: int = 0) -> str:
    """``root/class_k/img_i.png`` with a different mean colour per class."""
    rng = np.random.default_rng(seed)
    for k in range(num_classes):
        os.makedirs(osp.join(root, f'class_{k}'), exist_ok=True)
        base = rng.integers(0, 255, size=3)
        for i in range(per_class):
            img = np.clip(base + rng.normal(0, 30, size=(size, size, 3)), 0, 255).astype(np.uint8)
            cv2.imwrite(osp.join(root, f'class_{k}', f'img_{i}.png'), img)
    return root
