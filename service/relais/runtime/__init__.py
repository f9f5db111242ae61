"""Model runtime: ONNX Runtime sessions and the per-model inference wrappers."""
