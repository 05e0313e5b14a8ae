"""mmcv's compiled ops through torchvision (or PyTorch) where mmcv has no kernels for the device.

mmcv dispatches each compiled op by device; a wheel built with CPU ops only (ours) fails on a
CUDA tensor (``nms_impl: implementation for device cuda:0 not found``), so a detector would
train on a GPU and then crash in its first validation. Importing :mod:`dfbf_mm` (every dfbf
config and every exported deploy config does) wraps the entry points of ``mmcv._ext`` that the
stock detectors call, so every mmcv caller goes through them (mmdet's ``batched_nms`` in the
dense heads and ``multiclass_nms``, ``RoIAlign`` in the RoI extractors, DCN layers,
``MultiScaleDeformableAttention``):

================================  ==================================================
``mmcv._ext``                     on a device mmcv has no kernels for
================================  ==================================================
``nms``                           ``torchvision.ops.nms`` (``offset=1``: boxes with x2, y2 + 1,
                                  the same IoU)
``roi_align_forward/backward``    ``torchvision.ops.roi_align`` (``pool_mode='avg'``; ``max``
                                  is refused in one line)
``deform_conv_*``,                ``torchvision.ops.deform_conv2d`` (with ``mask`` for the
``modulated_deform_conv_*``       modulated one)
``ms_deform_attn_*``              mmcv's own ``multi_scale_deformable_attn_pytorch``
================================  ==================================================

Backward passes recompute the fallback's forward under autograd. mmcv has kernels on CPU, and on
CUDA when it was built with CUDA ops (``mmcv.ops.get_compiling_cuda_version()`` is not
``'not available'``); the fallback serves CUDA otherwise and the devices torchvision has kernels
for that mmcv does not know (``meta``, ``mps``, ``xpu``); other devices stay with mmcv. One
warning line says when it is first used on a device. ``DFBF_MMCV_OPS``: ``auto`` (the default),
``torchvision`` (every device, CPU too) or ``mmcv`` (nothing wrapped).
"""
import contextlib
import functools
import logging
import os
from typing import Callable, Dict, Optional

import torch

MODES = ('auto', 'torchvision', 'mmcv')
FALLBACK_DEVICES = ('meta', 'mps', 'xpu')  # torchvision has kernels there, mmcv has none
_mode = 'auto'
_warned = set()
_original: Dict[str, Callable] = {}


def _env_mode() -> str:
    value = os.environ.get('DFBF_MMCV_OPS', 'auto')
    if value not in MODES:
        raise ValueError(f'DFBF_MMCV_OPS: {value!r} is not one of {", ".join(MODES)}')
    return value


@functools.lru_cache(None)
def mmcv_has_cuda_ops() -> bool:
    from mmcv.ops import get_compiling_cuda_version
    return get_compiling_cuda_version() != 'not available'


def uses_fallback(device: torch.device) -> bool:
    """Whether mmcv's ops on ``device`` run through the fallback (under the current mode)."""
    if _mode != 'auto':
        return _mode == 'torchvision'
    if device.type == 'cuda':
        return not mmcv_has_cuda_ops()
    return device.type in FALLBACK_DEVICES


@contextlib.contextmanager
def forced(mode: str):
    """Inside: the fallback decides by ``mode`` (``torchvision``: every device, CPU included)."""
    global _mode
    if mode not in MODES:
        raise ValueError(f'mode: {mode!r} is not one of {", ".join(MODES)}')
    previous, _mode = _mode, mode
    try:
        yield
    finally:
        _mode = previous


def _warn_once(device: torch.device) -> None:
    if device.type in _warned:
        return
    _warned.add(device.type)
    import mmcv
    from mmengine.logging import print_log
    why = ('DFBF_MMCV_OPS=torchvision' if _mode == 'torchvision' else
           f'mmcv {mmcv.__version__} has no {device.type} kernels'
           f'{"" if mmcv_has_cuda_ops() else " (built with CPU ops only)"}')
    print_log(f'dfbf_mm: {why}: nms, roi_align, deform_conv, modulated_deform_conv and '
              f'ms_deform_attn run through torchvision / PyTorch on {device.type}; other mmcv ops '
              'fail there (docs/gpu.md)', logger='current', level=logging.WARNING)


def _grads(fn: Callable, inputs, wanted, grad_output):
    """Gradients of ``fn(*inputs)`` for the inputs whose ``wanted`` is true (others None)."""
    leaves = [x.detach().requires_grad_(w) if w else x.detach() for x, w in zip(inputs, wanted)]
    with torch.enable_grad():
        out = fn(*leaves)
        grads = torch.autograd.grad(out, [x for x, w in zip(leaves, wanted) if w], grad_output)
    it = iter(grads)
    return [next(it) if w else None for w in wanted]


# ----------------------------------------------------------------------------- the fallbacks
def _nms(boxes, scores, iou_threshold, offset=0):
    from torchvision.ops import nms
    if offset:  # mmcv's widths x2 - x1 + 1: the same IoU as boxes one larger at x2, y2
        boxes = torch.cat([boxes[:, :2], boxes[:, 2:] + offset], 1)
    return nms(boxes, scores, float(iou_threshold))


def _roi_align_fn(spatial_scale, height, width, sampling_ratio, aligned):
    from torchvision.ops import roi_align
    return lambda x, rois: roi_align(x, rois, (height, width), spatial_scale, sampling_ratio, aligned)


def _check_avg(pool_mode, device) -> None:
    if pool_mode != 1:
        raise ValueError(f"RoIAlign: pool_mode='max' has no torchvision kernel (it averages) and mmcv "
                         f"has no {device.type} kernels; use pool_mode='avg' or mmcv built with CUDA "
                         "ops (docs/gpu.md)")


def _roi_align_forward(input, rois, output, argmax_y, argmax_x, aligned_height, aligned_width,
                       spatial_scale, sampling_ratio, pool_mode, aligned):
    _check_avg(pool_mode, input.device)
    fn = _roi_align_fn(spatial_scale, aligned_height, aligned_width, sampling_ratio, aligned)
    output.copy_(fn(input, rois))


def _roi_align_backward(grad_output, rois, argmax_y, argmax_x, grad_input, aligned_height,
                        aligned_width, spatial_scale, sampling_ratio, pool_mode, aligned):
    _check_avg(pool_mode, grad_output.device)
    n, c, h, w = grad_input.shape
    grad_input.add_(torch.ops.torchvision._roi_align_backward(
        grad_output, rois, spatial_scale, aligned_height, aligned_width, n, c, h, w,
        sampling_ratio, aligned))


def _deform_fn(dW, dH, padW, padH, dilationW, dilationH):
    from torchvision.ops import deform_conv2d

    def fn(input, offset, weight, mask=None, bias=None):
        return deform_conv2d(input, offset, weight, bias, stride=(dH, dW), padding=(padH, padW),
                             dilation=(dilationH, dilationW), mask=mask)
    return fn


def _deform_conv_forward(input, weight, offset, output, columns, ones, kW, kH, dW, dH, padW, padH,
                         dilationW, dilationH, group, deformable_group, im2col_step):
    output.copy_(_deform_fn(dW, dH, padW, padH, dilationW, dilationH)(input, offset, weight))


def _deform_conv_backward_input(input, offset, gradOutput, gradInput, gradOffset, weight, columns,
                                kW, kH, dW, dH, padW, padH, dilationW, dilationH, group,
                                deformable_group, im2col_step):
    fn = _deform_fn(dW, dH, padW, padH, dilationW, dilationH)
    g_input, g_offset, _ = _grads(fn, (input, offset, weight), (True, True, False), gradOutput)
    gradInput.add_(g_input)
    gradOffset.add_(g_offset)


def _deform_conv_backward_parameters(input, offset, gradOutput, gradWeight, columns, ones, kW, kH,
                                     dW, dH, padW, padH, dilationW, dilationH, group,
                                     deformable_group, scale, im2col_step):
    # mmcv passes no weight here: the output is linear in it, so any weight gives its gradient
    fn = _deform_fn(dW, dH, padW, padH, dilationW, dilationH)
    _, _, g_weight = _grads(fn, (input, offset, torch.zeros_like(gradWeight)), (False, False, True),
                            gradOutput)
    gradWeight.add_(g_weight, alpha=scale)


def _modulated_forward(input, weight, bias, ones, offset, mask, output, columns, kernel_h, kernel_w,
                       stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group,
                       deformable_group, with_bias):
    fn = _deform_fn(stride_w, stride_h, pad_w, pad_h, dilation_w, dilation_h)
    output.copy_(fn(input, offset, weight, mask, bias if with_bias else None))


def _modulated_backward(input, weight, bias, ones, offset, mask, columns, grad_input, grad_weight,
                        grad_bias, grad_offset, grad_mask, grad_output, kernel_h, kernel_w,
                        stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group,
                        deformable_group, with_bias):
    fn = _deform_fn(stride_w, stride_h, pad_w, pad_h, dilation_w, dilation_h)
    if with_bias:
        grads = _grads(fn, (input, offset, weight, mask, bias), (True,) * 5, grad_output)
    else:
        grads = _grads(lambda i, o, w, m: fn(i, o, w, m), (input, offset, weight, mask), (True,) * 4,
                       grad_output) + [None]
    for out, g in zip((grad_input, grad_offset, grad_weight, grad_mask, grad_bias), grads):
        if g is not None:
            out.add_(g)


def _msda_fn(value, shapes, locations, weights):
    from mmcv.ops.multi_scale_deform_attn import multi_scale_deformable_attn_pytorch
    return multi_scale_deformable_attn_pytorch(value, shapes, locations, weights)


def _ms_deform_attn_forward(value, value_spatial_shapes, value_level_start_index, sampling_locations,
                            attention_weights, im2col_step):
    return _msda_fn(value, value_spatial_shapes, sampling_locations, attention_weights)


def _ms_deform_attn_backward(value, value_spatial_shapes, value_level_start_index, sampling_locations,
                             attention_weights, grad_output, grad_value, grad_sampling_loc,
                             grad_attn_weight, im2col_step):
    grads = _grads(lambda v, s, w: _msda_fn(v, value_spatial_shapes, s, w),
                   (value, sampling_locations, attention_weights), (True, True, True), grad_output)
    for out, g in zip((grad_value, grad_sampling_loc, grad_attn_weight), grads):
        out.add_(g)


FALLBACKS = {
    'nms': _nms,
    'roi_align_forward': _roi_align_forward,
    'roi_align_backward': _roi_align_backward,
    'deform_conv_forward': _deform_conv_forward,
    'deform_conv_backward_input': _deform_conv_backward_input,
    'deform_conv_backward_parameters': _deform_conv_backward_parameters,
    'modulated_deform_conv_forward': _modulated_forward,
    'modulated_deform_conv_backward': _modulated_backward,
    'ms_deform_attn_forward': _ms_deform_attn_forward,
    'ms_deform_attn_backward': _ms_deform_attn_backward,
}


def _dispatching(name: str, original: Callable, fallback: Callable) -> Callable:
    @functools.wraps(original)
    def op(*args, **kwargs):
        device = args[0].device
        if not uses_fallback(device):
            return original(*args, **kwargs)
        _warn_once(device)
        return fallback(*args, **kwargs)
    op.dfbf_fallback = name
    return op


def install() -> Optional[str]:
    """Wrap ``mmcv._ext``'s entry points (once); returns why nothing was wrapped, else None."""
    global _mode
    _mode = _env_mode()
    if _mode == 'mmcv':
        return 'DFBF_MMCV_OPS=mmcv'
    try:
        import mmcv._ext as ext
    except ImportError:  # mmcv without compiled ops (mmcv-lite): mmdet cannot run at all
        return 'mmcv has no compiled ops (mmcv._ext)'
    for name, fallback in FALLBACKS.items():
        current = getattr(ext, name, None)
        if current is None or getattr(current, 'dfbf_fallback', None):
            continue
        _original[name] = current
        setattr(ext, name, _dispatching(name, current, fallback))
    return None
