"""The DFBF intermediate-supervision loss.

    L = Σ_i w_i · d(F_i^student, F_i^teacher)  (+ w_out · Σ_o d(out_o^s, out_o^t))
        (+ w_neck · Σ d(neck^s, neck^t))

d is the mean L1 (default, as the paper), MSE, Huber or smooth-L1 distance; the weights grow
with depth, w_i = a + b·i/N for taps i = 1..N from shallow to deep. The reference code names
twelve (a, b) choices by number ("loss_weight_method"); they are selectable here by that number
or directly as a pair. The neck term (off by default) compares what the frozen stock neck
makes of each backbone's outputs (``model_outputs.py``).
"""
from typing import Sequence, Tuple, Union

import torch.nn.functional as F
from torch import nn

from ..registry import MODELS

# reference loss_weight_method k -> (a, b)
DEPTH_WEIGHT_PRESETS = {
    0: (1, 0), 1: (0, 1), 2: (1, 1), 3: (2, 1), 4: (1, 2), 5: (1, 3),
    6: (1, 4), 7: (1, 5), 8: (1, 6), 9: (1, 7), 10: (1, 8), 11: (0, 6),
}

DISTANCES = {
    'l1': F.l1_loss,
    'mse': F.mse_loss,
    'huber': F.huber_loss,
    'smooth_l1': F.smooth_l1_loss,
}


def depth_weights(num_taps: int, weights: Union[int, Sequence[float]]) -> Tuple[float, ...]:
    """w_i = a + b·i/N, i = 1..N, from a preset number or an (a, b) pair."""
    if isinstance(weights, int) and not isinstance(weights, bool):
        if weights not in DEPTH_WEIGHT_PRESETS:
            raise ValueError(f'weights: preset {weights} does not exist; use 0..11 '
                             'or an (a, b) pair')
        a, b = DEPTH_WEIGHT_PRESETS[weights]
    else:
        try:
            a, b = (float(v) for v in weights)
        except (TypeError, ValueError):
            raise ValueError(f'weights: {weights!r} is neither a preset number 0..11 nor '
                             'an (a, b) pair') from None
    n = max(num_taps, 1)
    return tuple(a + b * i / n for i in range(1, num_taps + 1))


@MODELS.register_module()
class FeatureMimicLoss(nn.Module):
    """Depth-weighted distance between student and teacher feature maps (DFBF §3).

    Args:
        distance: 'l1' (default), 'mse', 'huber' or 'smooth_l1'.
        weights: reference preset number 0..11 or an (a, b) pair for w_i = a + b·i/N.
        out_weight: weight of the optional loss on the backbone outputs (L_out); 0 = off.
        neck_weight: weight of the loss on the stock neck's outputs; 0 = off.
    """

    def __init__(self, distance: str = 'l1', weights: Union[int, Sequence[float]] = 2,
                 out_weight: float = 0.0, neck_weight: float = 0.0):
        super().__init__()
        if distance not in DISTANCES:
            raise ValueError(f'distance: {distance!r} is not one of '
                             f'{", ".join(DISTANCES)}')
        depth_weights(1, weights)  # validate early
        self.distance = distance
        self.weights = weights
        for name, value in (('out_weight', out_weight), ('neck_weight', neck_weight)):
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0):
                raise ValueError(f'{name}: must be a number >= 0, got {value!r}')
        self.out_weight = float(out_weight)
        self.neck_weight = float(neck_weight)

    def forward(self, student_taps, teacher_taps, student_outs=(), teacher_outs=(), neck=None):
        """Returns a dict of named loss terms (MMEngine sums every key containing 'loss').

        ``neck``: (student tensors, teacher tensors) of the stock neck, given by the distiller
        when ``neck_weight`` is on."""
        dist = DISTANCES[self.distance]
        w = depth_weights(len(student_taps), self.weights)
        losses = {}
        if student_taps:
            losses['loss_feat'] = sum(wi * dist(s, t) for wi, s, t in zip(w, student_taps, teacher_taps))
        if self.out_weight > 0:
            losses['loss_out'] = self.out_weight * sum(
                dist(s, t) for s, t in zip(student_outs, teacher_outs))
        if self.neck_weight > 0 and neck is not None:
            losses['loss_neck'] = self.neck_weight * sum(dist(s, t) for s, t in zip(*neck))
        if not losses:
            raise ValueError('distill: no feature taps and out_weight=0: nothing to distil')
        return losses
