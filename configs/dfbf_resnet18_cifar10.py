# DFBF on ResNet-18 (CIFAR-10), the paper's classification setting: sparsity 0.5,
# 12,800 synthetic 32x32 images (50 batches of 256), 200 epochs, weights preset 0.
# Set `dfbf.teacher_checkpoint` and the CIFAR-10 test data_root; training data is not used.
#     python tools/train.py configs/dfbf_resnet18_cifar10.py
# Synthesis: the meta-learned generator (20 teacher passes per image) with augmented, CutMixed
# views while fine-tuning: it matched DeepInversion (200 passes) on the digits benchmark
# (docs/synthesis_methods.md). The paper's DeepInversion: synthesizer=dict(type=
# 'DeepInversionSynthesizer', preset='classification') and no `views`.
_base_ = 'mmpretrain::resnet/resnet18_8xb16_cifar10.py'
custom_imports = dict(imports=['dfbf_mm'], allow_failed_imports=False)
runner_type = 'DataFreeDistillRunner'

dfbf = dict(
    teacher_checkpoint='checkpoints/resnet18_b16x8_cifar10_20210528-bd6371c8.pth',
    pruner=dict(type='L1FilterPruner', sparsity=0.5, norm=1, layer_dependent=True),
    synthesizer=dict(type='GeneratorSynthesizer', preset='classification'),
    views=dict(flip=0.5, crop=0.5, jitter=0.2, mix='cutmix', mix_prob=0.5),
    synthetic_data=dict(num_images=12800, batch_size=256, image_size=(32, 32), seed=0,
                        num_classes=10),
    distill=dict(distance='l1', weights=0, bn='update'),
    schedule=dict(epochs=200, lr=0.01, lr_steps=[150]),
)
