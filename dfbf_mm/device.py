"""What depends on the model's device: the autocast precision, and seeding that leaves devices alone.

- :func:`autocast_dtype` / :func:`autocast_for`: bf16 autocast only where the device runs bf16
  natively (CUDA compute capability >= 8.0: A100, H100, RTX 30xx and later), asked of the
  model's own device (``torch.cuda.get_device_capability(device)``), not of the current one.
  ``torch.cuda.is_bf16_supported()`` also counts emulated bf16, which on a V100 or T4 is slower
  than fp32. Older GPUs stay in fp32: their fast type, fp16, would need loss scaling for the
  image gradients the synthesizers follow (a small BN-statistics gradient underflows in fp16).
  CPU and other devices: fp32. One log line per device says which and why.
- :func:`cpu_seeded`: ``torch.manual_seed`` inside ``fork_rng(devices=[])`` re-seeds every CUDA
  generator and restores none of them; this seeds only the CPU default generator (modules are
  built on the CPU and then moved) and restores it afterwards.
"""
import contextlib
import logging
from typing import Callable, Optional, Tuple

import torch

NATIVE_BF16_CAPABILITY = (8, 0)
_logged = set()


def autocast_dtype(device) -> Tuple[Optional[torch.dtype], str]:
    """``(dtype or None for fp32, why)`` of autocast on ``device``."""
    device = torch.device(device)
    if device.type != 'cuda':
        return None, f'autocast is used on CUDA only, {device.type} runs fp32'
    capability = tuple(torch.cuda.get_device_capability(device))
    cc = '.'.join(map(str, capability))
    if capability >= NATIVE_BF16_CAPABILITY:
        return torch.bfloat16, f'compute capability {cc} runs bf16 natively'
    return None, (f'compute capability {cc} < 8.0 has no native bf16 (emulated: slower than fp32), '
                  'and fp16 would need loss scaling for the image gradients')


def autocast_for(device, amp: bool, what: str = 'synthesis') -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of the autocast context for ``device`` (``amp`` False: no autocast)."""
    if not amp:
        return contextlib.nullcontext
    dtype, why = autocast_dtype(device)
    key = (what, str(device), dtype)
    if key not in _logged:
        _logged.add(key)
        from mmengine.logging import print_log
        print_log(f'{what}: amp on {device}: {"bf16" if dtype else "fp32"} ({why})', logger='current',
                  level=logging.INFO)
    if dtype is None:
        return contextlib.nullcontext
    device_type = torch.device(device).type
    return lambda: torch.autocast(device_type, dtype=dtype)


@contextlib.contextmanager
def cpu_seeded(seed: int):
    """Inside: the CPU default generator seeded with ``seed``; afterwards as it was. No other
    device's generator is touched."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(int(seed))
        yield
