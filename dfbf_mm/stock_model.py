"""The user's stock OpenMMLab model: which package it belongs to, building it, loading weights.

Everything in dfbf_mm starts from a stock mmdet / mmpose / mmpretrain config and a checkpoint;
these helpers are the one place that turns them into a model and says clearly what is wrong.
"""
import copy
import os.path as osp
from typing import List, Optional, Sequence, Tuple

import torch
from mmengine.config import Config, ConfigDict
from mmengine.registry import DefaultScope, init_default_scope
from mmengine.runner.checkpoint import _load_checkpoint, _load_checkpoint_to_model

from .config_utils import plain
from .registry import MODELS
from .utils import first_line, output_tensors

SUPPORTED_SCOPES = ('mmdet', 'mmpose', 'mmpretrain')
TASK_OF_SCOPE = {'mmdet': 'detection', 'mmpose': 'pose', 'mmpretrain': 'classification'}


def config_scope(cfg: Config) -> str:
    """The OpenMMLab package a config belongs to, from its ``default_scope``."""
    scope = cfg.get('default_scope')
    if scope not in SUPPORTED_SCOPES:
        raise ValueError(f'default_scope: {scope!r} is not supported; the config must belong to '
                         f'one of {", ".join(SUPPORTED_SCOPES)} (set default_scope in it)')
    return scope


def enter_scope(scope: str) -> None:
    """Make ``scope`` the default registry scope (so stock type names resolve)."""
    current = DefaultScope.get_current_instance()
    if current is None or current.scope_name != scope:
        init_default_scope(scope)


def stock_model_cfg(cfg: Config) -> dict:
    """``cfg.model`` as a plain dict, with a top-level ``data_preprocessor`` merged in.

    mmpretrain configs keep ``data_preprocessor`` at top level and MMEngine's Runner moves it
    into the model; we do the same so a model built here normalises like the stock one.
    """
    if 'model' not in cfg:
        raise ValueError('model: the config has no `model` field')
    model = dict(plain(cfg.model))
    if cfg.get('data_preprocessor') is not None:
        model.setdefault('data_preprocessor', dict(plain(cfg.data_preprocessor)))
    return model


def build_model(model_cfg: dict) -> torch.nn.Module:
    """``MODELS.build`` of a model config as the stock tools build it: from a ``ConfigDict``.

    Stock models read nested options as attributes (mmdet's ``TwoStageDetector`` takes
    ``train_cfg.rpn``), which a plain dict does not have.
    """
    return MODELS.build(ConfigDict(copy.deepcopy(model_cfg)))


def build_stock_model(cfg: Config) -> torch.nn.Module:
    """Build the model of a stock config from the registry of its package."""
    enter_scope(config_scope(cfg))
    return build_model(stock_model_cfg(cfg))


def read_checkpoint(checkpoint: str, field: str = 'checkpoint') -> Tuple[dict, dict]:
    """``(checkpoint dict, its state_dict)`` of the file ``checkpoint``, or one line naming
    ``field`` (missing, unreadable or truncated file, no state dict)."""
    if not checkpoint or not osp.isfile(checkpoint):
        raise FileNotFoundError(f'{field}: file not found: {checkpoint!r}')
    try:
        ckpt = _load_checkpoint(checkpoint, map_location='cpu')
    except Exception as e:  # corrupt file, not a torch checkpoint
        raise ValueError(f'{field}: {checkpoint!r} is not a readable checkpoint '
                         f'({type(e).__name__}: {first_line(e)})') from None
    state = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f'{field}: {checkpoint!r} holds no state_dict')
    return ckpt, state


def load_weights(model: torch.nn.Module, checkpoint: str, field: str = 'checkpoint',
                 strict: bool = True) -> dict:
    """Load ``checkpoint`` into ``model``; mismatches raise one line naming ``field``.

    Returns the loaded checkpoint dict (its ``meta`` may carry a channel spec).
    """
    ckpt, state = read_checkpoint(checkpoint, field)
    check_state_dict_fits(model, state, field, checkpoint, strict)
    _load_checkpoint_to_model(model, ckpt, strict=False)
    return ckpt


def build_teacher(model_cfg: dict, checkpoint: str,
                  field: str = 'dfbf.teacher_checkpoint') -> torch.nn.Module:
    """The trained model of ``model_cfg`` with ``checkpoint`` loaded strictly (a backbone
    is required: it is what dfbf_mm prunes)."""
    teacher = build_model(model_cfg)
    get_backbone(teacher, 'model')
    load_weights(teacher, checkpoint, field)
    return teacher


def state_dict_diff(state: dict, own: dict) -> Tuple[list, list, list]:
    """``(shape_mismatch, missing, unexpected)`` keys of ``state`` against the reference ``own``:
    keys in both whose shapes differ, keys of ``own`` that ``state`` lacks (BN
    ``num_batches_tracked`` counters excepted) and keys of ``state`` that ``own`` lacks."""
    shape_mismatch = [k for k, v in state.items()
                      if k in own and hasattr(v, 'shape') and tuple(v.shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in state and not k.endswith('num_batches_tracked')]
    unexpected = [k for k in state if k not in own]
    return shape_mismatch, missing, unexpected


def check_state_dict_fits(model: torch.nn.Module, state: dict, field: str, source: str,
                          strict: bool = True) -> None:
    """Raise one line when ``state`` is not a checkpoint of ``model``'s architecture."""
    state = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state.items()}
    own = model.state_dict()
    shape_mismatch, missing, unexpected = state_dict_diff(state, own)
    if shape_mismatch:
        k = shape_mismatch[0]
        raise ValueError(
            f'{field}: {source!r} does not match the model: {len(shape_mismatch)} tensors differ '
            f'in shape, e.g. {k} is {tuple(state[k].shape)} in the checkpoint and '
            f'{tuple(own[k].shape)} in the model (a checkpoint of another architecture or width?)')
    if strict and (missing or unexpected):
        what = f'missing {missing[0]}' if missing else f'unexpected {unexpected[0]}'
        raise ValueError(
            f'{field}: {source!r} does not match the model: {len(missing)} missing and '
            f'{len(unexpected)} unexpected keys, e.g. {what} (a checkpoint of another model?)')


def normalization(model: torch.nn.Module) -> Tuple[torch.Tensor, torch.Tensor, bool]:
    """``(mean, std, bgr_to_rgb)`` of the model's data preprocessor, as (C,1,1) tensors.

    The model sees ``(pixel - mean) / std`` with pixels in [0, 255]; models without a
    normalising preprocessor get mean 0, std 1.
    """
    pre = getattr(model, 'data_preprocessor', None)
    mean = getattr(pre, 'mean', None)
    std = getattr(pre, 'std', None)
    if mean is None or std is None or not getattr(pre, '_enable_normalize', True):
        mean, std = torch.zeros(3, 1, 1), torch.ones(3, 1, 1)
    # mmengine/mmdet/mmpose preprocessors call it _channel_conversion, mmpretrain's to_rgb
    bgr_to_rgb = bool(getattr(pre, '_channel_conversion', False) or getattr(pre, 'to_rgb', False))
    return mean.detach().float().cpu().view(-1, 1, 1), std.detach().float().cpu().view(-1, 1, 1), bgr_to_rgb


def input_channels(model: torch.nn.Module) -> int:
    """Channels of the model's input: its data preprocessor's (3 without one; 1 for MNIST's LeNet)."""
    return int(normalization(model)[0].shape[0])


def pixel_range(model: torch.nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
    """Valid range of a normalised input, per channel (C,1,1): pixels 0 and 255 mapped."""
    mean, std, _ = normalization(model)
    return (0 - mean) / std, (255 - mean) / std


def get_backbone(model: torch.nn.Module, field: str = 'model') -> torch.nn.Module:
    """The model's ``backbone`` submodule, or a one-line error."""
    backbone = getattr(model, 'backbone', None)
    if not isinstance(backbone, torch.nn.Module):
        raise ValueError(f'{field}: {type(model).__name__} has no `backbone` submodule; dfbf_mm '
                         'prunes the backbone of mmdet/mmpose/mmpretrain models')
    return backbone


# where the dense head sits: a two-stage detector's RPN before its `roi_head`, one-stage
# detectors' `bbox_head`, mmpose / mmpretrain `head`
HEAD_ATTRS = ('rpn_head', 'bbox_head', 'head')


def dense_head(model: torch.nn.Module) -> Optional[torch.nn.Module]:
    """The head that runs on the neck's outputs alone, or None."""
    if hasattr(model, 'decoder') or hasattr(model, 'encoder'):
        return None  # DETR family: the head reads the transformer's queries, not the features
    for attr in HEAD_ATTRS:
        head = getattr(model, attr, None)
        if isinstance(head, torch.nn.Module):
            return head
    return None


def stock_outputs(model: torch.nn.Module, backbone_outs: Sequence[torch.Tensor], head: bool):
    """(neck outputs, head outputs) of ``model`` on ``backbone_outs``, each a list of tensors
    (the neck's are the backbone's when the model has no neck; head: [] unless asked)."""
    feats = tuple(backbone_outs)
    neck = getattr(model, 'neck', None)
    if isinstance(neck, torch.nn.Module):
        feats = neck(feats)
    neck_outs = output_tensors(feats)
    head_outs: List[torch.Tensor] = []
    if head:
        head_outs = output_tensors(dense_head(model)(feats if isinstance(feats, (tuple, list))
                                                     else (feats,)))
    return neck_outs, head_outs
