"""ChannelSpecHook: store the student's channel spec in every checkpoint's meta.

``--resume`` reads it back before the model is built (``dfbf_config.resume_channel_spec``), so
the student gets the pruned structure of the checkpoint it continues from.
"""
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from ...registry import HOOKS


@HOOKS.register_module()
class ChannelSpecHook(Hook):
    priority = 'VERY_LOW'

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        checkpoint.setdefault('meta', {})['dfbf_channel_spec'] = model.channel_spec
