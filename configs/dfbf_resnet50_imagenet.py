# DFBF on ResNet-50 (ImageNet-1k), stock mmpretrain Accuracy (top-1).
# Set `dfbf.teacher_checkpoint` and the ImageNet val data_root; training data is not used.
# The whole classifier is inverted (with a class-balanced cross-entropy term).
#     python tools/train.py configs/dfbf_resnet50_imagenet.py
# Synthesis: the meta-learned generator (20 teacher passes per image) with augmented, CutMixed
# views while fine-tuning: it matched DeepInversion (200 passes) on the digits benchmark
# (docs/synthesis_methods.md). The paper's DeepInversion: synthesizer=dict(type=
# 'DeepInversionSynthesizer', preset='classification') and no `views`.
_base_ = 'mmpretrain::resnet/resnet50_8xb32_in1k.py'
custom_imports = dict(imports=['dfbf_mm'], allow_failed_imports=False)
runner_type = 'DataFreeDistillRunner'

dfbf = dict(
    teacher_checkpoint='checkpoints/resnet50_8xb32_in1k_20210831-ea4938fc.pth',
    pruner=dict(type='L1FilterPruner', sparsity=0.1, norm=1, layer_dependent=True),
    synthesizer=dict(type='GeneratorSynthesizer', preset='classification'),
    views=dict(flip=0.5, crop=0.5, jitter=0.2, mix='cutmix', mix_prob=0.5),
    synthetic_data=dict(num_images=1600, batch_size=32, image_size=(224, 224), seed=0,
                        num_classes=1000),
    distill=dict(distance='l1', weights=2, bn='update'),
    schedule=dict(epochs=5, lr=0.01, lr_steps=[3]),
)
