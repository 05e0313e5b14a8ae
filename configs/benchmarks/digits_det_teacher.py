# Detection teacher of the digits benchmark (python -m tools.benchmarks.make_digits --out data/digits):
# 128x128 canvases, 1-4 handwritten digits each, 10 classes. Stock mmdet parts only: a YOLOX
# of CSPDarknet (deepen 0.33, widen 0.125: stage widths 16/32/64/128, BN in every conv),
# YOLOXPAFPN and YOLOXHead, CocoDataset and CocoMetric (bbox mAP) on the test split.
# Train it with  python -m tools.benchmarks.train_teacher det  (or mmdet's tools/train.py).
_base_ = ['mmdet::_base_/default_runtime.py']

data_root = 'data/digits/'  # override with train_teacher.py --data or the `data_root` variable
classes = ('0', '1', '2', '3', '4', '5', '6', '7', '8', '9')
img_scale = (128, 128)  # width, height
norm_cfg = dict(type='BN', momentum=0.03, eps=0.001)

model = dict(
    type='YOLOX',
    # Normalised input (mean/std measured on the generated train canvases, channels alike as
    # the tints are symmetric), so DeepInversion's N(0, 1) start covers the pixel range.
    data_preprocessor=dict(
        type='DetDataPreprocessor', mean=[111.3, 111.3, 111.3], std=[44.5, 44.5, 44.5],
        bgr_to_rgb=False, pad_size_divisor=32),
    backbone=dict(
        type='CSPDarknet', deepen_factor=0.33, widen_factor=0.125, out_indices=(2, 3, 4),
        use_depthwise=False, spp_kernal_sizes=(5, 9, 13), norm_cfg=norm_cfg,
        act_cfg=dict(type='Swish')),
    neck=dict(
        type='YOLOXPAFPN', in_channels=[32, 64, 128], out_channels=32, num_csp_blocks=1,
        use_depthwise=False, upsample_cfg=dict(scale_factor=2, mode='nearest'),
        norm_cfg=norm_cfg, act_cfg=dict(type='Swish')),
    bbox_head=dict(
        type='YOLOXHead', num_classes=10, in_channels=32, feat_channels=32, stacked_convs=2,
        strides=(8, 16, 32), use_depthwise=False, norm_cfg=norm_cfg, act_cfg=dict(type='Swish'),
        loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=True, reduction='sum', loss_weight=1.0),
        loss_bbox=dict(type='IoULoss', mode='square', eps=1e-16, reduction='sum', loss_weight=5.0),
        loss_obj=dict(type='CrossEntropyLoss', use_sigmoid=True, reduction='sum', loss_weight=1.0),
        loss_l1=dict(type='L1Loss', reduction='sum', loss_weight=1.0)),
    train_cfg=dict(assigner=dict(type='SimOTAAssigner', center_radius=2.5)),
    test_cfg=dict(score_thr=0.01, nms=dict(type='nms', iou_threshold=0.65)))

# No flips (a mirrored digit is another digit); mild affine jitter and HSV changes instead.
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomAffine', max_rotate_degree=5.0, max_translate_ratio=0.1,
         scaling_ratio_range=(0.8, 1.25), max_shear_degree=2.0, border=(0, 0),
         border_val=(111, 111, 111)),
    dict(type='YOLOXHSVRandomAug'),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(2, 2), keep_empty=False),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]

train_dataloader = dict(
    batch_size=32,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=True),
    batch_sampler=dict(type='AspectRatioBatchSampler'),
    dataset=dict(
        type='CocoDataset', data_root=data_root, metainfo=dict(classes=classes),
        ann_file='det/annotations/train.json', data_prefix=dict(img='det/images/train/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=2), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=32,
    num_workers=0,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type='CocoDataset', data_root=data_root, metainfo=dict(classes=classes),
        ann_file='det/annotations/test.json', data_prefix=dict(img='det/images/test/'),
        test_mode=True, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(
    type='CocoMetric', ann_file=data_root + 'det/annotations/test.json', metric='bbox')
test_evaluator = val_evaluator

max_epochs = 5
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.004, weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, T_max=max_epochs, eta_min=4e-5),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=max_epochs)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20),
    checkpoint=dict(type='CheckpointHook', interval=max_epochs, max_keep_ckpts=1))
randomness = dict(seed=0, deterministic=False)
