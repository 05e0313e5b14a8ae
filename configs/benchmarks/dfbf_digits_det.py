# DFBF on the digits YOLOX detector: prune the CSPDarknet's inner channels, invert the teacher
# (its backbone's BN statistics; no labels) into synthetic canvases, fine-tune the pruned
# backbone on them. No real training image is read; the test split is used for evaluation only.
#     python tools/train.py configs/benchmarks/dfbf_digits_det.py
# tools/benchmarks/run.py uses this block with its own (smaller) image / epoch budget.
_base_ = ['./digits_det_teacher.py']
custom_imports = dict(imports=['dfbf_mm'], allow_failed_imports=False)
runner_type = 'DataFreeDistillRunner'

dfbf = dict(
    teacher_checkpoint='checkpoints/digits_det_teacher.pth',
    pruner=dict(type='L1FilterPruner', sparsity=0.5, norm=1, layer_dependent=False),
    # the detection preset's schedule cut to CPU size: 150 half-resolution + 100 full steps
    synthesizer=dict(type='DeepInversionSynthesizer', preset='detection',
                     half_res_iterations=150, iterations=100),
    synthetic_data=dict(num_images=256, batch_size=16, image_size=(128, 128), seed=0),
    distill=dict(distance='l1', weights=0, bn='update'),
    schedule=dict(epochs=10, lr=0.01, lr_steps=[8]),
)
