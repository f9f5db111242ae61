"""Relais: simultaneous speech-to-speech translation over gRPC."""

__version__ = "0.1.0"
