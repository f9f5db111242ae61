"""Marian / Opus-MT -> ONNX: encoder (+ cross-attention K/V) and KV-cached decoder."""

from relais_export.marian.export import ENCODER_FILE, DECODER_FILE, MarianExport, export_marian

__all__ = ["ENCODER_FILE", "DECODER_FILE", "MarianExport", "export_marian"]
