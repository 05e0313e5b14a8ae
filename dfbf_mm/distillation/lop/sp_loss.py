"""Similarity-preserving knowledge distillation loss (Tung & Mori, ICCV 2019).

For one tap with student feature S (b x C' x H' x W') and teacher feature T (b x C x H x W):
flatten each to b x D, take the b x b Gram G = F F^T, L2-normalise each row, and compare

    L_SP = ||G_T - G_S||_F^2 / b^2.

The Gram only relates samples of the batch to each other, so the loss is indifferent to the
channel (and spatial) size of either side: it works between a pruned student and the dense
teacher without any adapter. Row normalisation makes it invariant to a per-sample rescaling of
the features. Decisions of this project [ours] (spec ``lop.md``):

* several taps are averaged (mean over taps), then multiplied by ``loss_weight`` (the spec's
  gamma; Tung & Mori used 3000 with a few stage-level taps);
* the teacher Gram is detached: the dense teacher is a fixed target;
* Grams are computed in float32 at least, so half-precision features do not overflow b x D dots;
* batch size 1 is an error, not a zero loss: the 1 x 1 normalised Gram is always [[1]] and the
  loss would silently teach nothing.
"""
from typing import Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...registry import MODELS

Feats = Union[torch.Tensor, Sequence[torch.Tensor]]


def _as_list(feats: Feats, field: str) -> list:
    """Accept one tensor or a list/tuple of tensors (one per tap)."""
    if isinstance(feats, torch.Tensor):
        return [feats]
    if isinstance(feats, (list, tuple)) and len(feats) > 0 \
            and all(isinstance(f, torch.Tensor) for f in feats):
        return list(feats)
    raise TypeError(f'{field}: expected a tensor or a non-empty list/tuple of tensors, '
                    f'got {type(feats).__name__}')


def _normalised_gram(feat: torch.Tensor) -> torch.Tensor:
    """Row-L2-normalised b x b Gram of a feature flattened to b x D."""
    flat = feat.reshape(feat.shape[0], -1)
    if flat.dtype in (torch.float16, torch.bfloat16):
        flat = flat.float()
    return F.normalize(flat @ flat.t(), p=2, dim=1)


def similarity_preserving_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``||G_T - G_S||_F^2 / b^2`` for one tap (teacher Gram detached)."""
    b = student.shape[0]
    g_s = _normalised_gram(student)
    g_t = _normalised_gram(teacher.detach())
    return (g_t - g_s).pow(2).sum() / (b * b)


@MODELS.register_module()
class SimilarityPreservingLoss(nn.Module):
    """Similarity-preserving KD loss over one or several taps (see module docstring).

    Args:
        loss_weight: multiplier of the mean over taps (gamma of the spec).

    ``forward(student_feats, teacher_feats)`` takes a tensor or a list of tensors per side,
    paired tap by tap; each pair must share the batch size (>= 2); channel and spatial sizes
    may differ. Returns a scalar.
    """

    def __init__(self, loss_weight: float = 1.0):
        super().__init__()
        if isinstance(loss_weight, bool) or not isinstance(loss_weight, (int, float)) \
                or loss_weight < 0:
            raise ValueError(f'loss_weight: expected a number >= 0, got {loss_weight!r}')
        self.loss_weight = float(loss_weight)

    def forward(self, student_feats: Feats, teacher_feats: Feats) -> torch.Tensor:
        students = _as_list(student_feats, 'student_feats')
        teachers = _as_list(teacher_feats, 'teacher_feats')
        if len(students) != len(teachers):
            raise ValueError(f'student_feats: {len(students)} taps but teacher_feats has '
                             f'{len(teachers)}; they are paired tap by tap')
        losses = []
        for i, (s, t) in enumerate(zip(students, teachers)):
            if s.dim() < 2 or t.dim() < 2:
                raise ValueError(f'student_feats: tap {i} needs a batch dimension and features, '
                                 f'got shapes {tuple(s.shape)} and {tuple(t.shape)}')
            if s.shape[0] != t.shape[0]:
                raise ValueError(f'student_feats: tap {i} batch size {s.shape[0]} differs from '
                                 f"the teacher's {t.shape[0]}")
            if s.shape[0] < 2:
                raise ValueError(f'student_feats: tap {i} has batch size 1, whose normalised '
                                 f'Gram is always [[1]]; similarity-preserving KD needs b >= 2')
            losses.append(similarity_preserving_loss(s, t))
        return torch.stack(losses).mean() * self.loss_weight

    def extra_repr(self) -> str:
        return f'loss_weight={self.loss_weight}'
