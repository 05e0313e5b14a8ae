# mmdeploy 1.3.1 deploy config: an mmpose top-down estimator to ONNX Runtime (CPU), static
# shape; the network's heatmaps, decoded by mmdeploy's task processor. Its wheel ships no
# configs; this is mmdeploy's mmpose/pose-detection_onnxruntime_static.py in one file.
onnx_config = dict(
    type='onnx', export_params=True, keep_initializers_as_inputs=False, opset_version=11,
    save_file='end2end.onnx', input_names=['input'], output_names=['output'], input_shape=None,
    optimize=True)
codebase_config = dict(type='mmpose', task='PoseDetection')
backend_config = dict(type='onnxruntime')
