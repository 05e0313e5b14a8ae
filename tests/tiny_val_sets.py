"""Tiny validation sets in the layouts the shipped configs read, under one root (seconds, no
download): run a stock config with that root as the working directory and its relative
``data/...`` paths resolve as they would on a machine with COCO / ImageNet.

- ``data/coco/``: ``val2017/*.jpg``, ``annotations/instances_val2017.json`` (COCO detection,
  the 80 COCO categories), ``annotations/person_keypoints_val2017.json`` (17 COCO keypoints)
  and the person detections file the top-down pose configs take their boxes from;
- ``data/imagenet/``: ``val/*.JPEG`` and ``meta/val.txt`` (mmpretrain's ImageNet layout);
- ``data/cifar10_folder/``: ``class_k/*.png`` 32x32, for CIFAR configs (mmpretrain's CIFAR10
  checks its files' md5 sums, so only the real archive passes; the folder layout stands in).

The images are coloured rectangles on a gradient with one "person" (a box and 17 points) each:
what the evaluators need to run, not to score.
"""
import json
import os
import os.path as osp

import cv2
import numpy as np

from tiny_data import imagenet_style_folder

COCO_KEYPOINTS = ['nose', 'left_eye', 'right_eye', 'left_ear', 'right_ear', 'left_shoulder',
                  'right_shoulder', 'left_elbow', 'right_elbow', 'left_wrist', 'right_wrist',
                  'left_hip', 'right_hip', 'left_knee', 'right_knee', 'left_ankle', 'right_ankle']
# the keypoint height of each joint in a box, as a fraction (head at the top, ankles at 1)
_JOINT_Y = [0.05, 0.03, 0.03, 0.05, 0.05, 0.2, 0.2, 0.35, 0.35, 0.5, 0.5, 0.5, 0.5,
            0.75, 0.75, 0.95, 0.95]


def _image(rng, h: int, w: int, box) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w]
    img = np.stack([xs * 255 // w, ys * 255 // h, np.full_like(xs, 90)], -1).astype(np.uint8)
    x, y, bw, bh = box
    img[y:y + bh, x:x + bw] = rng.integers(0, 255, size=3)
    return img


def _coco(images, annotations, categories) -> dict:
    return dict(info=dict(description='dfbf_mm tiny val set'), licenses=[], images=images,
                annotations=annotations, categories=categories)


def coco_val(root: str, num_images: int = 2, size=(96, 128), seed: int = 0) -> str:
    """``root/data/coco`` for the detection and top-down keypoint configs."""
    from mmdet.datasets import CocoDataset
    rng = np.random.default_rng(seed)
    coco = osp.join(root, 'data', 'coco')
    os.makedirs(osp.join(coco, 'val2017'), exist_ok=True)
    os.makedirs(osp.join(coco, 'annotations'), exist_ok=True)
    os.makedirs(osp.join(coco, 'person_detection_results'), exist_ok=True)
    h, w = size
    images, det_anns, kpt_anns, person_boxes = [], [], [], []
    for i in range(num_images):
        box = [int(w * 0.3), int(h * 0.15), int(w * 0.4), int(h * 0.7)]
        name = f'{i + 1:012d}.jpg'
        cv2.imwrite(osp.join(coco, 'val2017', name), _image(rng, h, w, box))
        images.append(dict(id=i + 1, file_name=name, height=h, width=w))
        common = dict(id=i + 1, image_id=i + 1, category_id=1, bbox=box, area=box[2] * box[3],
                      iscrowd=0)
        det_anns.append(dict(common))
        points = []
        for j, fy in enumerate(_JOINT_Y):
            side = -1 if 'left' in COCO_KEYPOINTS[j] else 1 if 'right' in COCO_KEYPOINTS[j] else 0
            points += [box[0] + box[2] * (0.5 + 0.25 * side), box[1] + box[3] * fy, 2]
        kpt_anns.append(dict(common, num_keypoints=17, keypoints=[float(v) for v in points]))
        person_boxes.append(dict(image_id=i + 1, category_id=1, bbox=box, score=0.99))
    classes = CocoDataset.METAINFO['classes']
    categories = [dict(id=k + 1, name=c, supercategory='none') for k, c in enumerate(classes)]
    person = dict(id=1, name='person', supercategory='person', keypoints=COCO_KEYPOINTS,
                  skeleton=[[16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13]])
    files = {'annotations/instances_val2017.json': _coco(images, det_anns, categories),
             'annotations/person_keypoints_val2017.json': _coco(images, kpt_anns, [person]),
             'person_detection_results/COCO_val2017_detections_AP_H_56_person.json': person_boxes}
    for rel, content in files.items():
        with open(osp.join(coco, rel), 'w') as f:
            json.dump(content, f)
    return coco


def imagenet_val(root: str, num_images: int = 2, size: int = 64, seed: int = 0) -> str:
    """``root/data/imagenet/{val/*.JPEG, meta/val.txt}`` (labels 0..num_images-1)."""
    rng = np.random.default_rng(seed)
    imagenet = osp.join(root, 'data', 'imagenet')
    os.makedirs(osp.join(imagenet, 'val'), exist_ok=True)
    os.makedirs(osp.join(imagenet, 'meta'), exist_ok=True)
    lines = []
    for i in range(num_images):
        name = f'ILSVRC2012_val_{i + 1:08d}.JPEG'
        box = [size // 4, size // 4, size // 2, size // 2]
        cv2.imwrite(osp.join(imagenet, 'val', name), _image(rng, size, size, box))
        lines.append(f'{name} {i}')
    with open(osp.join(imagenet, 'meta', 'val.txt'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    return imagenet


def cifar_folder(root: str) -> str:
    """``root/data/cifar10_folder/class_k/img_i.png``: 2 classes x 1 image of 32x32."""
    return imagenet_style_folder(osp.join(root, 'data', 'cifar10_folder'), num_classes=2,
                                 per_class=1, size=32)


def all_val_sets(root: str) -> str:
    coco_val(root)
    imagenet_val(root)
    cifar_folder(root)
    return root
