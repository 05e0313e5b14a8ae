# DFBF on the digits vit teacher (LayerNorm, no BatchNorm): prune the Vision Transformer's FFN hidden channels (the residual stream and attention stay whole)
# to half of the backbone's MACs, invert the teacher into synthetic images (without BN
# statistics the inversion prior is the patch-similarity one, DeepInversionSynthesizer
# prior='auto'), fine-tune the pruned backbone on them. No real training image is read; the
# test split is used for evaluation only.
#     python tools/train.py configs/benchmarks/dfbf_digits_vit.py
# Benchmark: python -m tools.benchmarks.run --tasks vit --sparsities 0.5 --rules macs
_base_ = ['./digits_vit_teacher.py']
custom_imports = dict(imports=['dfbf_mm'], allow_failed_imports=False)
runner_type = 'DataFreeDistillRunner'

dfbf = dict(
    teacher_checkpoint='checkpoints/digits_vit_teacher.pth',
    pruner=dict(type='L1FilterPruner', target=dict(macs=0.5), norm=1, layer_dependent=False),
    synthesizer=dict(type='DeepInversionSynthesizer', preset='fast'),
    # the budget of dfbf_digits_cls.py: 256 images, 40 epochs = 160 steps
    synthetic_data=dict(num_images=256, batch_size=64, image_size=(32, 32), seed=0,
                        num_classes=10),
    distill=dict(distance='l1', weights=0, bn='update'),
    schedule=dict(epochs=40, lr=0.01, lr_steps=[30]),
)
