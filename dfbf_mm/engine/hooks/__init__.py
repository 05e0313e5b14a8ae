from .channel_spec_hook import ChannelSpecHook
from .export_hook import ExportHook
from .online_synthesis_hook import OnlineSynthesisHook
from .strict_checkpoint_hook import StrictCheckpointHook
from .synthetic_data_hook import SyntheticDataHook

__all__ = ['ChannelSpecHook', 'ExportHook', 'OnlineSynthesisHook', 'StrictCheckpointHook', 'SyntheticDataHook']
