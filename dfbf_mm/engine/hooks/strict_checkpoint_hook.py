"""StrictCheckpointHook: a ``load_from`` checkpoint that does not fit the model is an error.

MMEngine's Runner loads ``load_from`` with ``strict=False`` and only logs missing keys and
size mismatches, so a checkpoint of another model -- or a pruned checkpoint beside the channel
spec of another export -- gives a plausible-looking wrong metric. The exporter adds this hook
to every deploy config, so the stock ``tools/test.py`` of mmdet / mmpose / mmpretrain refuses
such a pair before testing (our ``tools/test.py`` runs the same check itself, ``--non-strict``
to opt out).
"""
from typing import Optional

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from ...registry import HOOKS
from ...stock_model import check_state_dict_fits, read_checkpoint, state_dict_diff


def pruned_backbone_spec(model_cfg) -> Optional[str]:
    """The ``channel_spec`` of a ``PrunedBackbone`` model config (a path, or ``'<dict>'``), else None."""
    backbone = model_cfg.get('backbone') if isinstance(model_cfg, dict) else None
    if not isinstance(backbone, dict) or backbone.get('type') != 'PrunedBackbone':
        return None
    spec = backbone.get('channel_spec')
    return spec if isinstance(spec, str) else '<dict>'


def check_checkpoint(model, path: str, field: str = 'checkpoint', strict: bool = True,
                     channel_spec: Optional[str] = None, state: Optional[dict] = None) -> None:
    """One-line error unless the checkpoint file ``path`` is readable and fits ``model``.

    ``strict=False`` allows missing and unexpected keys (shapes must still agree, as in
    torch's ``load_state_dict``, and at least one tensor must be loaded). ``channel_spec``: the spec the model's ``PrunedBackbone`` was
    built from; a backbone that does not fit then names it as the likely culprit. ``state``:
    the checkpoint's state dict when already read (:func:`read_checkpoint`).
    """
    if state is None:
        _, state = read_checkpoint(path, field)
    model = model.module if is_model_wrapper(model) else model
    if channel_spec is not None:
        state = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state.items()}
        own = model.state_dict()
        mismatch = [k for k in state_dict_diff(state, own)[0] if k.startswith('backbone.')]
        if mismatch:
            k = mismatch[0]
            raise ValueError(
                f'model.backbone.channel_spec: {channel_spec!r} does not fit {field} {path!r}: '
                f'{len(mismatch)} backbone tensors differ in shape, e.g. {k} is '
                f'{tuple(state[k].shape)} in the checkpoint and {tuple(own[k].shape)} with the spec '
                '(use the spec exported with this checkpoint)')
    check_state_dict_fits(model, state, field, path, strict)
    if not strict and not set(state) & set(model.state_dict()):  # even a partial load loads something
        raise ValueError(f'{field}: {path!r} shares no tensor name with the model (a checkpoint of '
                         'another model?)')


@HOOKS.register_module()
class StrictCheckpointHook(Hook):
    """Before the run, check ``load_from`` against the built model (see module docstring).

    Args:
        strict: also refuse missing / unexpected keys (shape mismatches are always refused).
    """
    priority = 'VERY_HIGH'

    def __init__(self, strict: bool = True):
        self.strict = strict

    def before_run(self, runner) -> None:
        path = getattr(runner, '_load_from', None)
        if not path or '://' in str(path):  # nothing to load, or a URL MMEngine downloads
            return
        check_checkpoint(runner.model, path, 'load_from', self.strict,
                         pruned_backbone_spec(runner.cfg.get('model')))
