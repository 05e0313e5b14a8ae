"""Write a pruned stock model so the stock tools can load it: deploy config, checkpoint, spec.

The deploy config is the stock config with only ``model.backbone`` replaced by
``PrunedBackbone(backbone=<stock backbone cfg>, channel_spec=...)``, ``custom_imports`` naming
``dfbf_mm`` and ``load_from`` pointing at the checkpoint. Paths use MMEngine's
``{{ fileDirname }}`` so the output folder can be moved as a whole.
"""
import copy
import os
import os.path as osp
from typing import Optional

import torch
import torch.nn as nn
from mmengine.config import Config

from ..config_utils import plain
from ..pruning.channel_spec import FORMAT, save_channel_spec

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
    return cfg


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


def export_pruned_model(model: nn.Module, stock_cfg: Config, spec: dict, out_dir: str,
                        meta: Optional[dict] = None, name: str = 'pruned') -> dict:
    """Write ``<name>.py``, ``<name>.pth`` and ``<name>_channel_spec.json`` into ``out_dir``.

    ``model`` is the whole pruned stock model (detector / pose estimator / classifier) whose
    backbone has the shapes of ``spec``; the checkpoint holds its full state dict and, in
    ``meta``, the channel spec plus ``meta``. Returns the three paths.
    """
    if not isinstance(name, str) or not name or osp.sep in name:
        raise ValueError(f'name: {name!r} is not a plain file stem')
    if not isinstance(stock_cfg, Config):
        raise ValueError(f'stock_cfg: expected an mmengine Config, got {type(stock_cfg).__name__}')
    _check_model_fits(model, spec)
    cfg = deploy_config(stock_cfg, name)
    os.makedirs(out_dir, exist_ok=True)
    paths = dict(config=osp.join(out_dir, f'{name}.py'), checkpoint=osp.join(out_dir, f'{name}.pth'),
                 channel_spec=osp.join(out_dir, f'{name}_channel_spec.json'))
    save_channel_spec(spec, paths['channel_spec'])
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    ckpt_meta = dict(copy.deepcopy(meta or {}), channel_spec=spec)
    torch.save(dict(state_dict=state, meta=ckpt_meta), paths['checkpoint'])
    cfg.dump(paths['config'])
    return paths
