"""DataFreeDistillRunner: MMEngine's Runner, built from a stock config plus a ``dfbf`` block.

All it changes is how the config becomes a runner (``to_runner_config``): the loops,
logging, checkpointing, distributed launch and evaluators are MMEngine's and the stock
package's. Selected by ``runner_type = 'DataFreeDistillRunner'`` in a config, so the stock
``tools/train.py`` of mmdet / mmpose / mmpretrain builds it through ``RUNNERS``.

It also lets ``--launcher pytorch`` work on CPU-only machines (gloo): MMEngine 0.10.7's
``init_dist`` always calls ``torch.cuda.set_device`` and its DDP wrapper always passes
``device_ids``, both of which fail without a GPU.
"""
import atexit
import datetime

import torch
import torch.distributed as torch_dist
from mmengine.model import MMDistributedDataParallel, is_model_wrapper
from mmengine.runner import Runner

from ..registry import RUNNERS
from .dfbf_config import to_runner_config


def _cpu_distributed(runner: Runner) -> bool:
    return runner.distributed and not torch.cuda.is_available()


def _destroy_process_group() -> None:
    """Tear the process group down while the interpreter is still whole.

    The stock train tools exit without ``destroy_process_group``; gloo's worker threads then die
    in interpreter finalisation and a rank that exits first can abort with SIGABRT
    ("terminate called without an active exception", pytorch/pytorch#190489), failing a run
    whose training and export had finished. Tearing down while a peer is still at work (rank 0
    writes the export after the others are done) aborted a rank the same way, so gloo ranks first
    wait for each other; a peer that died is reported by the barrier and skipped.
    """
    if torch_dist.is_available() and torch_dist.is_initialized():
        if torch_dist.get_backend() == 'gloo':
            try:
                torch_dist.monitored_barrier(timeout=datetime.timedelta(minutes=30))
            except RuntimeError:
                pass
        torch_dist.destroy_process_group()


@RUNNERS.register_module()
class DataFreeDistillRunner(Runner):
    """Runner for data-free pruning + backbone distillation (see ``dfbf_config``)."""

    @classmethod
    def from_cfg(cls, cfg) -> 'DataFreeDistillRunner':
        return super().from_cfg(to_runner_config(cfg))

    def setup_env(self, env_cfg: dict) -> None:
        if _cpu_distributed(self) and not torch_dist.is_initialized():
            if self.launcher != 'pytorch':
                raise ValueError(f'launcher: {self.launcher!r} without a GPU is not supported; '
                                 "use 'pytorch' (torchrun) for CPU processes")
            dist_cfg = dict(env_cfg.get('dist_cfg') or {})
            dist_cfg.pop('backend', None)  # nccl needs GPUs; gloo is the CPU backend
            torch_dist.init_process_group(backend='gloo', **dist_cfg)
        super().setup_env(env_cfg)
        if self.distributed:
            atexit.register(_destroy_process_group)

    def wrap_model(self, model_wrapper_cfg, model):
        if not _cpu_distributed(self) or model_wrapper_cfg is not None or is_model_wrapper(model):
            return super().wrap_model(model_wrapper_cfg, model)
        return MMDistributedDataParallel(  # CPU modules take device_ids=None
            module=model.to('cpu'), broadcast_buffers=False,
            find_unused_parameters=self.cfg.get('find_unused_parameters', False))
