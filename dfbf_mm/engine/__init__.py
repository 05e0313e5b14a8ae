"""glue: the runner and the hooks that call prune → synthesize → distill → export."""
from .dfbf_config import read_dfbf_block, stock_config, to_runner_config
from .hooks import ChannelSpecHook, ExportHook, SyntheticDataHook
from .runner import DataFreeDistillRunner

__all__ = ['DataFreeDistillRunner', 'ChannelSpecHook', 'ExportHook', 'SyntheticDataHook',
           'read_dfbf_block', 'stock_config', 'to_runner_config']
