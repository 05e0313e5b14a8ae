# Classification teacher of the digits benchmark (python -m tools.benchmarks.make_digits --out data/digits).
# The first stage downsamples (strides 2,2,2,2): the 32x32 images are 8x8 scans upsampled, and
# the 4x cheaper model keeps training and DeepInversion within CPU minutes.
# Stock mmpretrain parts only: ImageClassifier, a narrow CIFAR-style ResNet-18 (BN everywhere,
# two 3x3 convs per block, so pruning has inner channels), global average pooling, linear head,
# CustomDataset over 32x32 PNGs, Accuracy. Train it with
#   python -m tools.benchmarks.train_teacher cls   (or the stock mmpretrain tools/train.py).
_base_ = ['mmpretrain::_base_/default_runtime.py']

data_root = 'data/digits/'  # override with train_teacher.py --data or the `data_root` variable
classes = ('0', '1', '2', '3', '4', '5', '6', '7', '8', '9')

# Grey scans replicated to 3 channels; mean/std measured on the generated train images.
data_preprocessor = dict(
    num_classes=10, mean=[80.3, 80.3, 80.3], std=[91.8, 91.8, 91.8], to_rgb=False)

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='ResNet_CIFAR', depth=18, stem_channels=16, base_channels=16, num_stages=4,
        strides=(2, 2, 2, 2), out_indices=(3, ), style='pytorch'),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead', num_classes=10, in_channels=128,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0), topk=(1, )))

# No flips: a mirrored digit is another (or no) digit.
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomCrop', crop_size=32, padding=3),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='PackInputs'),
]

train_dataloader = dict(
    batch_size=64,
    num_workers=0,
    dataset=dict(
        type='CustomDataset', data_root=data_root, ann_file='cls/train.txt',
        data_prefix='cls/train', classes=classes, pipeline=train_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=True))
val_dataloader = dict(
    batch_size=128,
    num_workers=0,
    dataset=dict(
        type='CustomDataset', data_root=data_root, ann_file='cls/test.txt',
        data_prefix='cls/test', classes=classes, pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False))
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_dataloader = val_dataloader
test_evaluator = val_evaluator

max_epochs = 15
optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=5e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=20),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, T_max=max_epochs, eta_min=1e-4),
]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=5)
val_cfg = dict()
test_cfg = dict()

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(type='CheckpointHook', interval=max_epochs, max_keep_ckpts=1))
randomness = dict(seed=0, deterministic=False)
