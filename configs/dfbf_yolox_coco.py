# DFBF on YOLOX-s (COCO): prune the CSPDarknet backbone, fine-tune it data-free, evaluate with
# the stock COCO bbox mAP. Set `dfbf.teacher_checkpoint` to your trained YOLOX-s weights and
# `val_dataloader`/`test_dataloader` data_root to your COCO val set (training data is not used).
#     python tools/train.py configs/dfbf_yolox_coco.py
_base_ = 'mmdet::yolox/yolox_s_8xb8-300e_coco.py'
custom_imports = dict(imports=['dfbf_mm'], allow_failed_imports=False)
runner_type = 'DataFreeDistillRunner'

dfbf = dict(
    teacher_checkpoint='checkpoints/yolox_s_8x8_300e_coco_20211121_095711-4592a793.pth',
    # reference detection setting: base sparsity 0.1, layer-dependent rule
    pruner=dict(type='L1FilterPruner', sparsity=0.1, norm=1, layer_dependent=True),
    synthesizer=dict(type='DeepInversionSynthesizer', preset='detection'),
    synthetic_data=dict(num_images=1600, batch_size=16, image_size=(256, 256), seed=0),
    distill=dict(distance='l1', weights=2, bn='update',
                 # the frozen stock neck's outputs matched too: +0.63 mAP over eight draws on the
                 # digits detector at 0.5 uniform (docs/detection_finetuning.md)
                 neck_weight=1.0),
    schedule=dict(epochs=5, lr=0.01, lr_steps=[3]),
)
