"""dfbf_mm: make a trained OpenMMLab model smaller and faster without its training data.

Importing the package registers every dfbf type (pruners, the pruned-backbone builder, the
synthetic dataset, the distiller, hooks and the runner) and lets ``torch.load`` read MMEngine
checkpoints safely; add ``custom_imports=dict(imports=['dfbf_mm'])`` to any mm config.
It first checks the environment once (``compat.check_environment``: torch, numpy, mmcv's ops).
"""
from .compat import check_environment

check_environment()

from .safe_checkpoint import register_safe_globals  # noqa: E402

register_safe_globals()

from .ops_fallback import install as install_ops_fallback  # noqa: E402

install_ops_fallback()  # mmcv's ops through torchvision where mmcv has no kernels (docs/gpu.md)

# the pipeline, in order: prune -> synthesize -> distill -> export; engine glues them
from . import pruning, synthesis, distillation, export, engine  # noqa: E402,F401
from . import evaluation  # noqa: E402,F401  (FGSM robustness metric)
from .pruning import paoding  # noqa: E402,F401  (Paoding pruner)

__version__ = '0.1.0'
