from .channel_spec_hook import ChannelSpecHook
from .export_hook import ExportHook
from .synthetic_data_hook import SyntheticDataHook

__all__ = ['ChannelSpecHook', 'ExportHook', 'SyntheticDataHook']
