# mmdeploy 1.3.1 deploy config: an mmpretrain classifier to ONNX Runtime (CPU), static shape.
# Its wheel ships no configs; this is mmdeploy's mmpretrain/classification_onnxruntime_static.py
# in one file. Used by tests/test_mmdeploy.py (torch 2.1 stack) and docs/install.md.
onnx_config = dict(
    type='onnx', export_params=True, keep_initializers_as_inputs=False, opset_version=11,
    save_file='end2end.onnx', input_names=['input'], output_names=['output'], input_shape=None,
    optimize=True)
codebase_config = dict(type='mmpretrain', task='Classification')
backend_config = dict(type='onnxruntime')
