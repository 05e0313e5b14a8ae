"""The digits benchmark sets: generated deterministically, split cleanly, read by stock datasets.

A tiny version of each set (all 1,797 classification scans, a handful of detection and pose
canvases) is generated once per test session; the checks load it through the very dataset
configs the teachers train with, and feed ground truth to the stock evaluators (a valid COCO
file scores AP 1.0 against itself).
"""
import filecmp
import json
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.config import Config

import dfbf_mm  # noqa: F401
from tools.benchmarks import make_digits, train_teacher

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))

SMALL = dict(det_images=(6, 3), pose_images=(6, 3))


@pytest.fixture(scope='module')
def digits(tmp_path_factory):
    out = str(tmp_path_factory.mktemp('digits'))
    summary = make_digits.build(out, seed=0, **SMALL)
    return out, summary


def _load(path):
    with open(path) as f:
        return json.load(f)


def _dataset(task, root, split):
    """Build the train or val dataset of a teacher config, pointed at ``root``."""
    from mmengine.registry import init_default_scope
    cfg = train_teacher.load_task_config(task, root)
    init_default_scope(cfg.default_scope)
    loader = cfg.train_dataloader if split == 'train' else cfg.val_dataloader
    from mmengine.registry import DATASETS
    return cfg, DATASETS.build(loader.dataset)


def test_split_is_stratified_disjoint_and_complete(digits):
    out, summary = digits
    split = _load(osp.join(out, 'split.json'))
    train, test = set(split['train']), set(split['test'])
    assert not train & test
    assert train | test == set(range(1797))
    assert summary['scans'] == dict(train=1437, test=360)
    _, labels = make_digits.load_scans()
    share = np.bincount(labels[split['test']], minlength=10) / np.bincount(labels, minlength=10)
    assert np.all(np.abs(share - 0.2) < 0.02), share


def test_generation_is_deterministic(digits, tmp_path):
    out, _ = digits
    again = str(tmp_path / 'again')
    make_digits.build(again, seed=0, tasks=('det', 'pose'), **SMALL)
    for rel in ('det/annotations/train.json', 'pose/annotations/test.json',
                'det/images/train/00001.png', 'pose/images/train/00002.png', 'split.json'):
        assert filecmp.cmp(osp.join(out, rel), osp.join(again, rel), shallow=False), rel
    other = str(tmp_path / 'seed1')
    make_digits.build(other, seed=1, tasks=('det', ), **SMALL)
    assert _load(osp.join(other, 'split.json'))['test'] != _load(osp.join(out, 'split.json'))['test']


def test_train_canvases_use_only_train_scans(digits):
    out, _ = digits
    split = _load(osp.join(out, 'split.json'))
    for name in ('train', 'test'):
        allowed = set(split[name])
        det = _load(osp.join(out, 'det', 'annotations', f'{name}.json'))
        assert det['annotations'] and {a['scan_id'] for a in det['annotations']} <= allowed
        pose = _load(osp.join(out, 'pose', 'annotations', f'{name}.json'))
        used = {k for a in pose['annotations'] for k in a['scan_ids']}
        assert pose['annotations'] and used <= allowed
        cls_files = open(osp.join(out, 'cls', f'{name}.txt')).read().split('\n')
        assert {int(line[:4]) for line in cls_files if line} == allowed


def test_detection_labels_match_scans_and_boxes_fit(digits):
    out, _ = digits
    _, labels = make_digits.load_scans()
    det = _load(osp.join(out, 'det', 'annotations', 'train.json'))
    per_image = np.bincount([a['image_id'] for a in det['annotations']])[1:]
    assert per_image.min() >= 1 and per_image.max() <= 4
    for a in det['annotations']:
        assert a['category_id'] - 1 == labels[a['scan_id']]
        x, y, w, h = a['bbox']
        assert 0 <= x and 0 <= y and x + w <= 128 and y + h <= 128 and w >= 2 and h >= 2


def test_pose_figures_face_the_viewer(digits):
    """The figure's left shoulder and hip lie on the image's right, as the metainfo says."""
    out, _ = digits
    pose = _load(osp.join(out, 'pose', 'annotations', 'train.json'))
    for a in pose['annotations']:
        k = np.array(a['keypoints']).reshape(13, 3)
        assert k[1, 0] > k[2, 0] and k[7, 0] > k[8, 0]
        assert np.all(k[:, 2] == 2)
        x, y, w, h = a['bbox']
        assert np.all((k[:, 0] >= x) & (k[:, 0] <= x + w) & (k[:, 1] >= y) & (k[:, 1] <= y + h))


def test_classification_set_loads_with_stock_dataset(digits):
    out, _ = digits
    _, ds = _dataset('cls', out, 'val')
    assert len(ds) == 360
    item = ds[0]
    assert tuple(item['inputs'].shape) == (3, 32, 32)
    assert int(item['data_samples'].gt_label) == int(open(osp.join(out, 'cls', 'test.txt'))
                                                    .readline().split()[1])


def test_detection_set_loads_and_scores_ap_1_on_ground_truth(digits):
    out, _ = digits
    cfg, ds = _dataset('det', out, 'train')
    item = ds[0]
    assert tuple(item['inputs'].shape) == (3, 128, 128)
    assert len(item['data_samples'].gt_instances) >= 1
    cfg, ds = _dataset('det', out, 'val')
    from mmdet.evaluation import CocoMetric
    metric = CocoMetric(ann_file=cfg.val_evaluator.ann_file, metric='bbox')
    metric.dataset_meta = ds.metainfo
    for i in range(len(ds)):
        info = ds.get_data_info(i)
        boxes = torch.tensor([inst['bbox'] for inst in info['instances']], dtype=torch.float32)
        labels = torch.tensor([inst['bbox_label'] for inst in info['instances']])
        metric.process({}, [dict(img_id=info['img_id'], ori_shape=(128, 128),
                                 pred_instances=dict(bboxes=boxes, scores=torch.ones(len(boxes)),
                                                     labels=labels))])
    assert metric.evaluate(len(ds))['coco/bbox_mAP'] == pytest.approx(1.0)


def test_pose_set_loads_and_scores_ap_1_on_ground_truth(digits):
    out, _ = digits
    cfg, ds = _dataset('pose', out, 'train')
    assert ds.metainfo['num_keypoints'] == 13
    assert ds.metainfo['flip_indices'][1] == 2 and ds.metainfo['flip_indices'][12] == 11
    item = ds[0]
    assert tuple(item['inputs'].shape) == (3, 64, 64)
    cfg, ds = _dataset('pose', out, 'val')
    from mmpose.evaluation import CocoMetric
    metric = CocoMetric(ann_file=cfg.val_evaluator.ann_file)
    metric.dataset_meta = ds.metainfo
    for i in range(len(ds)):
        info = ds.get_data_info(i)
        metric.process({}, [dict(id=info['id'], img_id=info['img_id'], category_id=1,
                                 ori_shape=(128, 128), raw_ann_info=info['raw_ann_info'],
                                 gt_instances=dict(bbox_scores=np.ones(1)),
                                 pred_instances=dict(keypoints=info['keypoints'],
                                                     keypoint_scores=np.ones((1, 13)),
                                                     bboxes=info['bbox']))])
    assert metric.evaluate(len(ds))['coco/AP'] == pytest.approx(1.0)


def test_set_data_root_moves_datasets_and_evaluators(tmp_path):
    for task in ('cls', 'det', 'pose'):
        cfg = train_teacher.load_task_config(task, str(tmp_path / 'elsewhere'))
        text = cfg.pretty_text
        assert 'data/digits' not in text, task
        for loader in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
            assert loader.dataset.data_root == str(tmp_path / 'elsewhere') + '/'
        if 'ann_file' in cfg.val_evaluator:
            assert cfg.val_evaluator.ann_file.startswith(str(tmp_path / 'elsewhere') + '/')


@pytest.mark.parametrize('task', ['cls', 'det', 'pose', 'vit', 'convnext'])
def test_committed_teacher_loads_strictly(task):
    from dfbf_mm.stock_model import build_stock_model, load_weights
    path = osp.join(REPO, 'checkpoints', f'digits_{task}_teacher.pth')
    ckpt = torch.load(path, map_location='cpu', weights_only=True)
    assert set(ckpt) == {'state_dict', 'meta'} and ckpt['meta']['task'] == task
    model = build_stock_model(Config.fromfile(osp.join(REPO, train_teacher.TASKS[task][0])))
    load_weights(model, path, strict=True)


@pytest.mark.parametrize('task', ['cls', 'vit', 'convnext'])
def test_committed_classifiers_classify_test_digits(digits, task):
    """The classification teachers (ResNet with BatchNorm; ViT and ConvNeXt with LayerNorm only),
    built from their stock configs with the committed weights, classify the first 60 test
    images of the generated set as their recorded test top-1 says (>= 97 %)."""
    from mmengine.dataset import pseudo_collate
    from dfbf_mm.stock_model import build_stock_model, load_weights
    out, _ = digits
    cfg, ds = _dataset(task, out, 'val')
    model = build_stock_model(cfg)  # with the config's data_preprocessor (normalisation)
    path = osp.join(REPO, 'checkpoints', f'digits_{task}_teacher.pth')
    load_weights(model, path, strict=True)
    model.eval()
    if task != 'cls':
        assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    items = [ds[i] for i in range(60)]
    with torch.no_grad():
        preds = model.test_step(pseudo_collate(items))
    right = sum(int(p.pred_label) == int(i['data_samples'].gt_label) for p, i in zip(preds, items))
    assert right >= 58, f'{task}: {right}/60 test digits right'
