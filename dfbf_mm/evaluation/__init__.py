"""Evaluation metrics of dfbf_mm; importing registers them (and their helper hooks)."""
from .fgsm_robustness import FGSMRobustness, FGSMRobustnessHook, fgsm_attack, fgsm_counts

__all__ = ['FGSMRobustness', 'FGSMRobustnessHook', 'fgsm_attack', 'fgsm_counts']
