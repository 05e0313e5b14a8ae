"""The ``dfbf`` block of a config: every key, its default, what it allows and its one-line error.

This is the only place that knows the block. ``read_dfbf(block)`` returns it validated with
every default filled in; the engine's config rewrite, the tools and the benchmarks read it
through here, and the stages take the values it returns. A sub-block is a :class:`Block` of
:class:`Option`; an option's ``parse`` turns a config value into the value used (``(H, W)``
from an int, a tuple from a list) or raises :class:`Invalid` with the reason, which
:meth:`Block.read` prefixes with the option's path (``dfbf.synthetic_data.image_size: ...``).

Configs of parts that a registry builds (``pruner``, ``synthesizer``, ``distill.loss``,
``sp_loss.type``) are built once here as a check, so a bad setting of theirs fails when the
config is read, named by its path, and not minutes later.

``python tools/options_table.py --doc docs/configuration.md`` writes the options table of the docs from
:data:`BLOCKS`; a test checks the two agree.
"""
import copy
import inspect
import re
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Tuple

from .config_utils import check_keys, plain
from .registry import MODELS, PRUNERS, SYNTHESIZERS
from .utils import first_line

# allowed values the stages share
TASKS = ('classification', 'detection', 'pose')
INVERT = ('auto', 'backbone', 'model')
TRAIN_DATA = ('synthetic', 'noise', 'real')
BN_POLICIES = ('update', 'frozen')
SP_TAPS = ('features', 'layers')


class Invalid(ValueError):
    """A value an option does not allow; the message says why (the path is added by Block;
    ``key`` names the part of the value at fault, e.g. ``type``)."""

    def __init__(self, message: str, key: Optional[str] = None):
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class Option:
    """One key of a block: ``default`` (copied), ``doc`` for the options table, ``parse`` (value ->
    value used, raising :class:`Invalid`), ``required`` (a falsy value is an error)."""
    key: str
    default: Any
    doc: str
    parse: Optional[Callable[[Any], Any]] = None
    required: bool = False


class Block:
    """A sub-block of ``dfbf``: its options in order; ``optional`` blocks read as None when
    absent or empty (``overparam``, ``sp_loss``: off unless asked for)."""

    def __init__(self, path: str, doc: str, options: Sequence[Option], optional: bool = False):
        self.path, self.doc, self.options, self.optional = path, doc, tuple(options), optional
        self.keys = tuple(o.key for o in self.options)

    def defaults(self) -> dict:
        return {o.key: copy.deepcopy(o.default) for o in self.options}

    def read_option(self, key: str, value):
        """One option of the block, checked alone (a tool that needs only that part)."""
        option = {o.key: o for o in self.options}[key]
        return self._parse(option, copy.deepcopy(option.default) if value is None else plain(value))

    def read(self, value) -> Optional[dict]:
        """``value`` checked (unknown keys, each option's parse) with the defaults filled in."""
        if value is not None and not isinstance(value, dict):
            raise ValueError(f'{self.path}: must be a dict of {", ".join(self.keys)}, got {value!r}')
        if self.optional and not value:
            return None
        value = check_keys(plain(value), self.keys, self.path)
        return {o.key: self._parse(o, value[o.key] if o.key in value else copy.deepcopy(o.default))
                for o in self.options}

    def _parse(self, o: Option, v):
        if o.required and (v is None or v == ''):
            raise ValueError(f'{self.path}.{o.key}: required ({o.doc})')
        try:
            return o.parse(v) if o.parse is not None else v
        except Invalid as e:
            where = f'{self.path}.{o.key}' + (f'.{e.key}' if e.key else '')
            raise ValueError(f'{where}: {e}') from None


# ------------------------------------------------------------------ value parsers

def one_of(*choices):
    def parse(v):
        if v not in choices:
            raise Invalid(f'{v!r} is not one of {", ".join(map(str, choices))}')
        return v
    return parse


def integer(minimum: Optional[int] = None, allow_none: bool = False, why: str = ''):
    def parse(v):
        if v is None and allow_none:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or (minimum is not None and v < minimum):
            bound = f' >= {minimum}' if minimum is not None else ''
            reason = f' ({why})' if why else ''
            raise Invalid(f'must be an integer{bound}{" or None" if allow_none else ""}{reason}, got {v!r}')
        return v
    return parse


def number(minimum: float = 0.0, strict: bool = False):
    def parse(v):
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (
            v > minimum if strict else v >= minimum)
        if not ok:
            raise Invalid(f'must be a number {">" if strict else ">="} {minimum:g}, got {v!r}')
        return float(v)
    return parse


def boolean(v):
    if not isinstance(v, bool):
        raise Invalid(f'must be True or False, got {v!r}')
    return v


def image_size(v) -> Tuple[int, int]:
    """``(H, W)`` from an int or a pair of positive ints."""
    hw = (v, v) if isinstance(v, int) and not isinstance(v, bool) else v
    if (not isinstance(hw, (tuple, list)) or len(hw) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in hw)):
        raise Invalid(f'must be (H, W) positive integers or one positive integer, got {v!r}')
    return tuple(hw)


def int_list(v):
    if not isinstance(v, (tuple, list)) or not all(isinstance(s, int) and s >= 0 for s in v):
        raise Invalid(f'must be a list of epoch numbers, got {v!r}')
    return list(v)


def patterns(allow: Sequence[str] = ()):
    """None, one of ``allow`` or a list of module-name patterns (see ``utils.name_matches``)."""
    def parse(v):
        if v is None or v in allow:
            return v
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, (tuple, list)) or not all(isinstance(p, str) and p for p in v):
            extra = f'{", ".join(map(repr, allow))} or ' if allow else ''
            raise Invalid(f'must be {extra}a list of module name patterns, got {v!r}')
        return list(v)
    return parse


def optional_str(v):
    if v is not None and not isinstance(v, str):
        raise Invalid(f'must be a path (str) or None, got {v!r}')
    return v


def file_stem(v):
    if not isinstance(v, str) or not v or '/' in v or '\\' in v:
        raise Invalid(f'must be a non-empty name without a path separator, got {v!r}')
    return v


def registered(registry, required: bool = True):
    """A config dict whose ``type`` is registered in ``registry`` (built later)."""
    def parse(v):
        if v is None and not required:
            return None
        if not isinstance(v, dict):
            raise Invalid(f'must be a {registry.name} config, dict(type=...), got {v!r}')
        name = v.get('type')
        if not isinstance(name, str) or registry.get(name) is None:
            raise Invalid(f'{name!r} is not a registered {registry.name}; registered: '
                          f'{", ".join(sorted(registry.module_dict))}', key='type')
        return plain(v)
    return parse


def build_checked(registry, cfg: dict, path: str, **defaults):
    """``registry.build(cfg)``; a ValueError of the built class comes back as one line under
    ``path`` (``dfbf.synthesizer.iterations: ...``)."""
    cfg = dict(cfg, **{k: v for k, v in defaults.items() if k not in cfg})
    if registry in (PRUNERS, SYNTHESIZERS):
        cfg['_scope_'] = 'dfbf_mm'  # our own registries; the config's default scope is mm*'s
    try:
        return registry.build(cfg)
    except (ValueError, TypeError) as e:
        # MMEngine prefixes "class `X` in file.py: " to errors raised while building
        message = re.sub(r'^class `\w+` in [^:]+: ', '', first_line(e, 1000))
        unknown = re.search(r"unexpected keyword argument '(\w+)'", message)
        if unknown:
            params = inspect.signature(registry.get(cfg['type'])).parameters
            allowed = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
            message = (f'{unknown.group(1)}: not an argument of {cfg["type"]}; arguments: '
                       f'{", ".join(allowed)}')
        elif isinstance(e, TypeError):
            raise
        raise ValueError(message if message.startswith(path) else f'{path}.{message}') from None


# ------------------------------------------------------------------ the blocks

SYNTHETIC_DATA = Block('dfbf.synthetic_data', 'the synthetic training images', [
    Option('num_images', 1600, 'images to synthesise (the dataset length)', integer(1)),
    Option('batch_size', 16, 'images optimised together', integer(
        2, why='per-batch BN statistics are undefined for 1 image')),
    Option('train_batch_size', None, 'images per fine-tuning step and rank (default: batch_size; '
           'synthesis batches and training batches need not match)', integer(1, allow_none=True)),
    Option('image_size', (256, 256), '(H, W) of the images, or one int', image_size),
    Option('seed', 0, 'base seed; batch b has its own stream', integer()),
    Option('cache_dir', None, 'cache root (default: <work_dir>/synthetic_cache)', optional_str),
    Option('num_classes', None, "classes of the balanced CE labels (default: the classifier head's)",
           integer(1, allow_none=True)),
    Option('invert', 'auto', "what is inverted: 'auto' (a detector's / pose model's backbone, a "
           "whole classifier), 'backbone', or 'model' (the whole forward: the neck's and head's "
           "norm layers too)",
           one_of(*INVERT)),
])

DISTILL = Block('dfbf.distill', 'the feature-mimicking loss', [
    Option('taps', None, 'module name patterns supervised (default: the unpruned-width norm layers)',
           patterns()),
    Option('bn', 'update', "'update': student BN statistics adapt to the synthetic data; "
           "'frozen': they stay the teacher's", one_of(*BN_POLICIES)),
    Option('loss', dict(type='FeatureMimicLoss'), 'a MODELS config of the loss, called as '
           'loss(student_taps, teacher_taps, student_outs, teacher_outs) -> dict of loss terms',
           registered(MODELS)),
    Option('distance', None, "FeatureMimicLoss distance: 'l1' (default), 'mse', 'huber', "
           "'smooth_l1' (shorthand for loss.distance)"),
    Option('weights', None, 'FeatureMimicLoss depth weights: preset 0..11 (default 2) or (a, b) '
           'for w_i = a + b*i/N (shorthand for loss.weights)'),
    Option('out_weight', None, 'FeatureMimicLoss weight of the loss on the backbone outputs '
           '(default 0; shorthand for loss.out_weight)'),
    Option('neck_weight', None, 'FeatureMimicLoss weight of the loss on the stock neck outputs, the '
           'frozen neck run on each backbone (default 0; shorthand for loss.neck_weight)'),
])
LOSS_SHORTHANDS = ('distance', 'weights', 'out_weight', 'neck_weight')

SCHEDULE = Block('dfbf.schedule', 'fine-tuning: SGD + MultiStep (the reference)', [
    Option('epochs', 5, 'epochs over the synthetic images', integer(1)),
    Option('lr', 0.01, 'SGD learning rate', number(0, strict=True)),
    Option('lr_steps', [3], 'epochs at which the lr is multiplied by gamma', int_list),
    Option('gamma', 0.1, 'lr factor at each step', number(0, strict=True)),
    Option('momentum', 0.9, 'SGD momentum', number()),
    Option('weight_decay', 5e-4, 'SGD weight decay', number()),
    Option('val_interval', None, 'epochs between validations (default: at the end)',
           integer(1, allow_none=True)),
    Option('checkpoint_interval', 1, 'epochs between checkpoints', integer(1)),
])

OVERPARAM = Block('dfbf.overparam', 'LOP: the pruned layers fine-tuned as linear chains, merged '
                  'back exactly for validation and export (off unless given)', [
    Option('ratio', 1, 'expansion ratio r of the 1x1 -> kxk -> 1x1 chain', integer(1)),
    Option('include', None, 'layer name patterns expanded (default: the layers pruning changed)',
           patterns()),
    Option('exclude', None, 'layer name patterns left plain', patterns()),
    Option('seed', 0, 'seed of the orthogonal factors', integer()),
], optional=True)

SP_LOSS = Block('dfbf.sp_loss', 'similarity-preserving KD added to the loss (off unless given)', [
    Option('type', 'SimilarityPreservingLoss', 'the MODELS type of the loss, called as '
           'loss(student_feats, teacher_feats) -> tensor'),
    Option('weight', 1.0, 'its weight (gamma)', number()),
    Option('taps', 'features', "'features' (the distill taps), 'layers' (outputs of the pruned "
           "layers) or module name patterns", patterns(SP_TAPS)),
], optional=True)

EXPORT = Block('dfbf.export', 'what is written to <work_dir>/export after training', [
    Option('out_dir', 'export', 'folder under the work dir', file_stem),
    Option('name', 'pruned', 'file stem of the deploy config, checkpoint and channel spec',
           file_stem),
    Option('profile', True, 'params / FLOPs / CPU latency table of teacher vs student', boolean),
    Option('onnx', False, 'also export to ONNX and check it in onnxruntime', boolean),
])

def fraction(low_open: bool = False):
    """A number in [0, 1] (``low_open``: in (0, 1])."""
    def parse(v):
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (
            0 < v <= 1 if low_open else 0 <= v <= 1)
        if not ok:
            raise Invalid(f'must be a number in {"(0, 1]" if low_open else "[0, 1]"}, got {v!r}')
        return float(v)
    return parse


VIEWS = Block('dfbf.views', 'random augmented views of each training batch, the same view to teacher '
              'and student (the teacher features are computed on it): True for these defaults or a '
              'dict of them (off unless given; docs/augmented_views.md)', [
    Option('flip', 0.5, 'probability of a horizontal flip', fraction()),
    Option('crop', 0.5, 'smallest area fraction of a random resized crop, resized back to the '
           'input size (1: no crop)', fraction(low_open=True)),
    Option('jitter', 0.2, 'brightness / contrast factors in [1 - jitter, 1 + jitter] (0: none)',
           fraction()),
    Option('mix', None, "None, 'mixup' or 'cutmix': mix an image with another of the batch",
           one_of(None, 'mixup', 'cutmix')),
    Option('mix_prob', 0.5, 'probability that an image is mixed (weight from U(0, 1))', fraction()),
    Option('seed', 0, 'seed of the draws; step t of rank r has its own stream', integer()),
], optional=True)


def switchable(block: Block):
    """The parser of an optional block that can also be switched on with its defaults:
    None / False (off), True (the defaults) or a dict of options."""
    def parse(v):
        if v is None or v is False:
            return None
        return block.read(block.defaults() if v is True else v)
    return parse


views_block = switchable(VIEWS)


ONLINE = Block('dfbf.online', 'online synthesis: the image pool grows during fine-tuning, new '
               'batches made against the current student by the GeneratorSynthesizer stream (off unless '
               'given; True: these defaults; docs/synthesis_methods.md)', [
    Option('interval', 2, 'epochs between rounds of new batches', integer(1)),
    Option('batches', 1, 'batches added per round (all ranks together)', integer(1)),
    Option('begin', 2, 'epoch (0-based) of the first round', integer(0)),
    Option('adv_weight', 1.0, 'weight of the adversarial term: the feature distance between teacher '
           'and current student, maximised (0: off)', number()),
    Option('grid_images', 64, 'images of each round written to <work_dir>/online_images.png (0: none)',
           integer(0)),
], optional=True)

DFBF = Block('dfbf', 'the experiment', [
    Option('teacher_checkpoint', None, 'your trained, unpruned model', optional_str, required=True),
    Option('pruner', None, "a PRUNERS config: L1FilterPruner(sparsity, norm=1, layer_dependent, "
           "overrides, ignore, min_channels, round_to, trace_time_limit=60, target=dict(macs=f) "
           "(or params=, latency=: the cost fraction to remove; the sparsity is then found), "
           "ranking='uniform' or 'global' (Torch-Pruning's global pruning, as pruning tools offer it; "
           "on the digits benchmarks level with 'uniform' for cls and pose, worse for det: keep "
           "'uniform' for detectors, docs/target_pruning.md), max_ratio=0.9) or PaodingPruner(...)",
           registered(PRUNERS), required=True),
    Option('synthesizer', None, "a SYNTHESIZERS config: DeepInversionSynthesizer(preset=..., "
           "**settings), presets 'classification', 'detection', 'pose' (the reference settings), "
           "'fast' (1/10 of the teacher passes, docs/synthesis_speed.md); or "
           "GeneratorSynthesizer(preset=..., **settings), a meta-learned generator at <= 20 "
           "teacher passes per image, presets 'classification', 'detection', 'pose' "
           "(docs/synthesis_methods.md). The signal (setting prior='auto'): BatchNorm running "
           "statistics where the inverted module has BN layers, else the patch-similarity prior "
           "at its LayerNorm/GroupNorm inputs (ViT, Swin, ConvNeXt; docs/synthesis.md); "
           "classification adds the class term towards balanced labels; detection and pose invert "
           "the backbone (synthetic_data.invert='model': neck and head too) and, with "
           "dfbf.online, the teacher-student adversary",
           registered(SYNTHESIZERS), required=True),
    Option('synthetic_data', {}, SYNTHETIC_DATA.doc, SYNTHETIC_DATA.read),
    Option('distill', {}, DISTILL.doc, DISTILL.read),
    Option('schedule', {}, SCHEDULE.doc, SCHEDULE.read),
    Option('overparam', None, OVERPARAM.doc, OVERPARAM.read),
    Option('sp_loss', None, SP_LOSS.doc, SP_LOSS.read),
    Option('export', {}, EXPORT.doc, EXPORT.read),
    Option('train_data', 'synthetic', "what the student trains on: 'synthetic' (the method), or the "
           "baselines 'noise' (Gaussian inputs) and 'real' (num_images of the stock train split)",
           one_of(*TRAIN_DATA)),
    Option('keep_custom_hooks', False, "keep the stock config's custom_hooks while fine-tuning",
           boolean),
    Option('views', None, VIEWS.doc, views_block),
    Option('online', None, ONLINE.doc, switchable(ONLINE)),
])

BLOCKS = (DFBF, SYNTHETIC_DATA, DISTILL, SCHEDULE, OVERPARAM, SP_LOSS, EXPORT, VIEWS, ONLINE)


def loss_config(distill: dict) -> dict:
    """The MODELS config of the feature loss: ``distill.loss`` with the shorthands merged in."""
    loss = dict(distill['loss'])
    for key in LOSS_SHORTHANDS:
        if distill.get(key) is not None:
            if key in loss:
                raise ValueError(f'dfbf.distill.{key}: given twice (also as dfbf.distill.loss.{key})')
            loss[key] = distill[key]
    return loss


def read_dfbf(block) -> dict:
    """The validated ``dfbf`` block, defaults filled in; the registered parts are built once
    as a check (one line naming the path of a bad setting)."""
    if block is None:
        raise ValueError('dfbf: the config has no `dfbf` block (teacher_checkpoint, pruner, '
                         'synthesizer, ...); see configs/ for examples')
    dfbf = DFBF.read(block)
    build_checked(PRUNERS, dfbf['pruner'], 'dfbf.pruner')
    build_checked(SYNTHESIZERS, dfbf['synthesizer'], 'dfbf.synthesizer')
    explicit = dfbf['distill']['loss'] != DISTILL.defaults()['loss']
    build_checked(MODELS, loss_config(dfbf['distill']),
                  'dfbf.distill.loss' if explicit else 'dfbf.distill')
    if dfbf['online'] is not None:
        check_online(dfbf)
    if dfbf['sp_loss'] is not None:
        build_checked(MODELS, dict(type=dfbf['sp_loss']['type'],
                                   loss_weight=dfbf['sp_loss']['weight']), 'dfbf.sp_loss')
    return dfbf


def check_online(dfbf: dict) -> None:
    """One line unless ``dfbf.online`` fits: synthetic data from a GeneratorSynthesizer."""
    if dfbf['train_data'] != 'synthetic':
        raise ValueError(f"dfbf.online: grows the synthetic pool; dfbf.train_data is {dfbf['train_data']!r}")
    kind = dfbf['synthesizer'].get('type')
    kind = getattr(kind, '__name__', kind)
    if kind != 'GeneratorSynthesizer':
        raise ValueError(f"dfbf.online: needs dfbf.synthesizer of type 'GeneratorSynthesizer' (its stream "
                         f"makes the online batches), got {kind!r}")


def options_table() -> str:
    """The table of every ``dfbf`` option in docs/configuration.md (``tools/options_table.py``)."""
    rows = ['| key | default | meaning |', '|---|---|---|']
    for block in BLOCKS:
        for o in block.options:
            nested = any(b.path == f'{block.path}.{o.key}' for b in BLOCKS)
            default = '' if nested else ('required' if o.required else f'`{o.default!r}`')
            rows.append(f'| `{block.path}.{o.key}` | {default} | {o.doc} |')
    return '\n'.join(rows)
