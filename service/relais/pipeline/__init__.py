"""The streaming pipeline: audio -> VAD -> Whisper + simultaneous policy -> TTS."""
