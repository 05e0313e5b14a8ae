"""Turn "a stock config + a ``dfbf`` block" into the config MMEngine's Runner is built from.

The user keeps their stock mmdet/mmpose/mmpretrain config (model, val/test data, evaluators,
visualizer) and adds one block::

    dfbf = dict(teacher_checkpoint=..., pruner=dict(...), synthesizer=dict(...),
                synthetic_data=dict(...), distill=dict(...), schedule=dict(...))

This module replaces the model by a ``DataFreeDistiller``, the train dataloader by the
synthetic-image dataset, the schedule by the DFBF one, and adds the dfbf hooks. Everything else
of the stock config is kept.
"""
import copy
import os.path as osp

from mmengine.config import Config
from mmengine.runner.checkpoint import _load_checkpoint, find_latest_checkpoint

from ..config_utils import plain
from ..pruning import deploy_backbone_cfg
from ..registry import MODELS, SYNTHESIZERS
from ..schema import build_checked, read_dfbf
from ..stock_model import TASK_OF_SCOPE, config_scope, enter_scope, stock_model_cfg
from ..synthesis.inversion_target import check_synthesis_sizes

# keys this module replaces; stock_config() restores their stock values (the deploy config)
STOCK_TRAINING_KEYS = ('train_dataloader', 'train_cfg', 'optim_wrapper', 'param_scheduler',
                       'auto_scale_lr', 'default_hooks', 'custom_hooks', 'load_from', 'resume')
REWRITTEN_KEYS = STOCK_TRAINING_KEYS + ('model', 'data_preprocessor')
# keys this module adds (the saved stock values, the task) or that only a dfbf run reads
ADDED_KEYS = ('dfbf_stock', 'dfbf_task', 'dfbf', 'runner_type')


def read_dfbf_block(cfg: Config) -> dict:
    """The validated ``dfbf`` block with defaults filled in (``dfbf_mm.schema``)."""
    return read_dfbf(cfg.get('dfbf'))


def resume_channel_spec(cfg: Config):
    """The channel spec stored in the checkpoint a ``--resume`` run continues from, if any."""
    if not cfg.get('resume', False):
        return None
    path = cfg.get('load_from') or find_latest_checkpoint(cfg.work_dir)
    if not path or not osp.isfile(path):
        return None
    meta = _load_checkpoint(path, map_location='cpu').get('meta', {})
    return meta.get('dfbf_channel_spec')


def train_dataloader(dfbf: dict, stock_loader, work_dir: str) -> dict:
    """The train dataloader for ``dfbf.train_data`` (see TRAIN_DATA)."""
    data = dfbf['synthetic_data']
    train_batch = data['train_batch_size'] or data['batch_size']
    if dfbf['train_data'] == 'real':
        if not stock_loader:
            raise ValueError("dfbf.train_data: 'real' needs the stock config's train_dataloader")
        loader = copy.deepcopy(stock_loader)
        loader['batch_size'] = train_batch
        loader['dataset']['indices'] = data['num_images']  # an equal-size real subset
        return loader
    if dfbf['train_data'] == 'noise':
        dataset = dict(type='NoiseImageDataset', num_images=data['num_images'],
                       image_size=data['image_size'], seed=data['seed'])
    else:
        dataset = dict(
            type='SyntheticImageDataset', num_images=data['num_images'],
            batch_size=data['batch_size'], image_size=data['image_size'],
            synthesizer=dfbf['synthesizer'], seed=data['seed'], num_classes=data['num_classes'],
            invert=data['invert'],
            cache_dir=data['cache_dir'] or osp.join(work_dir, 'synthetic_cache'))
    return dict(
        batch_size=train_batch,
        num_workers=0,  # images come from an in-memory cache; workers would only copy it
        sampler=dict(type='DefaultSampler', shuffle=True),
        collate_fn=dict(type='pseudo_collate'),
        dataset=dataset)


def _backbone_class(model_cfg: dict, scope: str):
    """The class of ``model_cfg['backbone']`` (a type name resolves in ``scope``), or None."""
    kind = (model_cfg.get('backbone') or {}).get('type')
    if isinstance(kind, type):
        return kind
    with MODELS.switch_scope_and_registry(scope) as registry:  # as MODELS.build resolves it
        return registry.get(kind) if isinstance(kind, str) else None


def to_runner_config(cfg: Config) -> Config:
    """The Runner config of a dfbf experiment (see module docstring)."""
    cfg = copy.deepcopy(cfg)
    dfbf = read_dfbf_block(cfg)
    # what export needs to write a stock (deploy) config again after training
    cfg.dfbf_stock = {k: plain(cfg[k]) for k in STOCK_TRAINING_KEYS if k in cfg}
    cfg.dfbf_stock['model'] = stock_model_cfg(cfg)
    scope = config_scope(cfg)
    enter_scope(scope)
    # RepVGG & co: the student is the fused form (pruning.build_student), which the export rebuilds
    deploy_backbone_cfg(cfg.dfbf_stock['model'], _backbone_class(cfg.dfbf_stock['model'], scope))
    task = TASK_OF_SCOPE[scope]
    data, schedule = dfbf['synthetic_data'], dfbf['schedule']
    work_dir = cfg.get('work_dir') or osp.join('work_dirs', 'dfbf')

    if dfbf['train_data'] == 'synthetic':  # fail now, not after loading and pruning
        synthesizer = build_checked(SYNTHESIZERS, dfbf['synthesizer'], 'dfbf.synthesizer')
        check_synthesis_sizes(stock_model_cfg(cfg), task, synthesizer, data['image_size'],
                              data['invert'])

    cfg.model = dict(
        type='DataFreeDistiller',
        model=stock_model_cfg(cfg),
        teacher_checkpoint=dfbf['teacher_checkpoint'],
        pruner=dfbf['pruner'],
        input_size=data['image_size'],
        distill=dfbf['distill'],
        overparam=dfbf['overparam'],
        sp_loss=dfbf['sp_loss'],
        raw_inputs=dfbf['train_data'] == 'real',
        views=dfbf['views'],
        channel_spec=resume_channel_spec(cfg))
    cfg.data_preprocessor = None  # merged into the stock model above; the distiller has its own

    cfg.train_dataloader = train_dataloader(dfbf, cfg.dfbf_stock.get('train_dataloader'),
                                            work_dir)

    epochs = schedule['epochs']
    cfg.train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=epochs,
                         val_interval=schedule['val_interval'] or epochs)
    wrapper = plain(cfg.get('optim_wrapper') or {})
    amp = wrapper.get('type') == 'AmpOptimWrapper'  # set by the stock tools' --amp
    cfg.optim_wrapper = dict(
        type='AmpOptimWrapper' if amp else 'OptimWrapper',
        optimizer=dict(type='SGD', lr=schedule['lr'], momentum=schedule['momentum'],
                       weight_decay=schedule['weight_decay']))
    if amp:
        cfg.optim_wrapper['loss_scale'] = wrapper.get('loss_scale', 'dynamic')
    cfg.param_scheduler = [dict(type='MultiStepLR', by_epoch=True, gamma=schedule['gamma'],
                                milestones=list(schedule['lr_steps']))]
    cfg.auto_scale_lr = None

    default_hooks = plain(cfg.get('default_hooks') or {})
    checkpoint = dict(default_hooks.get('checkpoint') or dict(type='CheckpointHook'))
    checkpoint.update(interval=schedule['checkpoint_interval'], by_epoch=True)
    checkpoint.pop('save_best', None)
    default_hooks['checkpoint'] = checkpoint
    cfg.default_hooks = default_hooks

    dfbf_hooks = [dict(type='ChannelSpecHook'), dict(type='ExportHook', **dfbf['export'])]
    if dfbf['online'] is not None:  # after the hooks above: the student is this epoch's
        dfbf_hooks.append(dict(type='OnlineSynthesisHook', task=task, **dfbf['online']))
    if dfbf['train_data'] == 'synthetic':
        dfbf_hooks.insert(0, dict(type='SyntheticDataHook', task=task))
    stock_hooks = plain(cfg.get('custom_hooks') or []) if dfbf['keep_custom_hooks'] else []
    cfg.custom_hooks = stock_hooks + dfbf_hooks
    cfg.dfbf_task = task
    return cfg


def stock_config(runner_cfg: Config) -> Config:
    """The user's stock config again (without the dfbf block), from a runner config."""
    cfg = copy.deepcopy(runner_cfg)
    stock = plain(cfg['dfbf_stock'])
    for key in REWRITTEN_KEYS + ADDED_KEYS:
        cfg.pop(key, None)
    for key, value in stock.items():  # the stock model has its data_preprocessor merged in
        cfg[key] = value
    return cfg
