"""mmdeploy 1.3.1 converts an exported pruned model (``pruned.py`` + ``pruned.pth``, as
``tools/prune.py`` and the engine's export write them) to ONNX Runtime for detection, pose and
classification, and the converted model matches PyTorch.

Runs on the torch 2.1 stack (``make test-torch2.1``); skipped where mmdeploy is not installed.
Models: the committed digits teachers (configs/benchmarks), pruned by L1 at 0.3; deploy
configs: configs/deploy/. Match: ONNX Runtime against the stock PyTorch model on the same
preprocessed input --
- classification: same label, class scores within 1e-4;
- pose: keypoints within 1e-2 px, keypoint scores within 1e-4, against the model without its
  test-time flip (``flip_test``: mmdeploy exports one forward, no flip averaging);
- detection: mmdeploy's graph ends in its own multi-class NMS, which differs from mmdet's
  (every class of a box vs its best class), so the raw outputs (boxes, scores, labels) are
  matched against the PyTorch forward under mmdeploy's rewrites (same count and labels, values
  within 1e-4 of the output scale), and the top detection against stock mmdet (same label,
  IoU >= 0.99, score within 1e-4).
"""
import json
import os.path as osp

import numpy as np
import pytest
import torch

pytest.importorskip('mmdeploy', reason='mmdeploy 1.3.1 is on the torch 2.1 stack only (make test-torch2.1): '
                    "on torch >= 2.9 its torch2onnx runs the dynamo exporter, which needs numpy >= 2")

from mmengine.config import Config  # noqa: E402
from mmengine.runner import load_checkpoint  # noqa: E402

from dfbf_mm.export import export_pruned_model  # noqa: E402
from dfbf_mm.registry import PRUNERS  # noqa: E402
from dfbf_mm.stock_model import build_stock_model, get_backbone, load_weights  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TASKS = dict(cls=('digits_cls_teacher', 'classification', (32, 32)),
             det=('digits_det_teacher', 'detection', (128, 128)),
             pose=('digits_pose_teacher', 'pose-detection', (64, 64)))
TOL = 1e-4


@pytest.fixture(scope='module', autouse=True)
def _restore_rewritten_staticmethods():
    """mmdeploy 1.3.1's function rewriter saves ``getattr(cls, name)`` and sets it back on exit,
    so a rewritten staticmethod comes back as a plain function and later callers in the process
    break (mmpretrain's ``ShiftWindowMSA.get_attn_mask``: SwinTransformerV2 in
    tests/test_pruning_layers.py). Put those class attributes back after this module."""
    from mmdeploy.codebase import import_codebase
    from mmdeploy.core import FUNCTION_REWRITER
    from mmdeploy.core.rewriters.rewriter_utils import import_function
    from mmdeploy.utils import Codebase
    for codebase in (Codebase.MMPRETRAIN, Codebase.MMDET, Codebase.MMPOSE):
        import_codebase(codebase)
    saved = []
    for path in FUNCTION_REWRITER._registry._rewrite_records:
        try:
            _, owner = import_function(path)
        except Exception:  # noqa: BLE001 -- a rewrite of a package or release not installed
            continue
        name = path.rsplit('.', 1)[1]
        if owner is not None and isinstance(owner.__dict__.get(name), (staticmethod, classmethod)):
            saved.append((owner, name, owner.__dict__[name]))
    assert saved, "no rewritten staticmethod found: mmdeploy's registry changed"
    yield
    for owner, name, attr in saved:
        setattr(owner, name, attr)


@pytest.fixture(scope='module')
def digits_images(tmp_path_factory):
    from tools.benchmarks import make_digits
    root = str(tmp_path_factory.mktemp('digits'))
    make_digits.build(root, seed=0, tasks=('cls', 'det', 'pose'), det_images=(1, 1), pose_images=(1, 1))
    return root


def _image(task, root):
    import cv2
    if task == 'cls':
        first = open(osp.join(root, 'cls', 'test.txt')).readline().split()[0]
        return cv2.imread(osp.join(root, 'cls', 'test', first))
    img = cv2.imread(osp.join(root, task, 'images', 'test', '00001.png'))
    if task == 'pose':  # top-down: the first figure's box, as a person detector would give it
        ann = json.load(open(osp.join(root, 'pose', 'annotations', 'test.json')))['annotations'][0]
        x, y, w, h = (int(v) for v in ann['bbox'])
        img = np.ascontiguousarray(img[y:y + h, x:x + w])
    return img


def _export_pruned(task, out):
    name, _, (w, h) = TASKS[task]
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'benchmarks', f'{name}.py'))
    model = build_stock_model(cfg)
    load_weights(model, osp.join(REPO, 'checkpoints', f'{name}.pth'), 'checkpoint')
    model.eval()
    spec = PRUNERS.build(dict(type='L1FilterPruner', sparsity=0.3)).prune(get_backbone(model), torch.randn(1, 3, h, w))
    return export_pruned_model(model, cfg, spec, out)


def _convert(task, tmp_path, root):
    from mmdeploy.apis import torch2onnx
    from mmdeploy.apis.utils import build_task_processor
    from mmdeploy.utils import get_input_shape, load_config
    paths = _export_pruned(task, str(tmp_path / 'export'))
    deploy_cfg = osp.join(REPO, 'configs', 'deploy', f'{TASKS[task][1]}_onnxruntime_static.py')
    img = _image(task, root)
    torch2onnx(img, str(tmp_path), 'end2end.onnx', deploy_cfg, paths['config'], paths['checkpoint'], device='cpu')
    dcfg, mcfg = load_config(deploy_cfg, paths['config'])
    processor = build_task_processor(mcfg, dcfg, 'cpu')
    backend = processor.build_backend_model([str(tmp_path / 'end2end.onnx')])
    cfg = Config.fromfile(paths['config'])
    if task == 'pose':  # mmdeploy exports one forward: test-time flip averaging is not in the graph
        cfg.model.test_cfg.flip_test = False
    stock = build_stock_model(cfg).eval()  # as the stock tools build it
    load_checkpoint(stock, paths['checkpoint'], strict=True)

    def data():  # a fresh copy each time: test_step writes its results into the data samples
        return processor.create_input(img, get_input_shape(dcfg))[0]
    with torch.no_grad():
        return dict(backend=backend, stock=stock, processor=processor, dcfg=dcfg, data=data,
                    deployed=backend.test_step(data())[0], reference=stock.test_step(data())[0])


def test_classification_converts_and_matches(tmp_path, digits_images):
    r = _convert('cls', tmp_path, digits_images)
    deployed, reference = r['deployed'], r['reference']
    assert torch.equal(deployed.pred_label, reference.pred_label)
    assert (deployed.pred_score - reference.pred_score).abs().max() <= TOL


def test_pose_converts_and_matches(tmp_path, digits_images):
    r = _convert('pose', tmp_path, digits_images)
    deployed, reference = r['deployed'].pred_instances, r['reference'].pred_instances
    assert deployed.keypoints.shape == reference.keypoints.shape == (1, 13, 2)
    assert np.abs(deployed.keypoints - reference.keypoints).max() <= 1e-2
    assert np.abs(deployed.keypoint_scores - reference.keypoint_scores).max() <= TOL


def _iou(a, b):
    lt, rb = torch.max(a[:2], b[:2]), torch.min(a[2:], b[2:])
    inter = (rb - lt).clamp(min=0).prod()
    return inter / ((a[2:] - a[:2]).prod() + (b[2:] - b[:2]).prod() - inter)


def test_detection_converts_and_matches(tmp_path, digits_images):
    from mmdeploy.core import RewriterContext, patch_model
    from mmdeploy.utils import IR
    r = _convert('det', tmp_path, digits_images)
    data = r['stock'].data_preprocessor(r['data'](), False)
    inputs = data['inputs']
    # raw outputs: ONNX Runtime against the same network under mmdeploy's rewrites in PyTorch
    ort = r['backend'].wrapper({'input': inputs})
    patched = patch_model(r['stock'], cfg=r['dcfg'], backend='onnxruntime', ir=IR.ONNX)
    with RewriterContext(cfg=r['dcfg'], backend='onnxruntime', ir=IR.ONNX, opset=11), torch.no_grad():
        dets, labels = patched(inputs, data_samples=data['data_samples'], mode='predict')
    assert ort['dets'].shape == dets.shape and dets.shape[1] > 0
    assert torch.equal(ort['labels'].long(), labels.long())
    scale = max(1.0, dets.abs().max().item())
    assert (ort['dets'] - dets).abs().max().item() <= TOL * scale
    # the task result: the deployed top detection is stock mmdet's
    deployed, reference = r['deployed'].pred_instances, r['reference'].pred_instances
    top_d, top_r = deployed.scores.argmax(), reference.scores.argmax()
    assert deployed.labels[top_d] == reference.labels[top_r]
    assert _iou(deployed.bboxes[top_d], reference.bboxes[top_r]) >= 0.99
    assert abs(deployed.scores[top_d] - reference.scores[top_r]) <= TOL
