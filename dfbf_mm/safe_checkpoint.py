"""Let ``torch.load(weights_only=True)`` read MMEngine checkpoints, in one place.

Since torch 2.6 ``torch.load`` defaults to ``weights_only=True``; mmengine 0.10.7 calls it without
the argument, so checkpoints whose ``meta``/``message_hub`` hold numpy values or MMEngine's
``HistoryBuffer`` (every checkpoint an MMEngine Runner writes, many published OpenMMLab ones)
fail to load. Rather than turning the safety off, we allow-list exactly those types.

``HistoryBuffer`` pickles its statistics methods as ``getattr(HistoryBuffer, 'mean')``, so the
checkpoint names ``builtins.getattr``. Allowing the real ``getattr`` would reopen arbitrary code
execution, so the name is bound to a getattr that only resolves HistoryBuffer's own methods.
"""
import pickle

import numpy as np
import torch
from mmengine.logging import HistoryBuffer


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
    dtypes = [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith('DType')]
    return [core._reconstruct, core.scalar, np.ndarray, np.dtype, *dtypes]


def register_safe_globals():
    """Allow-list the types MMEngine checkpoints contain (idempotent)."""
    torch.serialization.add_safe_globals([
        *_numpy_globals(),
        HistoryBuffer,
        (_history_buffer_getattr, 'builtins.getattr'),
    ])
