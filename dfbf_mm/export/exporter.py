"""Write a pruned stock model so the stock tools can load it: deploy config, checkpoint, spec.

The deploy config is the stock config with only ``model.backbone`` replaced by
``PrunedBackbone(backbone=<stock backbone cfg>, channel_spec=...)``, ``custom_imports`` naming
``dfbf_mm``, ``load_from`` pointing at the checkpoint and a ``StrictCheckpointHook`` (the
checkpoint must fit the model, see that hook). Paths use MMEngine's
``{{ fileDirname }}`` so the output folder can be moved as a whole.

Outside the backbone, a pruned ``StackedLinearClsHead`` (Paoding prunes its hidden Linear
layers) gets its ``mid_channels`` rewritten to the pruned widths: a stock head config again.
Before anything is written, the deploy model is built in memory and its state-dict keys and
shapes are compared with the pruned model's, so what is exported loads with ``strict=True``.
"""
import copy
import os
import os.path as osp
from typing import Optional

import torch
import torch.nn as nn
from mmengine.config import Config

from ..config_utils import plain
from ..pruning.channel_spec import (FORMAT, extract_channel_spec, save_channel_spec,
                                    snapshot_shapes, sub_spec)
from ..registry import MODELS

_DIR = '{{ fileDirname }}'


def deploy_config(stock_cfg: Config, name: str = 'pruned') -> Config:
    """The stock config with the pruned backbone, dfbf_mm imported and the checkpoint preloaded."""
    if 'model' not in stock_cfg or not isinstance(stock_cfg.model.get('backbone'), dict):
        raise ValueError('stock_cfg: the config has no model.backbone to replace')
    cfg = copy.deepcopy(stock_cfg)
    backbone = plain(cfg.model.backbone)
    if backbone.get('type') == 'PrunedBackbone':
        raise ValueError('stock_cfg: model.backbone is already a PrunedBackbone; pass the stock config')
    # Pretrained-weight initialisation would download/overwrite weights the checkpoint provides.
    backbone.pop('init_cfg', None)
    backbone.pop('pretrained', None)
    cfg.model.backbone = dict(type='PrunedBackbone', backbone=backbone,
                              channel_spec=f'{_DIR}/{name}_channel_spec.json')
    imports = list((cfg.get('custom_imports') or {}).get('imports', []))
    cfg.custom_imports = dict(imports=imports + [i for i in ['dfbf_mm'] if i not in imports],
                              allow_failed_imports=False)
    cfg.load_from = f'{_DIR}/{name}.pth'
    # MMEngine loads load_from non-strictly; a checkpoint that does not fit (e.g. beside the
    # channel spec of another export) must stop the stock tools instead of giving a wrong metric.
    hooks = list(cfg.get('custom_hooks') or [])
    if not any(isinstance(h, dict) and h.get('type') == 'StrictCheckpointHook' for h in hooks):
        hooks.append(dict(type='StrictCheckpointHook'))
    cfg.custom_hooks = hooks
    return cfg


# stock heads whose hidden widths a config field sets: type -> (field, hidden Linear widths)
HIDDEN_WIDTH_HEADS = {
    'StackedLinearClsHead': ('mid_channels', lambda h: [b.fc.out_features for b in h.layers[:-1]]),
}


def pruned_head_config(head: nn.Module, head_cfg: dict) -> dict:
    """``head_cfg`` with the hidden widths of the (pruned) ``head`` written into it."""
    head_cfg = plain(head_cfg)
    rule = HIDDEN_WIDTH_HEADS.get(head_cfg.get('type'))
    if rule is not None and type(head).__name__ == head_cfg['type']:
        field, widths = rule
        head_cfg[field] = widths(head)
    return head_cfg


def backbone_spec(model: nn.Module, stock_cfg: Config, spec: Optional[dict] = None) -> dict:
    """The channel spec of ``model.backbone``.

    ``spec``: a backbone spec (returned as is), the spec of the whole model (``PaodingPruner``
    on a classifier: names ``'backbone.<name>'``; its backbone part is taken) or None (derived
    by comparing the backbone with a freshly built stock one).
    """
    backbone = getattr(model, 'backbone', None)
    if not isinstance(backbone, nn.Module):
        raise ValueError(f'model: {type(model).__name__} has no `backbone` submodule')
    kind = type(backbone).__name__
    if spec is None:
        from ..stock_model import config_scope, enter_scope
        enter_scope(config_scope(stock_cfg))
        stock = MODELS.build(plain(stock_cfg.model.backbone))
        spec = extract_channel_spec(backbone, snapshot_shapes(stock))
        spec['backbone'] = kind
        return spec
    if isinstance(spec, dict) and spec.get('root') == 'model':
        return sub_spec(spec, 'backbone', kind)
    return spec


def _check_model_fits(model: nn.Module, spec: dict) -> None:
    backbone = getattr(model, 'backbone', None)
    if not isinstance(backbone, nn.Module):
        raise ValueError(f'model: {type(model).__name__} has no `backbone` submodule')
    if not isinstance(spec, dict) or spec.get('format') != FORMAT:
        raise ValueError(f'spec: not a {FORMAT} dict')
    modules = dict(backbone.named_modules())
    for mname, entry in spec['modules'].items():
        m = modules.get(mname)
        for t, shape in entry['shapes'].items():
            cur = getattr(m, t, None) if m is not None else None
            if not isinstance(cur, torch.Tensor) or list(cur.shape) != list(shape):
                raise ValueError(f'spec: {mname}.{t} is {shape} in the spec but '
                                 f'{list(cur.shape) if isinstance(cur, torch.Tensor) else "absent"} '
                                 'in the model (spec of another pruning?)')


def _check_rebuild(cfg: Config, spec: dict, model: nn.Module) -> None:
    """Build the deploy model in memory; its state dict must match ``model``'s key for key."""
    from ..stock_model import build_stock_model, state_dict_diff
    cfg = copy.deepcopy(cfg)
    cfg.model.backbone.channel_spec = spec
    rebuilt = build_stock_model(cfg).state_dict()
    own = model.state_dict()
    shape_mismatch, extra, not_rebuilt = state_dict_diff(own, rebuilt)
    if not_rebuilt:
        raise ValueError(f'model: {not_rebuilt[0]} is not rebuilt by the deploy config (a module the stock '
                         'config does not build, e.g. a BN folded away?)')
    if shape_mismatch:
        k = shape_mismatch[0]
        raise ValueError(f'model: {k} is {tuple(own[k].shape)} but {tuple(rebuilt[k].shape)} when rebuilt '
                         'from the deploy config (only model.backbone, via the channel spec, and '
                         f'the hidden widths of {", ".join(HIDDEN_WIDTH_HEADS)} are rewritten)')
    if extra:
        raise ValueError(f'model: the deploy config builds {extra[0]}, which the pruned model lacks '
                         f'({len(extra)} such tensors)')


def export_pruned_model(model: nn.Module, stock_cfg: Config, spec: Optional[dict], out_dir: str,
                        meta: Optional[dict] = None, name: str = 'pruned') -> dict:
    """Write ``<name>.py``, ``<name>.pth`` and ``<name>_channel_spec.json`` into ``out_dir``.

    ``model`` is the whole pruned stock model (detector / pose estimator / classifier) whose
    backbone has the shapes of ``spec`` (see :func:`backbone_spec` for the accepted forms); the
    checkpoint holds its full state dict and, in ``meta``, the backbone's channel spec plus
    ``meta``. Returns the three paths.
    """
    if not isinstance(name, str) or not name or osp.sep in name:
        raise ValueError(f'name: {name!r} is not a plain file stem')
    if not isinstance(stock_cfg, Config):
        raise ValueError(f'stock_cfg: expected an mmengine Config, got {type(stock_cfg).__name__}')
    spec = backbone_spec(model, stock_cfg, spec)
    _check_model_fits(model, spec)
    cfg = deploy_config(stock_cfg, name)
    if isinstance(cfg.model.get('head'), dict) and isinstance(getattr(model, 'head', None), nn.Module):
        cfg.model.head = pruned_head_config(model.head, cfg.model.head)
    _check_rebuild(cfg, spec, model)
    os.makedirs(out_dir, exist_ok=True)
    paths = dict(config=osp.join(out_dir, f'{name}.py'), checkpoint=osp.join(out_dir, f'{name}.pth'),
                 channel_spec=osp.join(out_dir, f'{name}_channel_spec.json'))
    save_channel_spec(spec, paths['channel_spec'])
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    ckpt_meta = dict(copy.deepcopy(meta or {}), channel_spec=spec)
    torch.save(dict(state_dict=state, meta=ckpt_meta), paths['checkpoint'])
    cfg.dump(paths['config'])
    return paths
