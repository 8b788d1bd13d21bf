"""ONNX export, engine manifests and the TensorRT engine build."""
