"""Whisper -> ONNX: CTranslate2 bundles and Hugging Face checkpoints."""
