"""DataFreeDistiller: a frozen teacher and its pruned student, as one MMEngine model.

Training (``forward(mode='loss')``, which both ``BaseModel.train_step`` and MMEngine's DDP
wrapper call) runs the teacher's and the student's *backbones* on a batch of synthetic images
that are already normalised, and returns the DFBF feature loss. Validation and testing run the
student's whole stock model (pruned backbone, untouched neck and head) through its own data
preprocessor, so the stock evaluators work unchanged.
"""
from typing import Optional, Sequence, Tuple

import torch
from mmengine.dist import get_dist_info
from mmengine.logging import MessageHub, print_log
from mmengine.model import BaseModel
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..pruning import build_student
from ..registry import MODELS
from ..schema import DISTILL, OVERPARAM, SP_LOSS, loss_config, views_block
from ..stock_model import build_teacher, input_channels, pixel_range
from ..utils import eval_mode, named_features, output_tensors
from .feature_taps import select_taps
from .lop import expand_model, merge_model, merged_copy
from .model_outputs import check_neck_outputs, neck_outputs
from .views import build_views


def backbone_features(backbone: nn.Module, images: torch.Tensor, taps: Sequence[str]):
    """Run ``backbone`` once; return ({tap: feature}, backbone outputs)."""
    return named_features(backbone, images, taps)


@MODELS.register_module()
class DataFreeDistiller(BaseModel):
    """Teacher/student pair for data-free backbone fine-tuning (DFBF §3).

    Args:
        model: the stock model config (data_preprocessor merged in).
        teacher_checkpoint: weights of the trained, unpruned model.
        pruner: a ``PRUNERS`` config applied to the student's backbone.
        input_size: (H, W) of the synthetic images; used to trace the backbone.
        distill: ``taps`` (name patterns, default: unpruned-width norm layers), ``distance``
            ('l1'), ``weights`` (reference preset 0..11 or (a, b)), ``out_weight`` (L_out, 0),
            ``bn`` ('update': student BN running stats adapt to the synthetic data; 'frozen':
            they stay the teacher's), ``neck_weight`` (the frozen stock neck runs on each
            backbone's outputs, its outputs matched; 0: off).
        channel_spec: build the student from this spec instead of pruning (used on resume;
            the weights then come from the resumed checkpoint).
        overparam: LOP (spec lop.md): ``ratio`` r, ``include``/``exclude`` name patterns
            (default: the backbone layers whose shape pruning changed), ``seed`` of the
            orthogonal factors. The student is expanded for fine-tuning; validation runs a
            merged copy and export merges in place, so both see the plain pruned architecture.
        sp_loss: similarity-preserving KD added to the loss: ``weight`` (gamma) and ``taps``:
            'features' (the DFBF taps, default), 'layers' (outputs of the pruned layers) or
            name patterns.
        raw_inputs: train batches are stock pipeline outputs (uint8 images + data samples, the
            real-data baseline) and go through the teacher's data preprocessor first.
        views: ``dfbf.views``: each training batch is replaced by a random augmented view of it
            (``views.BatchViews``) before the teacher and the student see it (off: None).
    """

    def __init__(self, model: dict, teacher_checkpoint: str, pruner: dict,
                 input_size: Tuple[int, int], distill: Optional[dict] = None,
                 channel_spec: Optional[dict] = None, overparam: Optional[dict] = None,
                 sp_loss: Optional[dict] = None, raw_inputs: bool = False,
                 views: Optional[dict] = None, init_cfg=None):
        super().__init__(data_preprocessor=dict(type='BaseDataPreprocessor'), init_cfg=init_cfg)
        # the schema's reading of the blocks (idempotent: the engine passes them read already)
        distill, overparam, sp_loss = DISTILL.read(distill), OVERPARAM.read(overparam), SP_LOSS.read(sp_loss)
        self.bn_policy = distill['bn']
        self.teacher = build_teacher(model, teacher_checkpoint)
        example = torch.zeros(1, input_channels(self.teacher), *input_size)
        self.student, self.channel_spec = build_student(self.teacher, example, pruner, channel_spec)

        self.teacher.requires_grad_(False)
        self.student.requires_grad_(False)
        self.student.backbone.requires_grad_(True)  # only the student backbone trains
        self.taps = select_taps(self.teacher.backbone, self.student.backbone, example, distill['taps'])
        loss = loss_config(distill)
        if not self.taps and loss.get('out_weight') is None:
            # no norm layer kept its width (CPM, a fused RepVGG): distil the backbone outputs
            loss['out_weight'] = 1.0
            print_log('dfbf.distill: no unpruned-width norm layer to tap; distilling the backbone '
                      'outputs (out_weight=1.0)', logger='current')
        self.loss = MODELS.build(loss)
        # the frozen stock neck on each backbone's outputs (model_outputs.py), if asked
        self.neck_loss = float(getattr(self.loss, 'neck_weight', 0)) > 0
        if self.neck_loss:
            with torch.no_grad(), eval_mode(self.teacher):  # eval: its BN statistics stay
                outs = output_tensors(self.teacher.backbone(example.expand(2, -1, -1, -1)))
                check_neck_outputs(self.teacher, outs)
        pruned_layers = self._pruned_layers()
        self.expanded = []
        if overparam:
            self.expanded = expand_model(
                self.student.backbone, overparam['ratio'],
                include=overparam['include'] or pruned_layers, exclude=overparam['exclude'],
                generator=torch.Generator().manual_seed(overparam['seed']))
        self.sp_taps, self.sp_loss = [], None
        if sp_loss:
            taps = sp_loss['taps']
            self.sp_taps = (self.taps if taps == 'features' else
                            pruned_layers if taps == 'layers' else
                            select_taps(self.teacher.backbone, self.student.backbone, example, taps))
            self.sp_loss = MODELS.build(dict(type=sp_loss['type'], loss_weight=sp_loss['weight']))
        self.raw_inputs = raw_inputs
        self.views = build_views(views_block(views), pixel_range(self.teacher))
        self._view_calls = 0  # the step of the views outside a runner (no 'iter' in the hub)
        self._merged_student = None  # cached merged copy of an expanded student, for eval

    def _pruned_layers(self):
        """Names of the student backbone's conv/linear layers whose shape pruning changed."""
        modules = dict(self.student.backbone.named_modules())
        return [n for n in self.channel_spec['modules']
                if isinstance(modules.get(n), (nn.Conv2d, nn.Linear))]

    def init_weights(self) -> None:
        """Nothing to initialise: both networks hold the teacher checkpoint's weights.

        ``Runner.train()`` calls ``init_weights()`` on the model; the stock ``init_cfg`` of the
        backbone/head would otherwise overwrite the trained weights with random ones.
        """

    def train(self, mode: bool = True):
        """Teacher always in eval mode; the student's BN follows ``distill.bn``.

        Stock backbones re-freeze stages and norms in their own ``train()`` (``frozen_stages``,
        ``norm_eval``); DFBF fine-tunes the whole pruned backbone, so that is undone here. The
        student's neck and head stay in eval mode: frozen copies of the teacher's (the neck
        loss runs the neck, and their BN statistics must stay what is exported).
        """
        super().train(mode)
        self.teacher.eval()
        self.__dict__['_merged_student'] = None  # weights may change from here on
        if mode:
            for name, child in self.student.named_children():
                if name != 'backbone':
                    child.eval()
            backbone = self.student.backbone
            backbone.requires_grad_(True)
            for m in backbone.modules():
                if isinstance(m, _BatchNorm):
                    m.train(self.bn_policy == 'update')
        return self

    def forward(self, inputs, data_samples=None, mode: str = 'loss'):
        if mode != 'loss':
            return self.eval_student()(inputs, data_samples, mode=mode)
        if self.raw_inputs:  # normalise like the stock model would (no batch augmentation)
            inputs = self.teacher.data_preprocessor(
                dict(inputs=inputs, data_samples=data_samples), False)['inputs']
        images = torch.stack(inputs) if isinstance(inputs, (list, tuple)) else inputs
        if self.views is not None:  # before the teacher: its features are the targets of this view
            images = self.views(images, self._view_step(), get_dist_info()[0])
        taps = list(dict.fromkeys(self.taps + self.sp_taps))
        with torch.no_grad():
            t_taps, t_outs = backbone_features(self.teacher.backbone, images, taps)
        s_taps, s_outs = backbone_features(self.student.backbone, images, taps)
        extra = {}
        if self.neck_loss:
            with torch.no_grad():
                t_neck = neck_outputs(self.teacher, t_outs)
            extra = dict(neck=(neck_outputs(self.student, s_outs), t_neck))
        losses = self.loss([s_taps[n] for n in self.taps], [t_taps[n] for n in self.taps],
                           s_outs, t_outs, **extra)
        if self.sp_loss is not None:
            losses['loss_sp'] = self.sp_loss([s_taps[n] for n in self.sp_taps],
                                             [t_taps[n] for n in self.sp_taps])
        return losses

    def _view_step(self) -> int:
        """The training iteration (MMEngine's message hub, so a resumed run continues the same
        views), else a count of the training forwards."""
        step = MessageHub.get_current_instance().get_info('iter')
        self._view_calls += 1
        return self._view_calls - 1 if step is None else int(step)

    def eval_student(self) -> nn.Module:
        """The student as deployed: an expanded student is evaluated as its merged copy."""
        if not self.expanded:
            return self.student
        if self.__dict__.get('_merged_student') is None:
            # kept out of the module tree: not a parameter holder, not in the state dict
            self.__dict__['_merged_student'] = merged_copy(self.student).eval()
        return self.__dict__['_merged_student']

    def val_step(self, data):
        return self.eval_student().val_step(data)

    def test_step(self, data):
        return self.eval_student().test_step(data)

    def before_export(self) -> None:
        """Merge LOP chains in place: the student becomes the plain pruned architecture."""
        if self.expanded:
            merge_model(self.student)
            self.expanded = []
