"""FGSM robustness: the share of correctly classified samples whose prediction survives FGSM.

FGSM (Goodfellow et al. 2015) moves every input value by ``eps`` in the direction of the sign
of the loss gradient, ``x' = clip(x + eps * sign(grad_x CE(f(x), y)))``. Robustness at ``eps``
is ``#(correct on x and on x') / #(correct on x)``; eps = 0 gives 1.0 by construction.

Convention: ``eps`` is a fraction of the *pixel* range ``[0, pixel_max]`` (``pixel_max`` 255
for mm image models, 1 for inputs already in [0, 1]): in the model's normalised input space the
step is ``eps * pixel_max / std`` per channel and the result is clipped to the normalised
images of pixels 0 and ``pixel_max``.

How it runs in a stock ``ValLoop``: a metric only sees predictions, and FGSM needs the input
gradient, so the metric keeps a reference to the model, set before validation/testing by
``FGSMRobustnessHook`` (add ``custom_hooks=[dict(type='FGSMRobustnessHook')]``). In ``process``
it re-preprocesses the raw ``data_batch`` with the model's data preprocessor, attacks, and
counts. ValLoop runs under ``torch.no_grad``; the attack re-enables gradients locally.
"""
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmengine.evaluator import BaseMetric
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from dfbf_mm.registry import HOOKS, METRICS


def fgsm_attack(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                eps, lo, hi) -> torch.Tensor:
    """``clip(x + eps * sign(grad_x cross_entropy(forward(x), y)), lo, hi)``.

    ``eps``, ``lo``, ``hi``: numbers or tensors broadcastable to ``x`` (per channel).
    """
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(forward(x), y)
        grad, = torch.autograd.grad(loss, x)
    adv = x.detach() + torch.as_tensor(eps, dtype=x.dtype, device=x.device) * grad.sign()
    lo = torch.as_tensor(lo, dtype=x.dtype, device=x.device)
    hi = torch.as_tensor(hi, dtype=x.dtype, device=x.device)
    return torch.maximum(torch.minimum(adv, hi), lo)


@torch.no_grad()
def fgsm_counts(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                epsilons: Sequence[float], eps_scale=1.0, lo=0.0, hi=1.0) -> Tuple[int, Dict[float, int]]:
    """``(#correct, {eps: #correct that stay correct under FGSM at eps})`` for one batch."""
    correct = forward(x).argmax(-1) == y
    survived = {}
    for eps in epsilons:
        if eps == 0:
            survived[eps] = int(correct.sum())
            continue
        adv = fgsm_attack(forward, x, y, eps * eps_scale, lo, hi)
        survived[eps] = int((correct & (forward(adv).argmax(-1) == y)).sum())
    return int(correct.sum()), survived


def _input_scaling(model, pixel_max: float):
    """``(eps_scale, lo, hi)`` in the model's normalised input space (see module docstring)."""
    pre = getattr(model, 'data_preprocessor', None)
    mean, std = getattr(pre, 'mean', None), getattr(pre, 'std', None)
    if mean is None or std is None or not getattr(pre, '_enable_normalize', False):
        return pixel_max, 0.0, pixel_max
    mean, std = mean.detach().float(), std.detach().float()
    return pixel_max / std, (0 - mean) / std, (pixel_max - mean) / std


@METRICS.register_module()
class FGSMRobustness(BaseMetric):
    """Share of correctly classified samples whose prediction survives FGSM, per ``eps``.

    Args:
        epsilons: attack sizes as fractions of the pixel range (0 allowed: gives 1.0).
        pixel_max: top of the raw pixel range (255 for images, 1 for [0, 1] inputs).
        forward_mode: ``mode`` passed to the model to get logits ('tensor' for mmpretrain).

    Results: ``{prefix}/eps_{eps}`` for every eps and ``{prefix}/clean_correct`` (#samples
    the robustness is computed over). Needs ``FGSMRobustnessHook`` (or ``metric.model = m``).
    """
    default_prefix = 'fgsm'

    def __init__(self, epsilons: Sequence[float] = (0.01, 0.05, 0.1), pixel_max: float = 255.0,
                 forward_mode: str = 'tensor', collect_device: str = 'cpu', prefix: Optional[str] = None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        if isinstance(epsilons, (int, float)):
            epsilons = [epsilons]
        if not epsilons or any(not isinstance(e, (int, float)) or e < 0 for e in epsilons):
            raise ValueError(f'epsilons: {epsilons!r} must be a non-empty list of numbers >= 0')
        if pixel_max <= 0:
            raise ValueError(f'pixel_max: {pixel_max!r} must be positive')
        self.epsilons = [float(e) for e in epsilons]
        self.pixel_max = float(pixel_max)
        self.forward_mode = forward_mode
        self.model = None

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        """Attack the batch with the referenced model and store the counts."""
        model = self.model
        if model is None:
            raise RuntimeError("model: FGSMRobustness has no model; add custom_hooks=[dict(type="
                               "'FGSMRobustnessHook')] to the config (or set metric.model)")
        model = model.module if is_model_wrapper(model) else model
        data = model.data_preprocessor(data_batch, False)
        x = data['inputs']
        labels = [ds['gt_label'] if isinstance(ds, dict) else ds.gt_label for ds in data_samples]
        y = torch.cat([torch.as_tensor(lb).view(-1)[:1] for lb in labels]).to(x.device).long()
        scale, lo, hi = _input_scaling(model, self.pixel_max)
        shape = (1, -1) + (1, ) * (x.dim() - 2)
        scale, lo, hi = (v.view(shape).to(x.device) if torch.is_tensor(v) else v for v in (scale, lo, hi))
        correct, survived = fgsm_counts(lambda t: model(t, mode=self.forward_mode), x, y,
                                        self.epsilons, scale, lo, hi)
        self.results.append(dict(correct=correct, survived=survived))

    def compute_metrics(self, results: list) -> dict:
        """Sum the counts over all batches and ranks."""
        correct = sum(r['correct'] for r in results)
        out = {f'eps_{e:g}': (sum(r['survived'][e] for r in results) / correct if correct else 0.0)
               for e in self.epsilons}
        out['clean_correct'] = correct
        return out


@HOOKS.register_module()
class FGSMRobustnessHook(Hook):
    """Give every ``FGSMRobustness`` metric of the val/test evaluator a reference to the model."""
    priority = 'LOW'

    @staticmethod
    def _attach(runner, loop_name: str) -> None:
        loop = getattr(runner, loop_name, None)
        evaluator = getattr(loop, 'evaluator', None)
        for metric in getattr(evaluator, 'metrics', []):
            if isinstance(metric, FGSMRobustness):
                metric.model = runner.model

    def before_val(self, runner) -> None:
        self._attach(runner, 'val_loop')

    def before_test(self, runner) -> None:
        self._attach(runner, 'test_loop')
