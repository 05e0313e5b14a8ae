"""What DeepInversion inverts: the whole model, or only its backbone.

A classifier is always inverted whole: its logits give a class signal (the CE term). A
detector's or pose model's head needs boxes/keypoints that data-free synthesis does not have,
so by default (``invert='auto'``) only its backbone (where the pruning happens) is inverted;
``invert='model'`` runs the whole model in tensor mode instead, so the BN statistics of the
neck and head constrain the images too (more layers remembering the training data).
"""
import itertools
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from ..schema import INVERT, TASKS  # noqa: F401  (re-exported)
from ..stock_model import build_model, get_backbone, stock_outputs
from ..utils import eval_mode, first_line, output_tensors
from .bn_statistics import bn_layers, model_name
from .patch_similarity import layer_tokens, norm_layers



class ClassifierLogits(nn.Module):
    """A stock classifier seen as ``x -> logits``: ``model(x, mode='tensor')``.

    mmpretrain's ImageClassifier returns the head's logits in tensor mode; a tuple output
    (multi-task heads) is reduced to its last element.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x, mode='tensor')
        if isinstance(out, (tuple, list)):
            out = out[-1]
        return out


class ModelTensors(nn.Module):
    """A stock detector / pose model seen as ``x -> model(x, mode='tensor')`` (raw head outputs).

    Only its BN layers matter for inversion; the outputs are returned for shape probing.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        if getattr(self.model, 'roi_head', None) is not None:
            # a two-stage detector's tensor forward needs image metas for its proposals: the
            # backbone, neck and RPN head instead (its RoI head is left out)
            neck, head = stock_outputs(self.model, output_tensors(self.model.backbone(x)), head=True)
            return tuple(neck + head)
        # mmpose's forward has no default for data_samples; mmdet's does
        return self.model(x, None, mode='tensor')


def inversion_target(model: nn.Module, task: str, invert: str = 'auto') -> nn.Module:
    """The module to invert for ``task``: logits of a classifier; a detector's / pose model's
    backbone (``invert='auto'`` or ``'backbone'``) or whole tensor-mode forward (``'model'``)."""
    if task not in TASKS:
        raise ValueError(f'task: {task!r} is not one of {", ".join(TASKS)}')
    if invert not in INVERT:
        raise ValueError(f'invert: {invert!r} is not one of {", ".join(INVERT)}')
    if task == 'classification':
        if invert == 'backbone':
            raise ValueError("invert: 'backbone' is for detection/pose; a classifier is "
                             "inverted whole (its logits carry the class signal)")
        return ClassifierLogits(model)
    if invert == 'model':
        return ModelTensors(model)
    return get_backbone(model, field='teacher_model')


def num_classes_of(model: nn.Module) -> Optional[int]:
    """Number of classes of a stock classifier's head, when it says."""
    head = getattr(model, 'head', None)
    n = getattr(head, 'num_classes', None)
    return int(n) if isinstance(n, int) and n > 0 else None


def _spatial_sizes(target: nn.Module, x: torch.Tensor, token_counts: Optional[list] = None
                   ) -> Sequence[Tuple[int, int]]:
    """(h, w) of every 4-D BN input and 4-D output of one no-grad forward of ``target``; the
    tokens each LayerNorm/GroupNorm input holds (the patch prior's) are appended to
    ``token_counts`` when given."""
    sizes = []

    def hook(_, inputs, __):
        if inputs[0].dim() == 4:
            sizes.append(tuple(inputs[0].shape[2:]))

    def count(layer, inputs, __):
        t = layer_tokens(layer, inputs[0])
        token_counts.append(0 if t is None else t.shape[1])

    handles = [m.register_forward_hook(hook) for _, m in bn_layers(target)]
    if token_counts is not None:
        handles += [m.register_forward_hook(count) for _, m in norm_layers(target)]
    try:
        with torch.no_grad():
            out = target(x)
    finally:
        for h in handles:
            h.remove()
    outs = out if isinstance(out, (tuple, list)) else [out]
    sizes += [tuple(o.shape[2:]) for o in outs if torch.is_tensor(o) and o.dim() == 4]
    return sizes


def total_stride(target: nn.Module, channels: int, device, probe: int = 256) -> Optional[int]:
    """The target's total stride, measured as probe size / smallest feature map at ``probe``.

    Returns None when it cannot be measured (no 4-D feature maps, or a fixed-size network).
    """
    try:
        sizes = _spatial_sizes(target, torch.zeros(2, channels, probe, probe, device=device))
    except RuntimeError:
        return None
    smallest = min((min(s) for s in sizes if min(s) > 0), default=None)
    return None if smallest is None else max(1, round(probe / smallest))


def size_problem(target: nn.Module, h: int, w: int, channels: int, device,
                 stride: Optional[int] = None) -> Optional[str]:
    """Why ``target`` cannot take (H, W) images, or None when it can.

    Catches images smaller than the total ``stride`` (which many networks silently turn into
    1x1 feature maps) as well as forwards that fail or produce empty feature maps.
    """
    if stride is not None and min(h, w) < stride:
        return (f'{h}x{w} is smaller than the total stride {stride} of {model_name(target)} '
                f'(its last feature map would be empty)')
    patch = not bn_layers(target) and bool(norm_layers(target))  # the patch prior's target
    token_counts = [] if patch else None
    try:
        maps = _spatial_sizes(target, torch.zeros(2, channels, h, w, device=device), token_counts)
    except RuntimeError as e:
        return f'{model_name(target)} cannot run on {h}x{w} images ({first_line(e)})'
    if any(min(s) == 0 for s in maps if len(s) == 2):
        return f'{h}x{w} images give an empty feature map in {model_name(target)}'
    if patch and max(token_counts, default=0) < 3:
        return (f'{h}x{w} images leave at most {max(token_counts, default=0)} tokens at every '
                f'LayerNorm/GroupNorm input of {model_name(target)} (the patch prior compares 3 or more)')
    return None


def check_image_size(target: nn.Module, sizes: Sequence[Tuple[int, int]], channels: int,
                     device, field: str = 'image_size') -> None:
    """One-line error when the target cannot run on images of every (H, W) in ``sizes``."""
    smallest = min(sizes, key=lambda s: min(s))
    with eval_mode(target):
        stride = total_stride(target, channels, device)
        if stride is not None and min(smallest) < stride:
            raise ValueError(f'{field}: {tuple(smallest)} is smaller than the total stride '
                             f'{stride} of {model_name(target)} (its last feature map would '
                             f'be empty); use images of at least {stride}x{stride} per phase')
        for h, w in sizes:
            problem = size_problem(target, h, w, channels, device)
            if problem:
                raise ValueError(f'{field}: {problem}')


def check_phase_sizes(target: nn.Module, image_size: Tuple[int, int], phases, channels: int,
                      device, field: str = 'image_size', max_suggestions: int = 3) -> None:
    """One-line error naming the synthesis phase whose network input ``target`` cannot take.

    ``phases``: ``(name, factor)`` per phase; the network sees ``image_size // factor`` in it.
    The error lists image sizes near ``image_size`` that work in every phase (multiples of
    the total stride times the largest factor).
    """
    h, w = image_size
    with eval_mode(target):
        stride = total_stride(target, channels, device)

        def problem_of(hh, ww):
            for name, f in phases:
                problem = size_problem(target, hh // f, ww // f, channels, device, stride)
                if problem:
                    return name, f, problem
            return None

        failure = problem_of(h, w)
        if failure is None:
            return
        name, f, problem = failure
        step = (stride or 32) * max(f for _, f in phases)
        # multiples of step around each side: two below, two above
        hs, ws = ({max(1, v // step + k) * step for k in (-1, 0, 1, 2)} for v in (h, w))
        near = sorted(((a, b) for a in hs for b in ws),
                      key=lambda s: (abs(s[0] - h) + abs(s[1] - w), -s[0] * s[1]))
        working = list(itertools.islice(
            (s for s in near if s != (h, w) and problem_of(*s) is None), max_suggestions))
    where = f'in the {name} phase the network sees {h // f}x{w // f}' if f > 1 else 'the network sees it'
    hint = (f'sizes that work in every phase: {", ".join(str(s) for s in working)}' if working
            else f'no size near it works; try multiples of {step}')
    raise ValueError(f'{field}: {tuple(image_size)} cannot be synthesised ({where}: {problem}); {hint}')


def _build_probe_model(model_cfg: dict, device: str) -> nn.Module:
    with torch.device(device):
        return build_model(model_cfg)


def check_synthesis_sizes(model_cfg: dict, task: str, synthesizer, image_size: Tuple[int, int],
                          invert: str = 'auto',
                          field: str = 'dfbf.synthetic_data.image_size') -> None:
    """Check, before any weights are loaded, that every synthesis phase of ``synthesizer`` can
    run the inversion target of the model ``model_cfg`` (in the current scope) on its images.

    The model is built on the meta device (no memory, no compute); a model that cannot be
    built or run there is checked on the CPU with random weights instead.
    """
    phases = synthesizer.network_inputs() if hasattr(synthesizer, 'network_inputs') else [('', 1)]
    channels = len((model_cfg.get('data_preprocessor') or {}).get('mean') or (0, 0, 0))
    for device in ('meta', 'cpu'):
        try:
            model = _build_probe_model(model_cfg, device)
            get_backbone(model, 'model')  # dfbf_mm prunes it
            check_phase_sizes(inversion_target(model, task, invert), image_size, phases,
                              channels, device, field)
            return
        except Exception:  # noqa: BLE001
            # the meta device lacks some kernels (and .item()): its failures are confirmed
            # on the CPU, whose errors are the answer
            if device == 'cpu':
                raise
