# LayerNorm classification teacher of the digits benchmark: a small Vision Transformer on the
# 32x32 digits of digits_cls_teacher.py (python -m tools.benchmarks.make_digits --out data/digits).
# Stock mmpretrain parts only: ImageClassifier, VisionTransformer (4x4 patches -> 8x8 tokens + a
# cls token, 64-dim embedding, 4 layers of 4 heads, FFN 256; no BatchNorm anywhere), the
# VisionTransformerClsHead on the cls token. AdamW + cosine, random-crop augmentation (no flips).
# Train it with
#   python -m tools.benchmarks.train_teacher vit   (or the stock mmpretrain tools/train.py).
_base_ = ['./digits_cls_teacher.py']

model = dict(
    _delete_=True,
    type='ImageClassifier',
    backbone=dict(
        type='VisionTransformer',
        arch=dict(embed_dims=64, num_layers=4, num_heads=4, feedforward_channels=256),
        img_size=32, patch_size=4, drop_rate=0.0, drop_path_rate=0.1, out_type='cls_token'),
    neck=None,
    head=dict(
        type='VisionTransformerClsHead', num_classes=10, in_channels=64,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0), topk=(1, )))

max_epochs = 60
optim_wrapper = dict(
    _delete_=True,
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
    paramwise_cfg=dict(
        norm_decay_mult=0.0, bias_decay_mult=0.0,
        custom_keys={'.cls_token': dict(decay_mult=0.0), '.pos_embed': dict(decay_mult=0.0)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=True, begin=0, end=5,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=5, end=max_epochs, T_max=max_epochs - 5,
         eta_min=1e-5, convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=10)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(type='CheckpointHook', interval=max_epochs, max_keep_ckpts=1))
