"""ONNX export, engine manifests and the TensorRT engine build."""

DEFAULT_IMAGE_SIZE = (480, 640)  # (H, W) of the frames a frame-sized export is for (VGA camera)
