"""Relais offline export toolchain: checkpoints -> ONNX (-> TensorRT).

Imports torch/transformers lazily; the service (package ``relais``) never imports
this package's heavy dependencies.
"""

EXPORT_VERSION = "1"
