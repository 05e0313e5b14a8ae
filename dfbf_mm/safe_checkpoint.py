"""Let safe (weights-only) loads read MMEngine checkpoints: what is allowed, in one place.

Since torch 2.6 ``torch.load`` defaults to ``weights_only=True``; mmengine 0.10.7 calls it without
the argument, so checkpoints whose ``meta``/``message_hub`` hold numpy values or MMEngine's
``HistoryBuffer`` (every checkpoint an MMEngine Runner writes, many published OpenMMLab ones)
fail to load. Rather than turning the safety off, we allow-list exactly those types.

``HistoryBuffer`` pickles its statistics methods as ``getattr(HistoryBuffer, 'mean')``, so the
checkpoint names ``builtins.getattr``. Allowing the real ``getattr`` would reopen arbitrary code
execution, so the name is bound to a getattr that only resolves HistoryBuffer's own methods.

How the list is applied depends on the torch release (``dfbf_mm/compat.py``): torch's own
allow-list on torch >= 2.6, a restricted unpickler behind MMEngine's local loads on older torch.
"""
import pickle

import numpy as np
from mmengine.logging import HistoryBuffer

from . import compat


def _history_buffer_getattr(obj, name):
    """``getattr`` restricted to what a pickled ``HistoryBuffer`` needs."""
    if (obj is HistoryBuffer or isinstance(obj, HistoryBuffer)) and (
            name in HistoryBuffer._statistics_methods or name in ('min', 'max', 'mean', 'current')):
        return getattr(obj, name)
    raise pickle.UnpicklingError(
        f'checkpoint asks for getattr({type(obj).__name__}, {name!r}); only HistoryBuffer '
        'statistics methods are allowed (weights_only load)')


def _numpy_globals():
    core = np.core.multiarray
    return [core._reconstruct, core.scalar, np.ndarray, np.dtype, *compat.numpy_dtype_classes()]


def register_safe_globals():
    """Allow-list the types MMEngine checkpoints contain (idempotent)."""
    compat.add_safe_globals([
        *_numpy_globals(),
        HistoryBuffer,
        (_history_buffer_getattr, 'builtins.getattr'),
    ])
