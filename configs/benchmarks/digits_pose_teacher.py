# Keypoint teacher of the digits benchmark (python -m tools.benchmarks.make_digits --out data/digits):
# top-down pose of stick figures drawn from real handwritten digits, 13 joints. Stock mmpose
# parts only: TopdownPoseEstimator (SimpleBaseline), a narrow ResNet-18 (BN everywhere, two 3x3
# convs per block), HeatmapHead, CocoDataset with its own metainfo, CocoMetric (keypoint AP)
# on the test split with ground-truth boxes.
# Train it with  python -m tools.benchmarks.train_teacher pose  (or mmpose's tools/train.py).
_base_ = ['mmpose::_base_/default_runtime.py']

data_root = 'data/digits/'  # override with train_teacher.py --data or the `data_root` variable
metainfo = dict(from_file='{{fileDirname}}/digits_pose_metainfo.py')

codec = dict(type='MSRAHeatmap', input_size=(64, 64), heatmap_size=(16, 16), sigma=1)

model = dict(
    type='TopdownPoseEstimator',
    # mean/std measured on the generated train canvases (channels alike: tints are symmetric)
    data_preprocessor=dict(
        type='PoseDataPreprocessor', mean=[101.0, 101.0, 101.0], std=[40.7, 40.7, 40.7],
        bgr_to_rgb=False),
    backbone=dict(type='ResNet', depth=18, stem_channels=16, base_channels=16,
                  out_indices=(3, )),
    head=dict(
        type='HeatmapHead', in_channels=128, out_channels=13, deconv_out_channels=(64, 64, 64),
        deconv_kernel_sizes=(4, 4, 4),
        loss=dict(type='KeypointMSELoss', use_target_weight=True), decoder=codec),
    test_cfg=dict(flip_test=True, flip_mode='heatmap', shift_heatmap=True))

train_pipeline = [
    dict(type='LoadImage'),
    dict(type='GetBBoxCenterScale'),
    dict(type='RandomFlip', direction='horizontal'),
    dict(type='RandomBBoxTransform', shift_factor=0.1, scale_factor=(0.8, 1.2),
         rotate_factor=20.0),
    dict(type='TopdownAffine', input_size=codec['input_size']),
    dict(type='GenerateTarget', encoder=codec),
    dict(type='PackPoseInputs'),
]
val_pipeline = [
    dict(type='LoadImage'),
    dict(type='GetBBoxCenterScale'),
    dict(type='TopdownAffine', input_size=codec['input_size']),
    dict(type='PackPoseInputs'),
]

train_dataloader = dict(
    batch_size=64,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(
        type='CocoDataset', data_root=data_root, data_mode='topdown', metainfo=metainfo,
        ann_file='pose/annotations/train.json', data_prefix=dict(img='pose/images/train/'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=64,
    num_workers=0,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False, round_up=False),
    dataset=dict(
        type='CocoDataset', data_root=data_root, data_mode='topdown', metainfo=metainfo,
        ann_file='pose/annotations/test.json', data_prefix=dict(img='pose/images/test/'),
        test_mode=True, pipeline=val_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='CocoMetric', ann_file=data_root + 'pose/annotations/test.json')
test_evaluator = val_evaluator

max_epochs = 10
optim_wrapper = dict(optimizer=dict(type='Adam', lr=2e-3))
param_scheduler = [
    dict(type='LinearLR', begin=0, end=100, start_factor=0.01, by_epoch=False),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, T_max=max_epochs, eta_min=2e-5),
]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=max_epochs)
val_cfg = dict()
test_cfg = dict()

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(type='CheckpointHook', interval=max_epochs, max_keep_ckpts=1))
randomness = dict(seed=0, deterministic=False)
