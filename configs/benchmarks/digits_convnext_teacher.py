# LayerNorm classification teacher of the digits benchmark: a small ConvNeXt on the 32x32 digits
# of digits_cls_teacher.py (python -m tools.benchmarks.make_digits --out data/digits).
# Stock mmpretrain parts only: ImageClassifier, ConvNeXt (2x2 patch stem, three stages of two
# blocks at widths 32-64-128, so the maps are 16, 8 and 4 pixels wide; LayerNorm2d, depthwise
# 7x7 convs and 4x inverted-bottleneck MLPs; no BatchNorm anywhere), the final norm on the map,
# global average pooling, linear head. AdamW + cosine, random-crop augmentation (no flips).
# Train it with
#   python -m tools.benchmarks.train_teacher convnext   (or the stock mmpretrain tools/train.py).
_base_ = ['./digits_cls_teacher.py']

model = dict(
    _delete_=True,
    type='ImageClassifier',
    backbone=dict(
        type='ConvNeXt', arch=dict(depths=[2, 2, 2], channels=[32, 64, 128]),
        stem_patch_size=2, drop_path_rate=0.1, gap_before_final_norm=False,
        out_indices=[2]),  # the last of 3 stages (a negative index assumes 4 stages)
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead', num_classes=10, in_channels=128,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0), topk=(1, )))

max_epochs = 60
optim_wrapper = dict(
    _delete_=True,
    optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0,
                       custom_keys={'.gamma': dict(decay_mult=0.0)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=True, begin=0, end=3,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=3, end=max_epochs, T_max=max_epochs - 3,
         eta_min=1e-5, convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=10)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(type='CheckpointHook', interval=max_epochs, max_keep_ckpts=1))
