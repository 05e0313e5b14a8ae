# DFBF on the digits top-down keypoint model: prune the ResNet's inner channels, invert the
# teacher (its backbone's BN statistics; no labels) into synthetic 64x64 crops, fine-tune the
# pruned backbone on them. No real training image is read; the test split is evaluation only.
#     python tools/train.py configs/benchmarks/dfbf_digits_pose.py
# tools/benchmarks/run.py uses this block with its own (smaller) image / epoch budget.
_base_ = ['./digits_pose_teacher.py']
custom_imports = dict(imports=['dfbf_mm'], allow_failed_imports=False)
runner_type = 'DataFreeDistillRunner'

dfbf = dict(
    teacher_checkpoint='checkpoints/digits_pose_teacher.pth',
    pruner=dict(type='L1FilterPruner', sparsity=0.5, norm=1, layer_dependent=False),
    # the pose preset's schedule cut to CPU size: 150 half-resolution + 100 full steps
    synthesizer=dict(type='DeepInversionSynthesizer', preset='pose',
                     half_res_iterations=150, iterations=100),
    synthetic_data=dict(num_images=512, batch_size=32, image_size=(64, 64), seed=0),
    distill=dict(distance='l1', weights=0, bn='update'),
    schedule=dict(epochs=15, lr=0.01, lr_steps=[11]),
)
