"""FeatureAdversary: the adversarial term of online synthesis (Fast-Datafree's, for features).

Fast-Datafree's generator also *maximises* the teacher-student disagreement, so that new images
are ones the current student still gets wrong. Detection and pose models have no logits; the
disagreement DFBF trains on is its own feature-mimic distance, so that is what is maximised.

The teacher's tapped features are recorded during the synthesizer's own teacher forward (every
inversion target runs the teacher backbone: the backbone itself, the tensor-mode model or the
whole classifier), so the term costs one student forward+backward per step and no extra teacher
pass. The student runs frozen in eval mode: its BN statistics and gradients stay untouched.
"""
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from ..utils import eval_mode, output_tensors

# (student taps, teacher taps, student backbone outputs, teacher backbone outputs) -> distance
Distance = Callable[[List[torch.Tensor], List[torch.Tensor], list, list], torch.Tensor]


class _Recorder:
    """Outputs of named submodules (and of the module itself, under ``''``) per forward."""

    def __init__(self, module: nn.Module, names: Sequence[str]):
        modules = dict(module.named_modules())
        self.features: Dict[str, object] = {}
        self._handles = [modules[n].register_forward_hook(self._hook(n)) for n in [''] + list(names)]

    def _hook(self, name):
        def record(module, inputs, output):
            self.features[name] = output
        return record

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


class FeatureAdversary:
    """``term(images)``: the feature distance between teacher and student on ``images``.

    Use as a context (``with adversary:``) around the synthesizer's steps; inside it the
    teacher backbone's taps are recorded on every forward and the student is frozen.
    Synthesizers subtract ``weight * term`` from their loss (``adversary=`` argument).

    Args:
        teacher_backbone: the backbone the inversion target runs (its taps are recorded).
        student_backbone: the current (pruned) student backbone.
        taps: module names present in both backbones (the distiller's taps).
        distance: ``(s_taps, t_taps, s_outs, t_outs) -> scalar``, e.g. the distiller's loss summed.
        weight: the weight of the term (> 0).
    """

    def __init__(self, teacher_backbone: nn.Module, student_backbone: nn.Module,
                 taps: Sequence[str], distance: Distance, weight: float):
        if not (isinstance(weight, (int, float)) and weight > 0):
            raise ValueError(f'adv_weight: must be a positive number, got {weight!r}')
        self.teacher, self.student = teacher_backbone, student_backbone
        self.taps, self.distance, self.weight = list(taps), distance, float(weight)
        self._recorder: Optional[_Recorder] = None
        self._frozen = None

    def __enter__(self) -> 'FeatureAdversary':
        self._recorder = _Recorder(self.teacher, self.taps)
        self._frozen = eval_mode(self.student, frozen=True)
        self._frozen.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._recorder.remove()
        self._recorder = None
        self._frozen.__exit__(*exc)

    def term(self, images: torch.Tensor) -> torch.Tensor:
        """The distance on ``images``; the teacher part comes from the last teacher forward."""
        if self._recorder is None:
            raise RuntimeError('FeatureAdversary.term: use it inside `with adversary:`')
        recorded = self._recorder.features
        if '' not in recorded:
            raise RuntimeError('FeatureAdversary: the inversion target did not run the teacher '
                               'backbone, so there are no teacher features to compare with')
        teacher = [recorded[n] for n in self.taps]
        t_outs = output_tensors(recorded[''])
        self._recorder.features = {}
        student = _Recorder(self.student, self.taps)
        try:
            s_outs = output_tensors(self.student(images))
            s_taps = [student.features[n] for n in self.taps]
        finally:
            student.remove()
        return self.distance(s_taps, teacher, s_outs, t_outs)


__all__ = ['FeatureAdversary']
