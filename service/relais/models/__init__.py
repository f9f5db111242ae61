"""Model sets: manifests and the facts each exported ONNX file carries."""
