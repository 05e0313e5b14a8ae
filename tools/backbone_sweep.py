"""Sweep every backbone class of mmdet, mmpose and mmpretrain through the whole DFBF path.

    python tools/backbone_sweep.py [--sparsity 0.5] [--json docs/backbone_sweep.json]
        [--out docs/backbone_sweep.md] [--readme README.md] [--only SCOPE.CLASS ...] [--redo]
        [--time-limit 600] [--report-only]

Every class registered from a ``models.backbones`` module of the three packages is matched to
its smallest stock config (``.mim/configs``, the first few configs whose ``model.backbone`` has
that type, smallest backbone by parameter count). Each is taken, with random weights (no
download: ``init_cfg``/``pretrained`` stripped), through the path a user runs:

1. build the whole stock model; 2. prune its backbone with L1FilterPruner at ``--sparsity``
(inside ``DataFreeDistiller``, as ``tools/train.py`` does); 3. one DFBF distillation step on a
random batch; 4. ``export_pruned_model``; 5. rebuild the deploy config with the stock registry
and load the checkpoint strictly; 6. one forward of the whole model in tensor mode, whose
output shapes must equal the unpruned model's.

Besides each class's smallest config, ``EXTRA_CONFIGS`` are swept as rows of their own (key
``SCOPE.CLASS (config name)``): stock configs of a class that pruned differently from its
smallest one (activation checkpointing, ConvNeXt V2's GRN, LeViT-256).

Rows are merged into ``--json`` after each class (a killed run resumes where it stopped; a class
that was running when the process died is recorded as such); ``--only``/``--redo`` re-run rows
(``--only`` takes class keys and extra-config keys).
``--out`` gets the full markdown table, ``--readme`` the table under "## Which backbones prune".
"""
import argparse
import copy
import gc
import glob
import importlib
import json
import os
import os.path as osp
import re
import signal
import sys
import tempfile
import time
import warnings
from contextlib import ExitStack, contextmanager

import torch
import torch.nn as nn

from dfbf_mm.export.profile import count_macs_params
from dfbf_mm.pruning import L1FilterPruner, flatten_outputs, reparameterize
from dfbf_mm.distillation.feature_taps import NORM_TYPES
from dfbf_mm.registry import MODELS, PRUNERS
from dfbf_mm.stock_model import enter_scope, input_channels

SCOPES = ('mmdet', 'mmpose', 'mmpretrain')
README_HEADING = '## Which backbones prune'
MAX_CANDIDATES = 8  # stock configs loaded per class to find its smallest one
# (scope, class, config under the package's configs): swept besides the class's smallest config
EXTRA_CONFIGS = (
    ('mmdet', 'SwinTransformer', 'dino/dino-5scale_swin-l_8xb2-12e_coco.py'),  # with_cp=True
    ('mmpretrain', 'ConvNeXt', 'convnext_v2/convnext-v2-atto_32xb32_in1k.py'),  # GRN
    ('mmpretrain', 'LeViT', 'levit/levit-256_8xb256_in1k.py'),
)


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def _one_line(e: BaseException, n: int = 220) -> str:
    text = str(e).strip()
    return (f'{type(e).__name__}: {text.splitlines()[0][:n]}' if text else type(e).__name__) \
        if not isinstance(e, ValueError) else text.splitlines()[0][:n + 200]


# -- which classes, which configs --------------------------------------------------------------
def registered_backbones(scopes=SCOPES):
    """``[(scope, class name)]`` of the classes registered from a ``.backbones`` module."""
    out = []
    for scope in scopes:
        registry = importlib.import_module(f'{scope}.registry').MODELS
        importlib.import_module(f'{scope}.models')
        out += [(scope, name) for name, cls in sorted(registry.module_dict.items())
                if '.backbones' in getattr(cls, '__module__', '')]
    return out


def extra_key(scope: str, name: str, config: str) -> str:
    """Row key of an ``EXTRA_CONFIGS`` entry: ``SCOPE.CLASS (config file name without .py)``."""
    return f'{scope}.{name} ({osp.splitext(osp.basename(config))[0]})'


def is_extra(row) -> bool:
    """A row of an ``EXTRA_CONFIGS`` entry (not a class's smallest config)."""
    return row['backbone'].endswith(')')


def configs_root(scope: str) -> str:
    return osp.join(osp.dirname(importlib.import_module(scope).__file__), '.mim', 'configs')


def _config_index(scope: str):
    """(text of every config file, {file: files it inherits from}) of a package's configs."""
    root = configs_root(scope)
    texts, parents = {}, {}
    for path in sorted(glob.glob(osp.join(root, '**', '*.py'), recursive=True)):
        with open(path) as f:
            texts[path] = f.read()
    for path, text in texts.items():
        refs = (osp.normpath(osp.join(osp.dirname(path), r)) for r in re.findall(r"['\"]([^'\"]+\.py)['\"]", text))
        parents[path] = {r for r in refs if r in texts}
    return texts, parents


_INDEX = {}


def candidate_configs(scope: str, name: str):
    """Non-``_base_`` configs of ``scope`` that write ``type='<name>'`` or inherit a file that does."""
    if scope not in _INDEX:
        _INDEX[scope] = _config_index(scope)
    texts, parents = _INDEX[scope]
    pat = re.compile(r"type\s*=\s*['\"]%s['\"]" % re.escape(name))
    hit = {p for p, t in texts.items() if pat.search(t)}
    changed = True
    while changed:  # close over inheritance
        new = {p for p, ps in parents.items() if p not in hit and ps & hit}
        hit |= new
        changed = bool(new)
    return sorted(p for p in hit if '/_base_/' not in p)


def _strip_init(cfg):
    """Remove pretrained-weight initialisation anywhere in a config (no downloads)."""
    if isinstance(cfg, dict):
        for k in ('init_cfg', 'pretrained'):
            cfg.pop(k, None)
        for v in cfg.values():
            _strip_init(v)
    elif isinstance(cfg, (list, tuple)):
        for v in cfg:
            _strip_init(v)
    return cfg


def load_stock_config(path: str):
    from mmengine.config import Config
    cfg = Config.fromfile(path)
    _strip_init(cfg.model)
    cfg.pop('load_from', None)
    return cfg


def _count_params(backbone_cfg: dict) -> int:
    """Parameter count of a backbone config (built on the meta device where it can be)."""
    try:
        with torch.device('meta'):
            m = MODELS.build(copy.deepcopy(backbone_cfg))
    except Exception:
        m = MODELS.build(copy.deepcopy(backbone_cfg))
    return sum(p.numel() for p in m.parameters())


def pick_config(scope: str, name: str):
    """(config path, reason) of the smallest stock config of ``scope.name``; path None if none."""
    paths = candidate_configs(scope, name)
    if not paths:
        return None, 'no stock config uses it'
    enter_scope(scope)
    best, errors = None, []
    for path in paths[:MAX_CANDIDATES]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                cfg = load_stock_config(path)
                bb = cfg.get('model', {}).get('backbone')
                if cfg.get('default_scope') != scope or not isinstance(bb, dict) or bb.get('type') != name \
                        or bb.get('deploy') or 'language_model' in cfg.model:  # a fused copy of a training config: the sweep fuses itself
                    continue
                n = _count_params(bb.to_dict())
        except Exception as e:
            errors.append(f'{osp.basename(path)}: {_one_line(e, 120)}')
            continue
        if best is None or (n, len(osp.basename(path))) < best[1]:  # tie: the plainer model
            best = (path, (n, len(osp.basename(path))))
    if best is None:
        return None, ('no stock config has it as model.backbone' if not errors else
                      f'its stock configs do not load ({errors[0]})')
    return best[0], ''


def short_config(scope: str, path: str) -> str:
    return f'{scope}::{osp.relpath(path, configs_root(scope))}'


# -- one class through the whole path ------------------------------------------------------------
def input_size(cfg, scope: str):
    """(H, W) the stock model is tested on (pose codec input, classification crop), or a default."""
    bb = cfg.model.backbone
    if scope == 'mmpose':
        codec = cfg.get('codec')
        codec = codec[0] if isinstance(codec, (list, tuple)) else codec
        if isinstance(codec, dict) and codec.get('input_size'):
            w, h = codec['input_size'][:2]
            return int(h), int(w)
        return 256, 192
    if scope == 'mmpretrain':
        size = bb.get('img_size')
        if size is None:
            pipeline = (cfg.get('test_dataloader') or {}).get('dataset', {}).get('pipeline', []) or []
            for t in pipeline:
                size = t.get('crop_size') or size
                if t.get('type') in ('ResizeEdge', 'Resize') and size is None:
                    size = t.get('scale')
        size = size or 224
        return (int(size), int(size)) if isinstance(size, (int, float)) else tuple(int(s) for s in size[::-1][:2])
    for t in (cfg.get('test_dataloader') or {}).get('dataset', {}).get('pipeline', []) or []:
        scale = t.get('scale') if t.get('type') == 'Resize' and t.get('keep_ratio') is False else None
        if isinstance(scale, (list, tuple)) and max(scale) <= 640:  # SSD300, YOLOv3-416: fixed sizes
            return int(scale[1]), int(scale[0])
    return 256, 256


def _batch(scope: str, size, n: int = 1, num_classes: int = 80, channels: int = 3):
    """A stock-format batch of random images (with data samples where the model needs them)."""
    h, w = size
    if scope == 'mmdet':
        from mmdet.testing import demo_mm_inputs
        return demo_mm_inputs(n, image_shapes=(channels, h, w), num_items=[2] * n, num_classes=num_classes)
    if scope == 'mmpose':
        from mmpose.structures import PoseDataSample
        samples = [PoseDataSample(metainfo=dict(img_shape=(h, w), input_size=(w, h))) for _ in range(n)]
        return dict(inputs=[torch.randint(0, 255, (channels, h, w), dtype=torch.uint8) for _ in range(n)],
                    data_samples=samples)
    return dict(inputs=[torch.randint(0, 255, (channels, h, w), dtype=torch.uint8) for _ in range(n)])


def _tensor_forward(model: nn.Module, scope: str, size, features: bool = False):
    """Shapes of the whole model's ``mode='tensor'`` outputs on a random batch (``features``: of
    ``extract_feat``, backbone + neck, for models whose tensor mode needs trained weights)."""
    model.eval()
    batch = _batch(scope, size, channels=input_channels(model))
    if type(model.data_preprocessor).__name__ == 'SelfSupDataPreprocessor':  # SparK: a collated batch
        batch = dict(inputs=torch.stack(batch['inputs']), data_samples=None)
    with torch.no_grad():
        data = model.data_preprocessor(batch, False)
        out = model.extract_feat(data['inputs']) if features else \
            model(data['inputs'], data.get('data_samples'), mode='tensor')
    return [tuple(t.shape) for t in flatten_outputs(out)]


def _macs_params(backbone: nn.Module, x: torch.Tensor):
    """(MACs or None, params) of ``backbone``; MACs are None where the op counter fails on it."""
    try:
        return count_macs_params(backbone, x)
    except Exception:
        return None, sum(p.numel() for p in backbone.parameters())


def backbone_kind(backbone: nn.Module) -> str:
    """'conv' when conv layers hold most of the weights, else 'transformer'."""
    conv = sum(p.numel() for m in backbone.modules() if isinstance(m, nn.modules.conv._ConvNd)
               for p in m.parameters(recurse=False))
    total = sum(p.numel() for p in backbone.parameters()) or 1
    return 'conv' if conv >= 0.5 * total else 'transformer'


@PRUNERS.register_module(force=True)
class SweepL1Pruner(L1FilterPruner):
    """L1FilterPruner that keeps its last report where the sweep can read it."""
    last = None

    def prune(self, backbone, example_inputs):
        SweepL1Pruner.last = self
        return super().prune(backbone, example_inputs)


def _stage(row, name):
    row['stage'] = name


def sequence_input(cfg):
    """Shape (without the batch) of the keypoint-sequence input of a pose lifter (mmpose
    ``PoseLifter``), None for image models: TCN convolves ``(C, T)`` (C = joints x 2 coordinates),
    DSTFormer (MotionBERT) attends over ``(T, K, C)``; T: frames per sample of its dataset."""
    if cfg.model.get('type') != 'PoseLifter':
        return None
    bb = cfg.model.backbone
    data = (cfg.get('val_dataloader') or {}).get('dataset', {})
    t = int(data.get('multiple_target') or data.get('seq_len') or 1)  # MotionBERT: 243-frame clips
    if bb.type == 'TCN':
        return (int(bb.in_channels), t)
    if bb.type == 'DSTFormer':
        k = cfg.model.head.decoder.get('num_keypoints', 17)
        return (t, int(k), int(bb.in_channels))
    raise ValueError(f'model.backbone: no sequence input known for a PoseLifter with a {bb.type}')


@contextmanager
def spark_visible_mask(cfg):
    """SparK's sparse encoders (SparseResNet, SparseConvNeXt) read the mask of visible patches from
    a global (``SparseHelper._cur_active``) that the SparK algorithm sets before each forward of
    its pretraining loss; nothing sets it for any other call. Inside the block it is set before
    every forward of such an encoder to *every patch visible*, sized from that forward's input:
    the dense encoder a downstream model uses."""
    if cfg.model.get('type') != 'SparK':
        yield
        return
    from mmpretrain.models.utils.sparse_modules import SparseHelper
    ratio = int(cfg.model.get('downsample_raito', 32))

    def visible(module, args):
        if hasattr(module, 'dense_model_to_sparse') and args and isinstance(args[0], torch.Tensor):
            n, _, h, w = args[0].shape
            SparseHelper._cur_active = torch.ones(n, 1, h // ratio, w // ratio, dtype=torch.bool,
                                                  device=args[0].device)
    handle = nn.modules.module.register_module_forward_pre_hook(visible)
    try:
        yield
    finally:
        handle.remove()
        SparseHelper._cur_active = None


def _sweep_sequence_model(row, cfg, teacher, shape, sparsity, trace_time_limit, tmp):
    """The whole path of a keypoint-sequence model (no images: no synthesis, no distillation
    step): prune its backbone, export, strict reload, tensor-mode forward of the whole model."""
    from dfbf_mm.export import export_pruned_model
    from dfbf_mm.stock_model import build_stock_model, load_weights
    x = torch.randn(1, *shape)

    def forward(model):
        model.eval()
        with torch.no_grad():
            feats = [tuple(t.shape) for t in flatten_outputs(model.extract_feat(x))]
            return feats, [tuple(t.shape) for t in flatten_outputs(model(x, None, mode='tensor'))]
    teacher.backbone.eval()
    macs0, params0 = _macs_params(teacher.backbone, x)
    _stage(row, 'stock forward')
    ref = forward(teacher)
    _stage(row, 'prune')
    pruner = SweepL1Pruner(sparsity=sparsity, trace_time_limit=trace_time_limit)
    student = copy.deepcopy(teacher)
    try:
        spec = pruner.prune(student.backbone, x)
    except ValueError as e:
        row.update(status='refused', note=_one_line(e))
        return row
    _record_prune(row, student.backbone, pruner.report, x, macs0, params0)
    row['note'] = '; '.join(n for n in (f'input: keypoint sequence {tuple(x.shape)}, no distillation step '
                                        '(no images to synthesise)', row['note']) if n)
    _stage(row, 'export')
    paths = export_pruned_model(student, cfg, spec, osp.join(tmp, 'out'))
    _stage(row, 'strict reload')
    from mmengine.config import Config
    deployed = build_stock_model(Config.fromfile(paths['config']))
    load_weights(deployed, paths['checkpoint'], strict=True)
    _stage(row, 'forward')
    got = forward(deployed)
    if got != ref:
        raise RuntimeError(f'output shapes changed: {ref} -> {got}')
    row.update(status='yes', stage='')
    return row


def _record_prune(row, backbone, rep, x, macs0, params0):
    """Fill the pruning columns of ``row`` from the pruned ``backbone`` and its pruner report."""
    backbone.eval()
    macs1, params1 = _macs_params(backbone, x)
    reasons = sorted({r for _, r in rep['skipped']})
    modules = dict(backbone.named_modules())
    ffn = [g for g in rep['groups'] if isinstance(modules.get(g['root']), nn.Linear)]
    row.update(groups=f'{len(rep["groups"])} / {len(rep["skipped"])}',
               params_cut=f'{100 * (1 - params1 / params0):.1f} %',
               macs_cut=f'{100 * (1 - macs1 / macs0):.1f} %' if macs0 and macs1 else 'n/a',
               ffn_pruned=str(len(ffn)),
               note='; '.join(n for n in (row['note'], 'kept: ' + '; '.join(reasons) if reasons else '') if n))


def sweep_class(scope: str, name: str, config: str, sparsity: float = 0.5, time_limit: int = 600,
                trace_time_limit: float = 300, key: str = None) -> dict:
    """Run one class through the whole path (see the module docstring); returns its row.

    ``row['status']``: 'yes' (every stage ran, whole-model output shapes unchanged), 'refused'
    (the pruner's one-line ValueError), 'FAIL' (another stage failed: ``stage`` names it),
    'TIMEOUT' (past ``time_limit`` seconds, SIGALRM).
    """
    from mmengine.logging import MessageHub
    from mmengine.optim import build_optim_wrapper

    from dfbf_mm.export import export_pruned_model
    from dfbf_mm.stock_model import build_stock_model, load_weights, stock_model_cfg

    row = dict(backbone=key or f'{scope}.{name}', config=short_config(scope, config), kind='', status='',
               stage='', groups='', params_cut='', macs_cut='', ffn_pruned='', note='', seconds=0.0)
    start = time.perf_counter()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(time_limit)
    try:
        with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
            warnings.simplefilter('ignore')
            MessageHub.get_current_instance().update_info('iter', 0)
            _stage(row, 'build')
            cfg = load_stock_config(config)
            enter_scope(scope)
            torch.manual_seed(0)
            teacher = build_stock_model(cfg)
            seq = sequence_input(cfg)
            if seq is not None:  # a pose lifter: keypoint sequences, not images
                row['kind'] = backbone_kind(teacher.backbone)
                return _sweep_sequence_model(row, cfg, teacher, seq, sparsity, trace_time_limit, tmp)
            stack.enter_context(spark_visible_mask(cfg))
            deploy_form = reparameterize(teacher, cfg)  # RepVGG & co: prune the fused form
            size = input_size(cfg, scope)
            # the default distillation taps are norm layers; a fused backbone has none: distil its outputs
            has_norm = any(isinstance(m, NORM_TYPES) for m in teacher.backbone.modules())
            row['kind'] = backbone_kind(teacher.backbone)
            channels = input_channels(teacher)
            x = torch.randn(1, channels, *size)
            teacher.backbone.eval()
            macs0, params0 = _macs_params(teacher.backbone, x)
            _stage(row, 'stock forward')
            ref_feats = _tensor_forward(teacher, scope, size, True)
            try:
                ref_shapes = _tensor_forward(teacher, scope, size)
            except Exception as e:  # e.g. HTC's cascade drops every random-weight proposal
                ref_shapes, row['note'] = None, f'tensor mode of the unpruned model fails too ({_one_line(e, 80)})'
            # RoI heads: how many random-weight proposals survive NMS depends on the weights
            compare_tensor = ref_shapes is not None and not hasattr(teacher, 'rpn_head')
            ckpt = osp.join(tmp, 'teacher.pth')
            torch.save(dict(state_dict=teacher.state_dict()), ckpt)
            del teacher
            _stage(row, 'prune')
            SweepL1Pruner.last = None
            try:
                distiller = MODELS.build(dict(
                    type='DataFreeDistiller', model=stock_model_cfg(cfg), teacher_checkpoint=ckpt,
                    pruner=dict(type='SweepL1Pruner', sparsity=sparsity, trace_time_limit=trace_time_limit),
                    input_size=size,
                    # a fused backbone has no norm layers (the default taps): distil its outputs
                    distill=None if has_norm else dict(out_weight=1.0)))
            except ValueError as e:
                if SweepL1Pruner.last is None:
                    raise
                row.update(status='refused', note=_one_line(e))
                return row
            student = distiller.student
            _record_prune(row, student.backbone, SweepL1Pruner.last.report, x, macs0, params0)
            _stage(row, 'distill step')
            distiller.train()
            optim = build_optim_wrapper(distiller, dict(optimizer=dict(type='SGD', lr=1e-4)))
            distiller.train_step(dict(inputs=[torch.randn(channels, *size) for _ in range(2)]), optim)
            _stage(row, 'export')
            distiller.before_export()
            paths = export_pruned_model(distiller.student, cfg, distiller.channel_spec, osp.join(tmp, 'out'))
            del distiller, student
            _stage(row, 'strict reload')
            from mmengine.config import Config
            deployed = build_stock_model(Config.fromfile(paths['config']))
            load_weights(deployed, paths['checkpoint'], strict=True)
            _stage(row, 'forward')
            feats = _tensor_forward(deployed, scope, size, True)
            if feats != ref_feats:
                raise RuntimeError(f'backbone/neck output shapes changed: {ref_feats[:3]} -> {feats[:3]}')
            if ref_shapes is not None:
                shapes = _tensor_forward(deployed, scope, size)
                if compare_tensor and shapes != ref_shapes:
                    raise RuntimeError(f'whole-model output shapes changed: {ref_shapes[:3]} -> {shapes[:3]}')
            row.update(status='yes', stage='')
            if deploy_form:
                row['note'] = f'pruned in deploy form (switch_to_deploy, deploy=True exported); {row["note"]}'.rstrip('; ')
    except _Timeout:
        row.update(status='TIMEOUT', note=f'stopped after {time_limit} s at stage {row["stage"]}')
    except Exception as e:
        row.update(status='FAIL', note=f'{row["stage"]}: {_one_line(e)}')
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        row['seconds'] = round(time.perf_counter() - start, 1)
        gc.collect()
    return row


def sweep_backbone(name: str, scope: str, cfg: dict, size: int, sparsity: float = 0.5) -> dict:
    """Prune a bare backbone built from ``cfg`` (no stock model): the fast check of the tests."""
    enter_scope(scope)
    importlib.import_module(f'{scope}.models')
    torch.manual_seed(0)
    backbone = MODELS.build(copy.deepcopy(cfg))
    backbone.eval()  # (some stock train() overrides return None)
    x = torch.randn(1, 3, size, size)
    macs0, params0 = count_macs_params(backbone, x)
    row = dict(backbone=name, status='', params_cut='', macs_cut='', note='')
    pruner = L1FilterPruner(sparsity=sparsity)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            pruner.prune(backbone, x)
    except ValueError as e:
        row.update(status='refused', note=str(e))
        return row
    with torch.no_grad():
        flatten_outputs(backbone(x))
    macs1, params1 = count_macs_params(backbone, x)
    row.update(status='yes', params_cut=f'{100 * (1 - params1 / params0):.1f} %',
               macs_cut=f'{100 * (1 - macs1 / macs0):.1f} %',
               note='kept: ' + '; '.join(sorted({r for _, r in pruner.report['skipped']})))
    return row


# -- the JSON store and the tables ---------------------------------------------------------------
def load_rows(path: str) -> dict:
    if not path or not osp.isfile(path):
        return {}
    with open(path) as f:
        return {r['backbone']: r for r in json.load(f)['rows']}


def save_rows(path: str, rows: dict, sparsity: float) -> None:
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(dict(sparsity=sparsity, rows=sorted(rows.values(), key=lambda r: r['backbone'])), f, indent=1)
    os.replace(tmp, path)


def _pct(cell: str) -> float:
    return float(cell.rstrip(' %')) if cell else 0.0


def summary(rows) -> dict:
    """Counts behind the sweep's summary line, over the classes' smallest configs (``extra``,
    ``extra_ok``: rows of ``EXTRA_CONFIGS`` and how many of them ran the whole path)."""
    extra = [r for r in rows if is_extra(r)]
    rows = [r for r in rows if not is_extra(r)]
    swept = [r for r in rows if r['status'] != 'no config']
    conv = [r for r in swept if r['kind'] == 'conv']
    conv_ok = [r for r in conv if r['status'] == 'yes' and _pct(r['params_cut']) >= 10]
    trans = [r for r in swept if r['kind'] == 'transformer']
    trans_ok = [r for r in trans if (r['status'] == 'yes' and int(r['ffn_pruned'] or 0) > 0) or r['status'] == 'refused']
    return dict(classes=len(rows), swept=len(swept), ok=sum(r['status'] == 'yes' for r in swept),
                conv=len(conv), conv_ok=len(conv_ok), transformer=len(trans), transformer_ok=len(trans_ok),
                refused=sum(r['status'] == 'refused' for r in swept),
                failed=sum(r['status'] in ('FAIL', 'TIMEOUT', 'CRASH') for r in swept),
                unknown_kind=sum(not r['kind'] for r in swept),
                extra=len(extra), extra_ok=sum(r['status'] == 'yes' for r in extra))


def _cell(text: str) -> str:
    return str(text).replace('|', '/').replace('\n', ' ')


def format_table(rows, short: bool = False) -> str:
    rows = [r for r in rows if r['status'] != 'no config']
    if short:
        lines = ['| backbone | stock config | kind | result | params cut | MACs cut | reason refused / failed |',
                 '|---|---|---|---|---|---|---|']
        for r in rows:
            why = r['note'] if r['status'] != 'yes' else ''
            lines.append(f'| {r["backbone"]} | {r["config"]} | {r["kind"] or "?"} | {r["status"]} | '
                         f'{r["params_cut"] or "—"} | {r["macs_cut"] or "—"} | {_cell(why)} |')
        return '\n'.join(lines)
    lines = ['| backbone | stock config | kind | result | groups pruned / kept | params cut | MACs cut | '
             'FFN groups | s | kept groups / reason refused or failed |', '|---|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        lines.append(f'| {r["backbone"]} | {r["config"]} | {r["kind"] or "?"} | {r["status"]} | {r["groups"]} | '
                     f'{r["params_cut"]} | {r["macs_cut"]} | {r["ffn_pruned"]} | {r["seconds"]:.0f} | {_cell(r["note"])} |')
    return '\n'.join(lines)


def summary_text(rows, sparsity: float, registered=None) -> str:
    """One paragraph of counts; ``registered``: every class key, to name the ones not swept yet."""
    s = summary(rows)
    none = sorted(r['backbone'] for r in rows if r['status'] == 'no config')
    todo = sorted(set(registered or ()) - {r['backbone'] for r in rows if not is_extra(r)})
    return (f'{len(registered) if registered else s["classes"]} backbone classes registered'
            + (f' ({len(todo)} not swept yet: {", ".join(todo)})' if todo else '')
            + f'; {s["swept"]} have a stock config and were swept at '
            f'sparsity {sparsity}: {s["ok"]} ran the whole path, {s["refused"]} were refused by the pruner, '
            f'{s["failed"]} failed elsewhere. Conv backbones: {s["conv_ok"]} of {s["conv"]} pruned with '
            f'>= 10 % of their parameters removed and every output shape intact; transformer backbones: '
            f'{s["transformer_ok"]} of {s["transformer"]} pruned their FFN hidden units or were refused in one line.'
            + (f' No stock config: {", ".join(none)}.' if none else '')
            + (f' Also swept: {s["extra"]} more stock configs of these classes ({s["extra_ok"]} ran the whole '
               'path), the rows named "class (config)".' if s['extra'] else ''))


def write_markdown(path: str, rows, sparsity: float, registered=None) -> str:
    text = (f'# Backbone sweep\n\nGenerated by `python tools/backbone_sweep.py --sparsity {sparsity}` '
            '(rows in `docs/backbone_sweep.json`): each class registered from a `models.backbones` module '
            'of mmdet, mmpose and mmpretrain, in its smallest stock config (random weights), goes through '
            'the whole path: build the stock model, prune its backbone with L1FilterPruner (uniform '
            'sparsity, residual streams and output widths kept) inside DataFreeDistiller, one distillation '
            'step, export_pruned_model, rebuild of the deploy config with the stock registry and strict '
            'load, one tensor-mode forward of the whole model with output shapes compared to the unpruned '
            'model. Input: the pose codec input size, the classification test crop, 256x256 for detection. '
            'kind: conv when conv layers hold most weights. Params/MACs of the backbone '
            '(dfbf_mm.export.count_macs_params); s: seconds of the row on this machine.\n\n'
            + summary_text(rows, sparsity, registered) + '\n\n' + format_table(rows) + '\n')
    os.makedirs(osp.dirname(path) or '.', exist_ok=True)
    with open(path, 'w') as f:
        f.write(text)
    return text


def update_readme(path: str, rows, sparsity: float, registered=None) -> None:
    """Replace the summary line and table under README_HEADING in ``path`` (nothing else)."""
    with open(path) as f:
        text = f.read()
    start = text.find(README_HEADING)
    if start < 0:
        raise ValueError(f'--readme: {path} has no "{README_HEADING}" section')
    nxt = text.find('\n## ', start + len(README_HEADING))
    end = nxt if nxt >= 0 else len(text)
    m = re.compile(r'^\| backbone \|.*\n(?:\|.*\n?)*', re.M).search(text, start, end)
    if not m:
        raise ValueError(f'--readme: no backbone table under "{README_HEADING}" in {path}')
    head = text[:m.start()]
    marker = '<!-- sweep summary -->'
    block = f'{marker}\n{summary_text(rows, sparsity, registered)}\n\n'
    i = head.find(marker, start)
    head = head[:i] + block if i >= 0 else head + block
    table = format_table(rows, short=True) + ('\n' if m.group(0).endswith('\n') else '')
    with open(path, 'w') as f:
        f.write(head + table + text[m.end():])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--sparsity', type=float, default=0.5)
    p.add_argument('--json', default='docs/backbone_sweep.json', help='rows, merged after each class')
    p.add_argument('--out', default='docs/backbone_sweep.md')
    p.add_argument('--readme', default=None, help='also rewrite the backbone table of this README')
    p.add_argument('--only', nargs='*', default=None,
                   help='SCOPE.CLASS names (or "SCOPE.CLASS (config)" rows of EXTRA_CONFIGS) to (re-)run')
    p.add_argument('--redo', action='store_true', help='re-run rows already in --json')
    p.add_argument('--time-limit', type=int, default=600, help='seconds per class')
    p.add_argument('--report-only', action='store_true', help='only rewrite --out/--readme from --json')
    args = p.parse_args(argv)
    rows = load_rows(args.json)
    if rows:
        with open(args.json) as f:
            if json.load(f).get('sparsity') != args.sparsity:
                p.error(f'--sparsity: {args.json} was made with another sparsity; pass another --json')
    classes = registered_backbones()
    known = {f'{s}.{n}' for s, n in classes}
    jobs = [(f'{s}.{n}', s, n, None) for s, n in classes] + [
        (extra_key(s, n, c), s, n, osp.join(configs_root(s), c)) for s, n, c in EXTRA_CONFIGS if f'{s}.{n}' in known]
    if not args.report_only:
        unknown = sorted(set(args.only or []) - {key for key, *_ in jobs})
        if unknown:
            p.error(f'--only: unknown backbone class(es) {unknown}; known: {sorted(key for key, *_ in jobs)}')
        for key, scope, name, extra in jobs:
            if args.only is not None and key not in args.only:
                continue
            old = rows.get(key)
            if old is not None and old['status'] != 'RUNNING' and not (args.redo or args.only):
                continue
            if old is not None and old['status'] == 'RUNNING' and not (args.redo or args.only):
                old.update(status='CRASH', note=f'the sweep process died at stage {old["stage"] or "?"} '
                           '(out of memory?)')
                save_rows(args.json, rows, args.sparsity)
                continue
            config = extra or (osp.join(configs_root(scope), old['config'].split('::', 1)[1])
                               if (old or {}).get('config') else None)
            if extra is None and (not config or not osp.isfile(config)):
                config, why = pick_config(scope, name)
            if config is None:
                rows[key] = dict(backbone=key, config='', kind='', status='no config', stage='', groups='',
                                 params_cut='', macs_cut='', ffn_pruned='', note=why, seconds=0.0)
            else:
                rows[key] = dict(backbone=key, config=short_config(scope, config), status='RUNNING', stage='',
                                 kind='', groups='', params_cut='', macs_cut='', ffn_pruned='', note='', seconds=0.0)
                save_rows(args.json, rows, args.sparsity)
                rows[key] = sweep_class(scope, name, config, args.sparsity, args.time_limit, key=key)
            save_rows(args.json, rows, args.sparsity)
            r = rows[key]
            print(f'{key}: {r["status"]} {r["params_cut"]} ({r["seconds"]} s) {r["note"][:150]}', file=sys.stderr,
                  flush=True)
    ordered = sorted((r for r in rows.values() if r['status'] != 'RUNNING'), key=lambda r: r['backbone'])
    if args.out:
        write_markdown(args.out, ordered, args.sparsity, known)
    if args.readme:
        update_readme(args.readme, ordered, args.sparsity, known)
    print(summary_text(ordered, args.sparsity, known))
    return ordered


if __name__ == '__main__':
    main()
