"""ONNX export of a (pruned) backbone or a whole model in tensor mode, checked in onnxruntime.

Exporter: ``torch.onnx.export(..., dynamo=False)``, the TorchScript exporter (the keyword only
where torch has it, ``compat.onnx_export_kwargs``). The default (dynamo) exporter of
torch >= 2.9 needs ``onnxscript``, whose releases need numpy >= 2, which the pinned stack
cannot take. The graph has a dynamic batch axis, so one file serves every
batch size. A whole model is exported as ``model(x, mode='tensor')`` (the network without the
data preprocessor and without post-processing: the raw head outputs); all outputs are
flattened in order into ``output0``, ``output1``, ...

Everything runs on the CPU: a module on another device is copied to the CPU first (onnxruntime
runs there, and GPU kernels, e.g. TF32 convolutions, may round differently from CPU ones by more
than float32 does).

Match: onnxruntime (CPU) and PyTorch agree when every output has the same shape and
``max |onnx - torch| <= ONNX_TOL * max(1, max |torch|)`` (relative to the output's scale, as
float32 sums of deep random-weights nets reach large magnitudes).
"""
import copy
import io
import os
import os.path as osp
import warnings
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..compat import onnx_export_kwargs

ONNX_TOL = 1e-4
OPSET = 17


def _flatten(out) -> List[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flatten(o)]
    raise TypeError(f'onnx: the model returns a {type(out).__name__}, not tensors')


class _Flat(nn.Module):
    """``module(x)`` (or ``module(x, mode='tensor')``) as a flat tuple of tensors."""

    def __init__(self, module: nn.Module, tensor_mode: bool):
        super().__init__()
        self.module, self.tensor_mode = module, tensor_mode

    def forward(self, x):
        return tuple(_flatten(self.module(x, mode='tensor') if self.tensor_mode else self.module(x)))


def _on_cpu(module: nn.Module) -> nn.Module:
    """``module`` itself if all its tensors are on the CPU, else a CPU copy."""
    on_cpu = all(t.device.type == 'cpu' for t in list(module.parameters()) + list(module.buffers()))
    return module if on_cpu else copy.deepcopy(module).cpu()


def _torch_outputs(flat: nn.Module, inputs: torch.Tensor) -> List[torch.Tensor]:
    with torch.inference_mode():
        return list(flat(inputs))


def export_onnx(module: nn.Module, inputs: torch.Tensor, path: Optional[str] = None,
                tensor_mode: bool = False, opset: int = OPSET) -> Union[str, bytes]:
    """Export ``module`` (eval mode) traced on ``inputs`` to ``path``; without a path, return
    the ONNX bytes. ``tensor_mode``: export a whole mm model's ``forward(x, mode='tensor')``."""
    module, inputs = _on_cpu(module), inputs.cpu()
    was = module.training
    module.eval()  # mm backbones' train() returns None: do not chain it
    flat = _Flat(module, tensor_mode)
    try:
        n = len(_torch_outputs(flat, inputs))
        names = [f'output{i}' for i in range(n)]
        axes = {k: {0: 'batch'} for k in ['input'] + names}
        f = io.BytesIO() if path is None else path
        if path is not None and osp.dirname(path):
            os.makedirs(osp.dirname(path), exist_ok=True)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter('ignore')  # legacy-exporter deprecation and tracer warnings
            torch.onnx.export(flat, (inputs,), f, **onnx_export_kwargs(), opset_version=opset,
                              input_names=['input'], output_names=names, dynamic_axes=axes)
    finally:
        module.train(was)
    return path if path is not None else f.getvalue()


def onnx_session(model: Union[str, bytes], threads: Optional[int] = None):
    """An onnxruntime CPU session of an ONNX file or bytes, with ``threads`` intra-op threads
    (default: as many as PyTorch uses, so both are timed on the same cores)."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model, opts, providers=['CPUExecutionProvider'])


def onnx_runner(session, inputs: torch.Tensor) -> Callable[[], list]:
    """A no-argument callable running ``session`` on ``inputs`` (for the latency rounds)."""
    feed = {session.get_inputs()[0].name: inputs.detach().cpu().numpy()}
    return lambda: session.run(None, feed)


def compare_onnx(module: nn.Module, session, inputs: torch.Tensor, tensor_mode: bool = False,
                 tol: float = ONNX_TOL) -> float:
    """Max abs difference of onnxruntime vs PyTorch outputs on ``inputs``; ValueError naming the
    output that differs (count, shape or value beyond ``tol`` of its scale, see module doc)."""
    module, inputs = _on_cpu(module), inputs.cpu()
    was = module.training
    module.eval()
    try:
        ref = _torch_outputs(_Flat(module, tensor_mode), inputs)
    finally:
        module.train(was)
    got = onnx_runner(session, inputs)()
    if len(got) != len(ref):
        raise ValueError(f'onnx: {len(got)} outputs in onnxruntime, {len(ref)} in PyTorch')
    worst = 0.0
    for i, (g, r) in enumerate(zip(got, ref)):
        r = r.detach().float().cpu()
        if tuple(g.shape) != tuple(r.shape):
            raise ValueError(f'onnx: output{i} has shape {tuple(g.shape)} in onnxruntime, {tuple(r.shape)} in PyTorch')
        d = float((torch.from_numpy(g).float() - r).abs().max()) if r.numel() else 0.0
        scale = max(1.0, float(r.abs().max()) if r.numel() else 0.0)
        if not d <= tol * scale:  # also catches NaN
            raise ValueError(f'onnx: output{i} {tuple(r.shape)} differs from PyTorch by {d:.3g} '
                             f'(allowed {tol:g} x {scale:.3g})')
        worst = max(worst, d)
    return worst


def export_checked(model: nn.Module, backbone: nn.Module, inputs: torch.Tensor, out_dir: str,
                   name: str) -> Tuple[str, str, float, Optional[str]]:
    """Export the whole ``model`` in tensor mode to ``out_dir/name.onnx``, or, if that fails,
    its ``backbone`` to ``out_dir/name_backbone.onnx``; check it in onnxruntime.

    Returns (path, 'model' or 'backbone', max abs difference, why the whole model did not
    export or None). A backbone that does not export or match raises.
    """
    why = None
    try:
        path = export_onnx(model, inputs, osp.join(out_dir, f'{name}.onnx'), tensor_mode=True)
        return path, 'model', compare_onnx(model, onnx_session(path), inputs, tensor_mode=True), None
    except Exception as e:  # noqa: BLE001 -- any exporter/runtime failure: fall back to the backbone
        why = f'{type(e).__name__}: {(str(e).strip().splitlines() or [""])[0][:200]}'
        stale = osp.join(out_dir, f'{name}.onnx')
        if osp.isfile(stale):
            os.remove(stale)
    path = export_onnx(backbone, inputs, osp.join(out_dir, f'{name}_backbone.onnx'))
    return path, 'backbone', compare_onnx(backbone, onnx_session(path), inputs), why


def onnx_sessions(modules: Sequence[nn.Module], inputs: torch.Tensor) -> list:
    """In-memory onnxruntime sessions of ``modules`` exported on ``inputs``."""
    return [onnx_session(export_onnx(m, inputs)) for m in modules]
