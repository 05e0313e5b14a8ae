"""Build the offline real-data benchmarks from scikit-learn's handwritten digits.

scikit-learn ships 1,797 real 8x8 scans of handwritten digits (``load_digits``), so these sets
need no download. One seeded, class-stratified split of the scans into train and test is made
first; every task draws its train images only from train scans and its test images only from
test scans, so nothing of the test split ever reaches training (or, later, synthesis).

Three sets are written under ``--out`` (default ``data/digits``), in the formats the stock
OpenMMLab datasets read:

* ``cls/``  classification, mmpretrain ``CustomDataset``: 32x32 3-channel PNGs (a scan upsampled
  bicubically) and ``train.txt`` / ``test.txt`` lines ``<file> <label>``.
* ``det/``  detection, mmdet ``CocoDataset``: 128x128 canvases on textured backgrounds with
  1-4 digits at random positions and sizes; ``annotations/{train,test}.json`` (COCO, 10
  categories named '0'..'9', boxes tight around the ink; ``scan_id`` names the source scan).
* ``pose/`` keypoints, mmpose ``CocoDataset`` (metainfo in
  ``configs/benchmarks/digits_pose_metainfo.py``): 128x128 canvases with 1-2 articulated stick
  figures whose limbs and torso are real handwritten '1' strokes and whose head is a real '0',
  warped onto the bones; the 13 joints are the keypoints. Figures face the viewer, so the
  figure's left side is on the image's right (as in COCO) and flipping swaps left and right.
  Distractor digits of other classes are scattered on the background. ``scan_ids`` of an
  annotation name the scans its figure was drawn from.

``split.json`` records the scan indices of each split. Output is a pure function of the
arguments (seeded numpy generators, PNG writes), so re-running reproduces the files bit for bit.

    python -m tools.benchmarks.make_digits --out data/digits
"""
import argparse
import json
import math
import os
import os.path as osp
import sys
import time

import cv2
import numpy as np

CLASSES = tuple(str(i) for i in range(10))

# The pose figure: 13 joints, COCO's body joints with one head point instead of the face.
KEYPOINTS = ('head', 'left_shoulder', 'right_shoulder', 'left_elbow', 'right_elbow',
             'left_wrist', 'right_wrist', 'left_hip', 'right_hip', 'left_knee', 'right_knee',
             'left_ankle', 'right_ankle')
# Bones drawn as strokes (joint index pairs); the torso is drawn from the shoulders' and hips'
# mid-points and the head separately.
LIMBS = ((1, 3), (3, 5), (2, 4), (4, 6), (7, 9), (9, 11), (8, 10), (10, 12))


# --------------------------------------------------------------------------- digits and split

def load_scans():
    """The 1,797 scans as float32 (N, 8, 8) in [0, 1] (ink = 1) and their int labels."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)


def make_split(labels: np.ndarray, test_fraction: float, seed: int):
    """Class-stratified train/test scan indices (sorted), fixed by ``seed``."""
    from sklearn.model_selection import train_test_split
    idx = np.arange(len(labels))
    train, test = train_test_split(idx, test_size=test_fraction, random_state=seed,
                                   stratify=labels)
    return np.sort(train), np.sort(test)


def upsample(scan: np.ndarray, height: int, width: int) -> np.ndarray:
    """A scan resized bicubically to (height, width), clipped to [0, 1]."""
    out = cv2.resize(scan, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(out, 0.0, 1.0)


def write_png(path: str, img: np.ndarray) -> None:
    """Write a uint8 image (H, W, 3) as PNG; a failed write is an error, not a silent skip."""
    if not cv2.imwrite(path, img):
        raise OSError(f'could not write {path}')


# --------------------------------------------------------------------------- classification

def make_cls(out: str, scans, labels, split, size: int = 32) -> dict:
    """32x32 3-channel PNGs of every scan and ``train.txt`` / ``test.txt`` for CustomDataset."""
    counts = {}
    for name, idx in split.items():
        folder = osp.join(out, 'cls', name)
        os.makedirs(folder, exist_ok=True)
        lines = []
        for i in idx:
            img = (upsample(scans[i], size, size) * 255.0 + 0.5).astype(np.uint8)
            fname = f'{i:04d}.png'
            write_png(osp.join(folder, fname), np.repeat(img[:, :, None], 3, axis=2))
            lines.append(f'{fname} {labels[i]}')
        with open(osp.join(out, 'cls', f'{name}.txt'), 'w') as f:
            f.write('\n'.join(lines) + '\n')
        counts[name] = len(lines)
    return counts


# --------------------------------------------------------------------------- shared drawing

def texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random textured background (size, size, 3) float in [0, 255].

    Smooth value noise at two scales, a sinusoidal grating and a colour tint, so the detector
    cannot find digits by thresholding a flat background.
    """
    img = np.zeros((size, size), np.float32)
    for cells, amp in ((4, 1.0), (16, 0.5)):
        coarse = rng.random((cells, cells)).astype(np.float32)
        img += amp * cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    theta, period = rng.uniform(0, np.pi), rng.uniform(6, 30)
    img += 0.5 * rng.random() * np.sin((xx * np.cos(theta) + yy * np.sin(theta)) * 2 * np.pi / period)
    img = (img - img.min()) / max(float(img.max() - img.min()), 1e-6)
    lo = rng.uniform(20, 120)
    hi = lo + rng.uniform(40, 110)
    grey = lo + (hi - lo) * img
    tint = rng.uniform(0.75, 1.25, size=3).astype(np.float32)
    return np.clip(grey[:, :, None] * tint[None, None, :], 0, 255)


def ink_colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """A colour that contrasts with ``background`` (mean over the region): dark or bright."""
    mean = float(background.mean())
    if mean > 128 or (mean > 70 and rng.random() < 0.5):
        base = rng.uniform(0, max(mean - 70, 1))
    else:
        base = rng.uniform(min(mean + 70, 254), 255)
    return np.clip(base + rng.uniform(-25, 25, size=3), 0, 255).astype(np.float32)


def blend(canvas: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> None:
    """Alpha-composite ink of ``colour`` onto ``canvas`` in place (alpha (H, W) in [0, 1])."""
    a = alpha[:, :, None]
    canvas *= 1.0 - a
    canvas += a * colour[None, None, :]


def ink_box(alpha: np.ndarray, thresh: float = 0.25):
    """Tight ``[x0, y0, x1, y1]`` (exclusive ends) of the pixels with ink above ``thresh``."""
    ys, xs = np.nonzero(alpha > thresh)
    if len(xs) == 0:
        return None
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def iou(a, b) -> float:
    """Intersection over union of two xyxy boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def overlap(a, b) -> float:
    """Intersection over the smaller box's area (1 when one box contains the other)."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    return w * h / min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))


def coco_skeleton(images, annotations, categories) -> dict:
    """A COCO json dict (with the fields pycocotools / xtcocotools require)."""
    return dict(info=dict(description='dfbf_mm digits benchmark (sklearn load_digits)'),
                licenses=[], images=images, annotations=annotations, categories=categories)


# --------------------------------------------------------------------------- detection

def make_det(out: str, scans, labels, split, num_images: dict, seed: int, size: int = 128) -> dict:
    """Canvases with 1-4 digits each, and COCO bbox annotations per split."""
    categories = [dict(id=i + 1, name=c, supercategory='digit') for i, c in enumerate(CLASSES)]
    counts = {}
    for s, (name, idx) in enumerate(split.items()):
        rng = np.random.default_rng([seed, 1, s])
        folder = osp.join(out, 'det', 'images', name)
        os.makedirs(folder, exist_ok=True)
        images, anns = [], []
        for img_id in range(1, num_images[name] + 1):
            canvas = texture(rng, size)
            boxes = []
            for _ in range(int(rng.integers(1, 5))):
                for _attempt in range(20):
                    h = int(rng.integers(18, 57))
                    w = int(round(h * rng.uniform(0.75, 1.15)))
                    x, y = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
                    cell = [x, y, x + w, y + h]
                    if all(iou(cell, b[0]) < 0.05 for b in boxes):
                        break
                else:
                    continue
                k = int(rng.choice(idx))
                alpha = upsample(scans[k], h, w)
                box = ink_box(alpha)
                if box is None:
                    continue
                region = canvas[y:y + h, x:x + w]
                blend(region, alpha, ink_colour(rng, region))
                x0, y0, x1, y1 = box[0] + x, box[1] + y, box[2] + x, box[3] + y
                boxes.append((cell, [x0, y0, x1, y1], int(labels[k]), k))
            noise = rng.normal(0, rng.uniform(0, 8), canvas.shape).astype(np.float32)
            img = np.clip(canvas + noise, 0, 255).astype(np.uint8)
            fname = f'{img_id:05d}.png'
            write_png(osp.join(folder, fname), img)
            images.append(dict(id=img_id, file_name=fname, width=size, height=size))
            for _cell, (x0, y0, x1, y1), label, k in boxes:
                anns.append(dict(id=len(anns) + 1, image_id=img_id, category_id=label + 1,
                                 bbox=[x0, y0, x1 - x0, y1 - y0], area=(x1 - x0) * (y1 - y0),
                                 iscrowd=0, scan_id=int(k)))
        os.makedirs(osp.join(out, 'det', 'annotations'), exist_ok=True)
        with open(osp.join(out, 'det', 'annotations', f'{name}.json'), 'w') as f:
            json.dump(coco_skeleton(images, anns, categories), f)
        counts[name] = dict(images=len(images), digits=len(anns))
    return counts


# --------------------------------------------------------------------------- keypoints

def _rot(v, deg):
    """``v`` (2,) rotated by ``deg`` degrees (image coordinates, y down: positive = clockwise)."""
    a = math.radians(deg)
    c, s = math.cos(a), math.sin(a)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]], np.float64)


def figure_joints(rng: np.random.Generator):
    """Joints (13, 2) of a random pose in figure units (torso length 1), and the neck/pelvis.

    The torso leans at most 25 degrees, so the figure's left shoulder and hip (it faces the
    viewer) are always on the image's right and left/right are well defined by connectivity.
    """
    lean = rng.uniform(-25, 25)
    down = _rot(np.array([0.0, 1.0]), lean)
    right_img = _rot(np.array([1.0, 0.0]), lean)  # towards the image's right = figure's left
    neck = np.zeros(2)
    pelvis = neck + down
    j = np.zeros((13, 2))
    j[0] = neck - down * rng.uniform(0.35, 0.45)
    shoulder_w, hip_w = rng.uniform(0.25, 0.35), rng.uniform(0.15, 0.22)
    j[1], j[2] = neck + right_img * shoulder_w, neck - right_img * shoulder_w
    j[7], j[8] = pelvis + right_img * hip_w, pelvis - right_img * hip_w
    for side, sign in ((0, 1.0), (1, -1.0)):  # 0 = figure's left (image right)
        # arm: abduction from hanging down, outwards positive; elbow bend either way
        upper, fore = rng.uniform(0.4, 0.5), rng.uniform(0.35, 0.45)
        abd = rng.uniform(-20, 170)
        d_upper = _rot(down, -sign * abd)
        bend = rng.uniform(-140, 140)
        j[3 + side] = j[1 + side] + d_upper * upper
        j[5 + side] = j[3 + side] + _rot(d_upper, bend) * fore
        # leg: abduction outwards, knee bends backwards (towards the image's vertical)
        thigh, shin = rng.uniform(0.5, 0.6), rng.uniform(0.45, 0.55)
        labd = rng.uniform(-10, 50)
        d_thigh = _rot(down, -sign * labd)
        knee = rng.uniform(-90, 90) if rng.random() < 0.5 else rng.uniform(-20, 20)
        j[9 + side] = j[7 + side] + d_thigh * thigh
        j[11 + side] = j[9 + side] + _rot(d_thigh, knee) * shin
    return j, neck, pelvis


def _warp_max(alpha: np.ndarray, src: np.ndarray, m: np.ndarray, box) -> None:
    """``alpha = max(alpha, warp(src, m))`` computed only inside ``box`` (x0, y0, x1, y1)."""
    h, w = alpha.shape
    x0, y0 = max(int(math.floor(box[0])), 0), max(int(math.floor(box[1])), 0)
    x1, y1 = min(int(math.ceil(box[2])) + 1, w), min(int(math.ceil(box[3])) + 1, h)
    if x1 <= x0 or y1 <= y0:
        return
    m = m.astype(np.float64).copy()
    m[:, 2] -= (x0, y0)  # destination shifted to the region's origin
    roi = cv2.warpAffine(src, m, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR, borderValue=0)
    np.maximum(alpha[y0:y1, x0:x1], roi, out=alpha[y0:y1, x0:x1])


def draw_stroke(alpha: np.ndarray, scan: np.ndarray, p, q, thickness: float) -> None:
    """Draw a real handwritten '1' scan warped so its ink runs from ``p`` to ``q`` (pixels).

    The scan's ink box (top centre to bottom centre) is mapped onto the bone, its width onto
    ``thickness``; the result is max-combined into ``alpha`` (H, W).
    """
    big = upsample(scan, 32, 32)
    x0, y0, x1, y1 = ink_box(big) or [8, 0, 24, 32]
    top = np.array([(x0 + x1) / 2, y0], np.float64)
    bottom = np.array([(x0 + x1) / 2, y1], np.float64)
    width = max(x1 - x0, 1)
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    axis = q - p
    u = axis / max(np.linalg.norm(axis), 1e-6)
    n = np.array([-u[1], u[0]])
    # source (scan) -> destination (canvas): top->p, bottom->q, +x by width -> +n by thickness
    src = np.float32([top, bottom, top + np.array([width, 0.0])])
    dst = np.float32([p, q, p + n * thickness])
    m = cv2.getAffineTransform(src, dst)
    corners = np.array([[0, 0, 1], [32, 0, 1], [0, 32, 1], [32, 32, 1]], np.float64) @ m.T
    _warp_max(alpha, big, m, (*corners.min(0), *corners.max(0)))


def draw_head(alpha: np.ndarray, scan: np.ndarray, centre, radius: float) -> None:
    """Draw a real handwritten '0' scan scaled so its ink box spans ``2 * radius``."""
    big = upsample(scan, 32, 32)
    x0, y0, x1, y1 = ink_box(big) or [4, 4, 28, 28]
    sx, sy = 2 * radius / max(x1 - x0, 1), 2 * radius / max(y1 - y0, 1)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    m = np.float32([[sx, 0, centre[0] - sx * cx], [0, sy, centre[1] - sy * cy]])
    _warp_max(alpha, big, m, (m[0, 2], m[1, 2], m[0, 2] + 32 * sx, m[1, 2] + 32 * sy))


def make_pose(out: str, scans, labels, split, num_images: dict, seed: int, size: int = 128) -> dict:
    """Canvases with 1-2 stick figures each, COCO keypoint annotations per split."""
    categories = [dict(id=1, name='figure', supercategory='figure', keypoints=list(KEYPOINTS),
                       skeleton=[[a + 1, b + 1] for a, b in LIMBS])]
    counts = {}
    for s, (name, idx) in enumerate(split.items()):
        rng = np.random.default_rng([seed, 2, s])
        ones = idx[labels[idx] == 1]
        zeros = idx[labels[idx] == 0]
        others = idx[(labels[idx] != 0) & (labels[idx] != 1)]
        folder = osp.join(out, 'pose', 'images', name)
        os.makedirs(folder, exist_ok=True)
        images, anns = [], []
        for img_id in range(1, num_images[name] + 1):
            canvas = texture(rng, size)
            for _ in range(int(rng.integers(0, 4))):  # distractor digits
                h = int(rng.integers(14, 40))
                x, y = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - h + 1))
                region = canvas[y:y + h, x:x + h]
                blend(region, upsample(scans[int(rng.choice(others))], h, h), ink_colour(rng, region))
            placed = []
            for _ in range(int(rng.integers(1, 3))):
                for _attempt in range(20):
                    j, neck, pelvis = figure_joints(rng)
                    scale = rng.uniform(18, 40)  # torso length in pixels
                    head_r = scale * rng.uniform(0.16, 0.22)
                    lo = np.minimum(j.min(0), j[0] - head_r / scale)
                    hi = np.maximum(j.max(0), j[0] + head_r / scale)
                    extent = (hi - lo) * scale
                    margin = 3.0
                    if np.any(extent + 2 * margin > size):
                        continue
                    origin = np.array([rng.uniform(margin, size - margin - extent[0]),
                                       rng.uniform(margin, size - margin - extent[1])])
                    joints = (j - lo) * scale + origin
                    box = [origin[0] - margin, origin[1] - margin,
                           origin[0] + extent[0] + margin, origin[1] + extent[1] + margin]
                    if all(overlap(box, b) < 0.25 for b in placed):
                        break
                else:
                    continue
                neck_px, pelvis_px = (neck - lo) * scale + origin, (pelvis - lo) * scale + origin
                thick = scale * rng.uniform(0.15, 0.25)
                alpha = np.zeros((size, size), np.float32)
                bones = [(neck_px, pelvis_px, thick * 1.3), (joints[1], joints[2], thick),
                         (joints[7], joints[8], thick)]
                bones += [(joints[a], joints[b], thick) for a, b in LIMBS]
                used = []
                for p, q, t in bones:
                    used.append(int(rng.choice(ones)))
                    draw_stroke(alpha, scans[used[-1]], p, q, t)
                used.append(int(rng.choice(zeros)))
                draw_head(alpha, scans[used[-1]], joints[0], head_r)
                x0, y0, x1, y1 = (int(math.floor(box[0])), int(math.floor(box[1])),
                                  int(math.ceil(box[2])), int(math.ceil(box[3])))
                x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, size), min(y1, size)
                blend(canvas, alpha, ink_colour(rng, canvas[y0:y1, x0:x1]))
                placed.append(box)
                kps = []
                for x, y in joints:
                    kps += [round(float(x), 2), round(float(y), 2), 2]
                anns.append(dict(id=len(anns) + 1, image_id=img_id, category_id=1,
                                 bbox=[x0, y0, x1 - x0, y1 - y0], area=float((x1 - x0) * (y1 - y0)),
                                 iscrowd=0, keypoints=kps, num_keypoints=len(KEYPOINTS),
                                 scan_ids=used))
            noise = rng.normal(0, rng.uniform(0, 8), canvas.shape).astype(np.float32)
            img = np.clip(canvas + noise, 0, 255).astype(np.uint8)
            fname = f'{img_id:05d}.png'
            write_png(osp.join(folder, fname), img)
            images.append(dict(id=img_id, file_name=fname, width=size, height=size))
        os.makedirs(osp.join(out, 'pose', 'annotations'), exist_ok=True)
        with open(osp.join(out, 'pose', 'annotations', f'{name}.json'), 'w') as f:
            json.dump(coco_skeleton(images, anns, categories), f)
        counts[name] = dict(images=len(images), figures=len(anns))
    return counts


# --------------------------------------------------------------------------- main

def build(out: str, seed: int = 0, test_fraction: float = 0.2, tasks=('cls', 'det', 'pose'),
          det_images=(3000, 300), pose_images=(2000, 300)) -> dict:
    """Write the requested sets under ``out``; returns a summary dict (also saved as JSON)."""
    scans, labels = load_scans()
    train, test = make_split(labels, test_fraction, seed)
    split = {'train': train, 'test': test}
    os.makedirs(out, exist_ok=True)
    with open(osp.join(out, 'split.json'), 'w') as f:
        json.dump(dict(seed=seed, test_fraction=test_fraction, train=train.tolist(),
                       test=test.tolist()), f)
    summary = dict(seed=seed, scans=dict(train=len(train), test=len(test)))
    if 'cls' in tasks:
        summary['cls'] = make_cls(out, scans, labels, split)
    if 'det' in tasks:
        summary['det'] = make_det(out, scans, labels, split,
                                  dict(train=det_images[0], test=det_images[1]), seed)
    if 'pose' in tasks:
        summary['pose'] = make_pose(out, scans, labels, split,
                                    dict(train=pose_images[0], test=pose_images[1]), seed)
    with open(osp.join(out, 'summary.json'), 'w') as f:
        json.dump(summary, f, indent=1)
    return summary


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', default='data/digits', help='output folder (default data/digits)')
    p.add_argument('--seed', type=int, default=0, help='split and generation seed')
    p.add_argument('--test-fraction', type=float, default=0.2, help='share of scans held out')
    p.add_argument('--tasks', nargs='+', default=['cls', 'det', 'pose'],
                   choices=['cls', 'det', 'pose'])
    p.add_argument('--det-images', type=int, nargs=2, default=[3000, 300], metavar=('TRAIN', 'TEST'))
    p.add_argument('--pose-images', type=int, nargs=2, default=[2000, 300],
                   metavar=('TRAIN', 'TEST'))
    args = p.parse_args(argv)
    if not 0 < args.test_fraction < 1:
        p.error(f'--test-fraction: must be in (0, 1), got {args.test_fraction}')
    if min(args.det_images + args.pose_images) < 1:
        p.error('--det-images/--pose-images: counts must be >= 1')
    return args


def main(argv=None):
    args = parse_args(argv)
    t0 = time.time()
    summary = build(args.out, args.seed, args.test_fraction, tuple(args.tasks),
                    tuple(args.det_images), tuple(args.pose_images))
    print(json.dumps(summary))
    print(f'wrote {args.out} in {time.time() - t0:.1f} s', file=sys.stderr)


if __name__ == '__main__':
    main()
