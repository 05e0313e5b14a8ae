"""dfbf_mm/compat.py: the version-dependent paths (safe loading below torch 2.6, compile, the
environment check). Run on both stacks (make test, make test-torch2.1); the restricted unpickler
used below torch 2.6 is exercised directly on every torch."""
import collections
import os
import pickle
import sys
import warnings

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner import load_checkpoint

import dfbf_mm  # noqa: F401  (registers the allow-list)
from dfbf_mm import compat


class _Payload:  # a pickle that calls os.getcwd on load: stands for any code execution
    def __reduce__(self):
        return os.getcwd, ()


def _mmengine_like_checkpoint():
    buf = HistoryBuffer()
    buf.update(1.5)
    return dict(state_dict=collections.OrderedDict(w=torch.arange(4.)),
                meta=dict(epoch=2, seed=np.int64(7), hist=np.arange(3, dtype=np.float32)),
                message_hub=dict(log_scalars={'loss': buf}))


def test_restricted_unpickler_reads_mmengine_types(tmp_path):
    """The torch < 2.6 path on any torch: tensors, numpy values and HistoryBuffers load."""
    path = tmp_path / 'ckpt.pth'
    torch.save(_mmengine_like_checkpoint(), path)
    ckpt = torch.load(path, pickle_module=compat._restricted_pickle, weights_only=False)
    assert torch.equal(ckpt['state_dict']['w'], torch.arange(4.))
    assert ckpt['meta']['seed'] == 7 and ckpt['meta']['hist'].dtype == np.float32
    assert ckpt['message_hub']['log_scalars']['loss'].mean() == 1.5
    again = compat.safe_load(path)  # whichever path this torch takes
    assert again['message_hub']['log_scalars']['loss'].current() == 1.5


@pytest.mark.parametrize('restricted', [True, False])
def test_safe_load_refuses_other_globals_in_one_line(tmp_path, restricted):
    path = tmp_path / 'evil.pth'
    torch.save({'x': _Payload()}, path)
    if restricted:
        with pytest.raises(pickle.UnpicklingError, match=r'^checkpoint needs posix\.getcwd, which is not allow'):
            torch.load(path, pickle_module=compat._restricted_pickle, weights_only=False)
    else:
        with pytest.raises(pickle.UnpicklingError):
            compat.safe_load(path)


def test_restricted_codecs_encode_is_latin1_only():
    assert compat._latin1_encode('\xff', 'latin1') == b'\xff'
    with pytest.raises(pickle.UnpicklingError, match='only latin1'):
        compat._latin1_encode('x', 'rot13')


def test_mmengine_load_checkpoint_is_safe_on_every_torch(tmp_path):
    """MMEngine's own loads of local files refuse a pickled call (torch >= 2.6: torch's default
    weights_only; below it: the restricted unpickler registered for local paths)."""
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {}, 'meta': _Payload()}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(torch.nn.Linear(1, 1), str(path))
    good = tmp_path / 'good.pth'
    torch.save(_mmengine_like_checkpoint(), good)
    model = torch.nn.Module()
    model.register_buffer('w', torch.zeros(4))
    load_checkpoint(model, str(good), strict=True)
    assert torch.equal(model.w, torch.arange(4.))


def test_numpy_dtype_classes_cover_np_dtypes():
    classes = set(compat.numpy_dtype_classes())
    assert type(np.dtype('float32')) in classes and type(np.dtype('int64')) in classes
    if hasattr(np, 'dtypes'):  # numpy >= 1.25
        assert {getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith('DType')} <= classes


def test_onnx_export_keyword_only_where_torch_has_it():
    import inspect
    has = 'dynamo' in inspect.signature(torch.onnx.export).parameters
    assert compat.onnx_export_kwargs() == ({'dynamo': False} if has else {})
    assert has == (compat.TORCH >= (2, 5))


def test_compile_names_the_release_it_needs(monkeypatch):
    assert compat.compile_unsupported() == ''  # both tested stacks compile on Python 3.11
    assert callable(compat.compile_fn(lambda x: x + 1))
    monkeypatch.setattr(sys, 'version_info', (3, 12, 0))
    monkeypatch.setattr(compat, 'TORCH', (2, 1))
    with pytest.raises(ValueError, match=r'^compile: torch\.compile on Python 3\.12 needs torch >= 2\.4 \(installed'):
        compat.compile_fn(lambda x: x, 'compile')
    monkeypatch.delattr(torch, 'compile')
    assert 'needs torch >= 2.0' in compat.compile_unsupported()


def _check(monkeypatch):
    monkeypatch.setattr(compat, '_checked', False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        compat.check_environment()
    return [str(w.message) for w in caught]


def test_environment_check_passes_here_and_runs_once(monkeypatch):
    assert _check(monkeypatch) == []
    monkeypatch.setattr(compat, 'TORCH', (2, 0))  # _checked is set: no second check
    compat.check_environment()


def test_environment_check_names_each_fix_in_one_line(monkeypatch):
    monkeypatch.setattr(compat, 'TORCH', (2, 0))
    with pytest.raises(ImportError, match=r'^dfbf_mm needs torch >= 2\.1 \(installed: [^\n]*\); install torch'):
        _check(monkeypatch)
    monkeypatch.undo()
    monkeypatch.setattr(np, '__version__', '2.0.1')
    with pytest.raises(ImportError, match=r"^dfbf_mm needs numpy < 2 [^\n]*pip install 'numpy<2'$"):
        _check(monkeypatch)
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, 'mmcv._ext', None)  # mmcv without its compiled ops
    (msg, ) = _check(monkeypatch)
    assert '\n' not in msg and msg.startswith('dfbf_mm: mmcv 2.1.0 has no working compiled ops (mmcv._ext')
    assert f'pip install mmcv==2.1.0 -f https://download.openmmlab.com/mmcv/dist/' in msg
    assert f'/torch{compat.TORCH[0]}.{compat.TORCH[1]}/index.html' in msg
    real = compat.importlib.util.find_spec
    monkeypatch.setattr(compat.importlib.util, 'find_spec', lambda n, *a: None if n == 'mmcv' else real(n, *a))
    with pytest.raises(ImportError, match=r'^dfbf_mm needs mmcv \(mmdet / mmpose / mmpretrain import it\); install'):
        _check(monkeypatch)
