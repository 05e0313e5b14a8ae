# DFBF on the top-down SimpleBaseline ResNet-50 (COCO keypoints), stock mmpose CocoMetric AP.
# Set `dfbf.teacher_checkpoint` and the COCO val data_root; training data is not used.
#     python tools/train.py configs/dfbf_simplebaseline_r50_coco_keypoint.py
# Synthesis: the meta-learned generator (20 teacher passes per image) with augmented, CutMixed
# views while fine-tuning: it matched DeepInversion (250 passes) on the digits benchmark
# (docs/synthesis_methods.md). The paper's DeepInversion: synthesizer=dict(type=
# 'DeepInversionSynthesizer', preset='pose') and no `views`.
_base_ = 'mmpose::body_2d_keypoint/topdown_heatmap/coco/td-hm_res50_8xb64-210e_coco-256x192.py'
custom_imports = dict(imports=['dfbf_mm'], allow_failed_imports=False)
runner_type = 'DataFreeDistillRunner'

dfbf = dict(
    teacher_checkpoint='checkpoints/td-hm_res50_8xb64-210e_coco-256x192-04af38ce_20220923.pth',
    pruner=dict(type='L1FilterPruner', sparsity=0.1, norm=1, layer_dependent=True),
    synthesizer=dict(type='GeneratorSynthesizer', preset='pose'),
    views=dict(flip=0.5, crop=0.5, jitter=0.2, mix='cutmix', mix_prob=0.5),
    synthetic_data=dict(num_images=1600, batch_size=16, image_size=(160, 128), seed=0),
    distill=dict(distance='l1', weights=8, bn='update'),  # weights 8 = reference for pose
    schedule=dict(epochs=200, lr=0.01, lr_steps=[150]),
)
