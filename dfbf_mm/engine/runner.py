"""DataFreeDistillRunner: MMEngine's Runner, built from a stock config plus a ``dfbf`` block.

All it changes is how the config becomes a runner (``to_runner_config``): the loops,
logging, checkpointing, distributed launch and evaluators are MMEngine's and the stock
package's. Selected by ``runner_type = 'DataFreeDistillRunner'`` in a config, so the stock
``tools/train.py`` of mmdet / mmpose / mmpretrain builds it through ``RUNNERS``.
"""
from mmengine.runner import Runner

from ..registry import RUNNERS
from .dfbf_config import to_runner_config


@RUNNERS.register_module()
class DataFreeDistillRunner(Runner):
    """Runner for data-free pruning + backbone distillation (see ``dfbf_config``)."""

    @classmethod
    def from_cfg(cls, cfg) -> 'DataFreeDistillRunner':
        return super().from_cfg(to_runner_config(cfg))
