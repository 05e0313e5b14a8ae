"""FeatureAdversary: the adversarial term of online synthesis (Fast-Datafree's, for features).

Fast-Datafree's generator also *maximises* the teacher-student disagreement, so that new images
are ones the current student still gets wrong. Detection and pose models have no logits; the
disagreement DFBF trains on is its own feature-mimic distance, so that is what is maximised.

The teacher's tapped features are recorded during the synthesizer's own teacher forward (every
inversion target runs the teacher backbone: the backbone itself, the tensor-mode model or the
whole classifier), so the term costs one student forward+backward per step and no extra teacher
pass. The student runs frozen in eval mode: its BN statistics and gradients stay untouched.
"""
from typing import Callable, List, Optional, Sequence

import torch
from torch import nn

from ..utils import FeatureRecorder, eval_mode, named_features, output_tensors

# (student taps, teacher taps, student backbone outputs, teacher backbone outputs) -> distance
Distance = Callable[[List[torch.Tensor], List[torch.Tensor], list, list], torch.Tensor]


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
        self._recorder: Optional[FeatureRecorder] = None
        self._frozen = None

    def __enter__(self) -> 'FeatureAdversary':
        self._recorder = FeatureRecorder(self.teacher, [''] + self.taps)  # '': the backbone itself
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
        if '' not in self._recorder.features:
            raise RuntimeError('FeatureAdversary: the inversion target did not run the teacher '
                               'backbone, so there are no teacher features to compare with')
        t_outs, *teacher = self._recorder.pop()
        student, s_outs = named_features(self.student, images, self.taps)
        return self.distance([student[n] for n in self.taps], teacher, s_outs, output_tensors(t_outs))


__all__ = ['FeatureAdversary']
