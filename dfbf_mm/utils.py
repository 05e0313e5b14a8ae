"""Small helpers every stage shares, so each behaves one way everywhere.

- module name patterns: ``fnmatch`` globs (``backbone.stage*.conv1``) or ``re:<regex>``
  (a full match), in ``pruner.ignore`` / ``overrides``, ``distill.taps``, ``overparam.include``
  and Paoding's layer names alike;
- :func:`eval_mode`: modules in eval mode (optionally frozen) inside, as they were after;
- :func:`first_line`: the one-line text of an exception;
- :func:`output_tensors`: the tensors of a model output (tensor or nested tuple/list/dict);
- :class:`FeatureRecorder` / :func:`named_features`: outputs of named submodules in a forward
  (the distiller's taps, the online adversary's).
"""
import contextlib
import fnmatch
import re
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn


def pattern_matches(pattern: str, name: str) -> bool:
    """``re:<regex>`` is a full-match regular expression, anything else an fnmatch pattern."""
    if pattern.startswith('re:'):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def matches_any(name: str, patterns: Optional[Iterable[str]]) -> bool:
    return any(pattern_matches(p, name) for p in patterns or ())


def check_pattern(pattern, field: str) -> str:
    """A valid pattern string, or a one-line error."""
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f'{field}: pattern {pattern!r} is not a non-empty string')
    if pattern.startswith('re:'):
        try:
            re.compile(pattern[3:])
        except re.error as e:
            raise ValueError(f'{field}: {pattern!r} is not a valid regular expression ({e})') from None
    return pattern


@contextlib.contextmanager
def eval_mode(*modules: Optional[nn.Module], frozen: bool = False):
    """Every submodule of ``modules`` in eval mode inside (and, ``frozen``, its parameters
    with ``requires_grad=False``); each submodule's own mode and flags are restored after,
    so a stock backbone's partly frozen stages stay as they were."""
    modules = [m for m in modules if m is not None]
    modes = [(sub, sub.training) for m in modules for sub in m.modules()]
    grads = [(p, p.requires_grad) for m in modules for p in m.parameters()] if frozen else []
    try:
        for m in modules:
            m.eval()
        for p, _ in grads:
            p.requires_grad_(False)
        yield
    finally:
        for sub, mode in modes:
            sub.training = mode
        for p, flag in grads:
            p.requires_grad_(flag)


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, cut to ``limit``; its type name when empty."""
    lines = str(error).strip().splitlines()
    return lines[0][:limit] if lines else type(error).__name__


def output_tensors(out) -> List[torch.Tensor]:
    """The tensors of a model output (tensor, or nested tuple/list/dict of them), in order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in output_tensors(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in output_tensors(v)]
    return []


class FeatureRecorder:
    """Records the outputs of named submodules during a forward pass (forward hooks)."""

    def __init__(self, module: nn.Module, names: Sequence[str]):
        self.names = list(names)
        self.features: Dict[str, torch.Tensor] = {}
        modules = dict(module.named_modules())
        self._handles = [modules[n].register_forward_hook(self._hook(n)) for n in self.names]

    def _hook(self, name):
        def record(module, inputs, output):
            self.features[name] = output
        return record

    def pop(self) -> List[torch.Tensor]:
        """The recorded features in tap order; clears the record for the next pass."""
        missing = [n for n in self.names if n not in self.features]
        if missing:
            raise RuntimeError(f'feature tap {missing[0]!r} was not called in the forward pass')
        feats = [self.features[n] for n in self.names]
        self.features = {}
        return feats

    def remove(self):
        for h in self._handles:
            h.remove()
        self._handles = []


def named_features(module: nn.Module, inputs: torch.Tensor, names: Sequence[str]
                   ) -> Tuple[Dict[str, torch.Tensor], List[torch.Tensor]]:
    """Run ``module`` once; return ({name: that submodule's output}, the module's outputs)."""
    recorder = FeatureRecorder(module, names)
    try:
        outs = module(inputs)
        return dict(zip(recorder.names, recorder.pop())), output_tensors(outs)
    finally:
        recorder.remove()


__all__: Sequence[str] = ['FeatureRecorder', 'named_features', 'pattern_matches', 'matches_any', 'check_pattern', 'eval_mode',
                          'first_line', 'output_tensors']
