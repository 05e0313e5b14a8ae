"""ExportHook: after training, write the student as a stock model and profile it.

Writes ``<work_dir>/export/``: the deploy config (the stock config with ``model.backbone``
replaced by ``PrunedBackbone``), the pruned checkpoint and the channel spec — evaluable with the
stock ``tools/test.py`` — plus a params/FLOPs/CPU-latency table of teacher vs student, and with
``onnx=True`` the student as ONNX (``<name>.onnx``, the whole model in tensor mode, or
``<name>_backbone.onnx`` where the whole model does not export), checked in onnxruntime.
"""
import os.path as osp

from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from ...registry import HOOKS
from ...stock_model import input_channels


@HOOKS.register_module()
class ExportHook(Hook):
    """Exports the student after training (rank 0 only).

    Args:
        out_dir: folder under the work dir.
        name: file stem of the exported config/checkpoint/spec.
        profile: measure params, FLOPs and CPU latency of teacher vs student backbone.
        onnx: also export the student to ONNX, check it in onnxruntime against PyTorch
            (:mod:`dfbf_mm.export.onnx`) and add onnxruntime latency rows to the profile.
    """

    priority = 'LOW'

    def __init__(self, out_dir: str = 'export', name: str = 'pruned', profile: bool = True, onnx: bool = False):
        self.out_dir = out_dir
        self.name = name
        self.profile = profile
        self.onnx = onnx

    def after_train(self, runner) -> None:
        if not is_main_process():
            return
        from ...export import export_pruned_model, profile_backbones
        from ..dfbf_config import stock_config
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        out_dir = osp.join(runner.work_dir, self.out_dir)
        model.before_export()
        paths = export_pruned_model(model.student, stock_config(runner.cfg), model.channel_spec,
                                    out_dir, meta=dict(dfbf_taps=model.taps), name=self.name)
        runner.message_hub.update_info('dfbf_export', paths)
        runner.logger.info(f'exported the pruned model: {paths}')
        size = runner.cfg.model['input_size']
        channels = input_channels(model.teacher)
        if self.onnx:
            import torch
            from ...export.onnx import export_checked
            try:
                path, what, diff, why = export_checked(model.student, model.student.backbone,
                                                       torch.randn(1, channels, *size), out_dir, self.name)
            except Exception as e:  # noqa: BLE001 -- the stock export above stands; say why in one line
                runner.logger.warning(f'ONNX export failed: {type(e).__name__}: {str(e).strip()[:300]}')
            else:
                paths['onnx'] = path
                runner.logger.info(f'ONNX ({what}): {path}, max abs diff to PyTorch {diff:.2e}'
                                   + (f' (the whole model did not export: {why})' if why else ''))
        if self.profile:
            rows, table = profile_backbones(model.teacher.backbone, model.student.backbone, size, onnx=self.onnx,
                                            in_channels=channels)
            runner.message_hub.update_info('dfbf_profile', rows)
            runner.logger.info('teacher vs student backbone\n' + table)
            with open(osp.join(out_dir, 'profile.md'), 'w') as f:
                f.write(table + '\n')
