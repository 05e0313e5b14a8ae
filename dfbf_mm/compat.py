"""Every call that depends on the torch / numpy release, in one place (tested: torch 2.1 and 2.14).

- Safe checkpoint loading. torch >= 2.6 loads with ``weights_only=True`` by default and takes
  extra allowed globals, including ``(function, 'module.name')`` pairs, through
  ``torch.serialization.add_safe_globals``. Older torch (2.1 - 2.5) defaults to a full unpickle
  and its weights-only unpickler cannot be extended with what MMEngine checkpoints hold (numpy
  arrays and ``HistoryBuffer`` objects need BUILD / NEWOBJ on types it refuses). There,
  :func:`safe_load` unpickles with a ``pickle.Unpickler`` whose ``find_class`` resolves only
  torch's own weights-only globals (with those torch 2.14 adds) plus the allow-list given to
  :func:`add_safe_globals` (any other global is a one-line ``UnpicklingError``), and MMEngine's
  loader of local checkpoint files is pointed at it, so ``load_checkpoint`` / ``load_from`` /
  ``resume`` are as strict as on torch >= 2.6. ``torch.load(path, weights_only=True)`` itself
  stays torch's: on torch < 2.6 it refuses MMEngine runner checkpoints (use :func:`safe_load`).
- ``torch.onnx.export``: ``dynamo=False`` (the TorchScript exporter) only where the keyword
  exists (torch >= 2.5); older releases have no other exporter behind ``torch.onnx.export``.
- ``torch.compile``: :func:`compile_fn` raises one line naming the release it needs.
- numpy dtype classes: taken from ``np.typecodes`` (``np.dtypes`` is numpy >= 1.25).
- :func:`check_environment` (run once by ``import dfbf_mm``): torch older than the oldest tested
  release, numpy 2, mmcv missing or without its compiled ops, each named in one line with its fix.
"""
import _compat_pickle
import functools
import importlib.util
import os.path as osp
import pickle
import sys
import types
import warnings
from typing import Callable, Dict, Iterable, Tuple, Union

for _pkg in ('torch', 'torchvision'):  # not install_requires: an environment brings its own build
    if importlib.util.find_spec(_pkg) is None:
        raise ImportError(f'dfbf_mm needs {_pkg} (torch >= 2.1 with its torchvision, e.g. pip install '
                          'torch==2.1.2 torchvision==0.16.2; see docs/install.md)')

import numpy as np  # noqa: E402
import torch  # noqa: E402


def _release(version: str) -> Tuple[int, int]:
    major, minor = version.split('+')[0].split('.')[:2]
    return int(major), int(''.join(c for c in minor if c.isdigit()) or 0)


TORCH = _release(torch.__version__)
OLDEST_TORCH = (2, 1)
# torch.load defaults to weights_only=True and add_safe_globals takes (fn, name) pairs
NATIVE_SAFE_GLOBALS = TORCH >= (2, 6)


def numpy_dtype_classes() -> list:
    """The dtype classes of every numpy scalar type (``np.dtypes.*DType`` on numpy >= 1.25)."""
    return sorted({type(np.dtype(c)) for c in np.typecodes['All']}, key=lambda t: t.__name__)


# ---------------------------------------------------------------- safe checkpoint loading
SafeGlobal = Union[Callable, type, Tuple[Callable, str]]
_extra_globals: Dict[str, object] = {}


def _global_name(obj) -> str:
    return f'{obj.__module__}.{obj.__qualname__}'


def add_safe_globals(entries: Iterable[SafeGlobal]) -> None:
    """Allow ``entries`` (objects, or ``(object, 'module.name')`` to bind a name to a stand-in)
    in safe checkpoint loads: torch's own allow-list where it has one for pairs (torch >= 2.6),
    else :func:`safe_load`'s, which MMEngine's local checkpoint loader then uses (idempotent)."""
    entries = list(entries)
    for e in entries:
        obj, name = e if isinstance(e, tuple) else (e, _global_name(e))
        _extra_globals[name] = obj
    if NATIVE_SAFE_GLOBALS:
        torch.serialization.add_safe_globals(entries)
    else:
        _route_mmengine_local_loads()


def _latin1_encode(text, encoding='latin1', errors='strict'):
    """``_codecs.encode`` as protocol-2 pickles of bytes (numpy arrays' data) use it: latin1 only."""
    if encoding not in ('latin1', 'latin-1'):
        raise pickle.UnpicklingError(f'checkpoint asks for _codecs.encode(..., {encoding!r}); only latin1 is allowed')
    return text.encode(encoding, errors)


@functools.lru_cache(maxsize=None)
def _torch_allowed_globals() -> Dict[str, object]:
    """This torch's weights-only globals plus those torch 2.14's adds (where this torch has them):
    the dtypes, qschemes, ``torch.device``, tensor rebuild functions and builtin containers."""
    import collections
    from torch._weights_only_unpickler import _get_allowed_globals
    out = {'collections.Counter': collections.Counter, 'builtins.set': set, 'builtins.bytearray': bytearray,
           'builtins.complex': complex, 'torch.device': torch.device, '_codecs.encode': _latin1_encode}
    out.update((f'torch.{n}', getattr(torch, n)) for n in dir(torch)
               if isinstance(getattr(torch, n, None), (torch.dtype, torch.qscheme)))
    out.update((f'torch._utils.{n}', getattr(torch._utils, n)) for n in dir(torch._utils)
               if n.startswith('_rebuild_') and n in _REBUILD_FUNCTIONS)
    out.update(_get_allowed_globals())
    return out


_REBUILD_FUNCTIONS = {  # torch._utils functions torch 2.14's weights-only unpickler allows
    '_rebuild_tensor', '_rebuild_tensor_v2', '_rebuild_tensor_v3', '_rebuild_parameter',
    '_rebuild_parameter_with_state', '_rebuild_qtensor', '_rebuild_sparse_tensor',
    '_rebuild_meta_tensor_no_storage', '_rebuild_nested_tensor', '_rebuild_device_tensor_from_numpy',
    '_rebuild_device_tensor_from_cpu_tensor', '_rebuild_wrapper_subclass'}


def _allowed_globals() -> Dict[str, object]:
    return {**_torch_allowed_globals(), **_extra_globals}


class _RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` resolving only allow-listed globals (torch < 2.6)."""

    def find_class(self, module, name):
        # Python 2 names of protocol 2 pickles (__builtin__), mapped as pickle.Unpickler does
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        obj = _allowed_globals().get(f'{module}.{name}')
        if obj is None:
            raise pickle.UnpicklingError(
                f'checkpoint needs {module}.{name}, which is not allow-listed for safe loading '
                '(torch tensors, numpy arrays and MMEngine HistoryBuffers are); load it only if '
                'you trust its source, with torch.load(path, weights_only=False)')
        return obj


_restricted_pickle = types.ModuleType('dfbf_mm_restricted_pickle')
_restricted_pickle.Unpickler = _RestrictedUnpickler
_restricted_pickle.load = lambda f, **kwargs: _RestrictedUnpickler(f, **kwargs).load()
_restricted_pickle.__name__ = 'dfbf_mm_restricted_pickle'


def safe_load(path, map_location='cpu'):
    """``torch.load`` of a checkpoint that may hold only allow-listed types: ``weights_only=True``
    on torch >= 2.6, the restricted unpickler (see the module doc) on older torch."""
    if NATIVE_SAFE_GLOBALS:
        return torch.load(path, map_location=map_location, weights_only=True)
    return torch.load(path, map_location=map_location, pickle_module=_restricted_pickle,
                      weights_only=False)


def load_from_local(filename, map_location):
    """MMEngine's loader of local files (its name too: MMEngine logs it) through :func:`safe_load`."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return safe_load(filename, map_location)


def _route_mmengine_local_loads() -> None:
    from mmengine.runner.checkpoint import CheckpointLoader
    if CheckpointLoader._schemes.get('') is not load_from_local:
        CheckpointLoader.register_scheme(prefixes='', loader=load_from_local, force=True)


# ---------------------------------------------------------------- ONNX export, compile
def onnx_export_kwargs() -> dict:
    """``dynamo=False`` where ``torch.onnx.export`` has the keyword (torch >= 2.5; its default
    turns to the dynamo exporter in 2.9), nothing on older torch (TorchScript is the only one)."""
    import inspect
    return {'dynamo': False} if 'dynamo' in inspect.signature(torch.onnx.export).parameters else {}


# (Python release, oldest torch whose torch.compile supports it)
_COMPILE_PYTHON = ((3, 13), (2, 6)), ((3, 12), (2, 4)), ((3, 11), (2, 1))


def compile_unsupported() -> str:
    """Why ``torch.compile`` cannot run here ('' when it can): the release it needs."""
    if not hasattr(torch, 'compile'):
        return f'torch.compile needs torch >= 2.0 (installed: {torch.__version__})'
    for py, needs in _COMPILE_PYTHON:
        if sys.version_info[:2] >= py and TORCH < needs:
            return (f'torch.compile on Python {py[0]}.{py[1]} needs torch >= {needs[0]}.{needs[1]} '
                    f'(installed: {torch.__version__})')
    return ''


def compile_fn(fn: Callable, setting: str = 'compile=True', **kwargs) -> Callable:
    """``torch.compile(fn, **kwargs)``; a one-line ValueError naming ``setting`` and the release
    it needs where this torch / Python cannot compile."""
    reason = compile_unsupported()
    if reason:
        raise ValueError(f'{setting}: {reason}; turn it off or upgrade torch')
    return torch.compile(fn, **kwargs)


# ---------------------------------------------------------------- environment check
def _mmcv_problem() -> str:
    cuda = torch.version.cuda
    index = (f'https://download.openmmlab.com/mmcv/dist/{"cu" + cuda.replace(".", "") if cuda else "cpu"}'
             f'/torch{TORCH[0]}.{TORCH[1]}/index.html')
    fix = (f"install mmcv 2.1.0 built for torch {TORCH[0]}.{TORCH[1]}: pip install mmcv==2.1.0 -f {index} "
           '(no wheel there for torch > 2.1: build it from source, see docs/install.md)')
    if importlib.util.find_spec('mmcv') is None:
        raise ImportError(f'dfbf_mm needs mmcv (mmdet / mmpose / mmpretrain import it); {fix}')
    import mmcv
    try:
        import mmcv._ext  # noqa: F401
    except ImportError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        return (f'mmcv {mmcv.__version__} has no working compiled ops (mmcv._ext: {first}); detection '
                f'models using mmcv.ops fail; {fix}')
    return ''


_checked = False


def check_environment() -> None:
    """Once per process: an ImportError for what cannot work (torch too old, numpy 2, no mmcv),
    a warning for mmcv without compiled ops; each one line naming the fix."""
    global _checked
    if _checked:
        return
    _checked = True
    if TORCH < OLDEST_TORCH:
        raise ImportError(f'dfbf_mm needs torch >= {OLDEST_TORCH[0]}.{OLDEST_TORCH[1]} (installed: '
                          f'{torch.__version__}); install torch 2.1.2 + torchvision 0.16.2 or newer')
    if int(np.__version__.split('.')[0]) >= 2:
        raise ImportError(f'dfbf_mm needs numpy < 2 (installed: {np.__version__}; mmcv 2.1.0 and '
                          "mmdet 3.3 are built against numpy 1): pip install 'numpy<2'")
    problem = _mmcv_problem()
    if problem:
        warnings.warn(f'dfbf_mm: {problem}', stacklevel=3)
