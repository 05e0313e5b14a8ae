"""ChannelSpec: the pruned widths of a backbone as a small JSON-able dict.

A pruned backbone cannot be rebuilt from its stock config alone; the spec records, for every
module whose tensors changed shape, the new shape of each parameter/buffer (and the old one,
to detect a spec applied to another architecture) plus the width attributes layers read at
forward time. Applying it to a freshly built stock backbone gives exactly the pruned shapes,
so a pruned state dict (stock key names) then loads with ``strict=True``::

    {"format": "dfbf_mm.channel_spec/v1", "backbone": "ResNet",
     "modules": {"layer1.0.conv1": {"shapes": {"weight": [32, 64, 1, 1]},
                                    "original_shapes": {"weight": [64, 64, 1, 1]},
                                    "attrs": {"in_channels": 64, "out_channels": 32, "groups": 1}}}}
"""
import json
import os.path as osp
from typing import Dict, Union

import torch
import torch.nn as nn

FORMAT = 'dfbf_mm.channel_spec/v1'
# Width attributes of torch layers (conv, norm, linear) that forward() or extra_repr() read.
WIDTH_ATTRS = ('in_channels', 'out_channels', 'groups', 'num_features', 'in_features',
               'out_features', 'num_channels', 'num_groups', 'normalized_shape', 'embed_dim')


def _tensors(module: nn.Module) -> Dict[str, torch.Tensor]:
    """The module's own parameters and buffers (not its children's)."""
    out = {n: p for n, p in module.named_parameters(recurse=False) if p is not None}
    out.update({n: b for n, b in module.named_buffers(recurse=False) if b is not None})
    return out


def snapshot_shapes(backbone: nn.Module) -> Dict[str, Dict[str, list]]:
    """``{module name: {tensor name: shape}}`` of every module with tensors."""
    return {name: {t: list(v.shape) for t, v in _tensors(m).items()}
            for name, m in backbone.named_modules() if _tensors(m)}


def _attrs(module: nn.Module) -> dict:
    out = {}
    for a in WIDTH_ATTRS:
        v = getattr(module, a, None)
        if isinstance(v, bool) or v is None:
            continue
        if isinstance(v, int):
            out[a] = v
        elif isinstance(v, (tuple, list)) and all(isinstance(x, int) for x in v):
            out[a] = list(v)
    return out


def extract_channel_spec(backbone: nn.Module, before: Dict[str, Dict[str, list]]) -> dict:
    """The spec of ``backbone`` relative to the shapes ``before`` (from :func:`snapshot_shapes`)."""
    modules = {}
    for name, m in backbone.named_modules():
        now = {t: list(v.shape) for t, v in _tensors(m).items()}
        old = before.get(name, {})
        changed = {t: s for t, s in now.items() if old.get(t) is not None and old[t] != s}
        if changed:
            modules[name] = dict(shapes=changed, original_shapes={t: old[t] for t in changed},
                                 attrs=_attrs(m))
    return {'format': FORMAT, 'backbone': type(backbone).__name__, 'modules': modules}


def _is_shape(v) -> bool:
    return isinstance(v, list) and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in v)


def _check_spec(spec) -> dict:
    """``spec`` if it is a well-formed spec consistent with itself, else one line naming the entry:
    every shape a list of positive ints, no larger than (and as long as) its original shape,
    attrs ints or int lists."""
    if not isinstance(spec, dict) or spec.get('format') != FORMAT or not isinstance(spec.get('modules'), dict):
        raise ValueError(f'channel_spec: not a {FORMAT} dict (got keys '
                         f'{sorted(spec)[:5] if isinstance(spec, dict) else type(spec).__name__})')
    for name, entry in spec['modules'].items():
        if not isinstance(entry, dict) or not isinstance(entry.get('shapes', {}), dict) \
                or not isinstance(entry.get('original_shapes', {}), dict) \
                or not isinstance(entry.get('attrs', {}), dict):
            raise ValueError(f'channel_spec: module {name!r}: expected a dict of shapes / '
                             'original_shapes / attrs dicts')
        orig = entry.get('original_shapes', {})
        for t, shape in entry.get('shapes', {}).items():
            if not _is_shape(shape) or (t in orig and (not _is_shape(orig[t]) or len(orig[t]) != len(shape)
                                                      or any(s > o for s, o in zip(shape, orig[t])))):
                raise ValueError(f'channel_spec: {name}.{t}: shape {shape!r} is not a list of positive '
                                 f'ints within its original shape {orig.get(t)!r}')
        for a, v in entry.get('attrs', {}).items():
            if not (isinstance(v, int) or (isinstance(v, list) and all(isinstance(x, int) for x in v))):
                raise ValueError(f'channel_spec: {name}.{a}: {v!r} is not an int or a list of ints')
    return spec


def _check_widths(name: str, m: nn.Module, entry: dict) -> None:
    """One line when a layer's width attributes would disagree with its tensors once ``entry``
    is applied: a spec whose ``attrs`` do not match its ``shapes`` would fail only at forward time."""
    shapes = {t: list(v.shape) for t, v in _tensors(m).items()}
    shapes.update(entry.get('shapes', {}))
    attr = dict(entry.get('attrs', {}))
    get = lambda a: attr.get(a, getattr(m, a, None))  # noqa: E731
    w = shapes.get('weight')
    implied = {}
    if isinstance(m, nn.modules.conv._ConvNd) and w:
        g = get('groups')
        out_ch, in_ch = (w[1] * g, w[0]) if m.transposed else (w[0], w[1] * g)
        implied = dict(out_channels=out_ch, in_channels=in_ch)
    elif isinstance(m, nn.Linear) and w:
        implied = dict(out_features=w[0], in_features=w[1])
    elif isinstance(m, nn.modules.batchnorm._NormBase) and (w or shapes.get('running_mean')):
        implied = dict(num_features=(w or shapes['running_mean'])[0])
    elif isinstance(m, nn.GroupNorm) and w:
        implied = dict(num_channels=w[0])
    out = next((implied[k] for k in ('out_channels', 'out_features', 'num_features', 'num_channels')
                if k in implied), None)
    for t in ('bias', 'running_mean', 'running_var'):
        if t in shapes and out is not None and shapes[t][0] != out:
            raise ValueError(f'channel_spec: {name}.{t} has {shapes[t][0]} entries but the layer has '
                             f'{out} channels (a spec whose shapes disagree)')
    for a, value in implied.items():
        if get(a) != value:
            raise ValueError(f'channel_spec: {name}: {a} is {get(a)} but its tensors imply {value} '
                             '(a spec whose attrs and shapes disagree)')
    if isinstance(m, nn.GroupNorm) and get('num_channels') % get('num_groups'):
        raise ValueError(f'channel_spec: {name}: num_channels {get("num_channels")} is not a multiple '
                         f'of num_groups {get("num_groups")}')


def apply_channel_spec(backbone: nn.Module, spec: dict) -> nn.Module:
    """Shrink a freshly built stock ``backbone`` in place to the shapes of ``spec``; returns it.

    Values are slices of the current tensors (the leading entries) so the result runs even
    before a checkpoint is loaded. Everything is checked before anything is changed.
    """
    spec = _check_spec(spec)
    kind = type(backbone).__name__
    if spec.get('backbone') not in (None, kind):
        raise ValueError(f'channel_spec: made for a {spec["backbone"]} backbone, not {kind}')
    modules = dict(backbone.named_modules())
    plan = []
    for name, entry in spec['modules'].items():
        if name not in modules:
            raise ValueError(f'channel_spec: module {name!r} does not exist in {kind} '
                             '(a spec of another architecture?)')
        m = modules[name]
        own = _tensors(m)
        for t, shape in entry.get('shapes', {}).items():
            cur = own.get(t)
            orig = entry.get('original_shapes', {}).get(t)
            if cur is None:
                raise ValueError(f'channel_spec: {name}.{t} does not exist in {kind}')
            if (orig is not None and list(cur.shape) != list(orig)) or len(shape) != cur.dim() or any(
                    not 0 < s <= c for s, c in zip(shape, cur.shape)):
                raise ValueError(f'channel_spec: {name}.{t} is {list(cur.shape)} in the model; the spec '
                                 f'expects {orig} to shrink to {shape} (a spec of another architecture?)')
            plan.append((m, t, shape))
        for a in entry.get('attrs', {}):
            if not hasattr(m, a):
                raise ValueError(f'channel_spec: {name} ({type(m).__name__}) has no attribute {a!r}')
        _check_widths(name, m, entry)
    for m, t, shape in plan:
        cur = getattr(m, t)
        new = cur.detach()[tuple(slice(0, s) for s in shape)].clone()
        if isinstance(cur, nn.Parameter):
            setattr(m, t, nn.Parameter(new, requires_grad=cur.requires_grad))
        else:
            m._buffers[t] = new
    for name, entry in spec['modules'].items():
        for a, v in entry.get('attrs', {}).items():
            setattr(modules[name], a, tuple(v) if isinstance(v, list) else v)
    return backbone


def sub_spec(spec: dict, prefix: str, kind: str) -> dict:
    """The spec of the submodule ``prefix`` (e.g. 'backbone', of class ``kind``) out of the spec
    of a whole model (module names ``'<prefix>.<name>'``)."""
    spec = _check_spec(spec)
    head = prefix.rstrip('.') + '.'
    modules = {n[len(head):]: e for n, e in spec['modules'].items() if n.startswith(head)}
    return {'format': FORMAT, 'backbone': kind, 'root': 'backbone', 'modules': modules}


def save_channel_spec(spec: dict, path: str) -> str:
    """Write ``spec`` as JSON to ``path``; returns the path."""
    _check_spec(spec)
    with open(path, 'w') as f:
        json.dump(spec, f, indent=1, sort_keys=True)
    return path


def load_channel_spec(spec_or_path: Union[str, dict]) -> dict:
    """A spec dict from a dict or a JSON file path (one-line error when missing/invalid)."""
    if isinstance(spec_or_path, dict):
        return _check_spec(spec_or_path)
    if not isinstance(spec_or_path, str) or not osp.isfile(spec_or_path):
        raise FileNotFoundError(f'channel_spec: file not found: {spec_or_path!r}')
    try:
        with open(spec_or_path) as f:
            spec = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f'channel_spec: {spec_or_path!r} is not valid JSON ({e})') from None
    return _check_spec(spec)
