"""Audio in and out, in one place for the service, the client, eval and export.

* :mod:`relais.audio.pcm`: whole-buffer sample conversions (int16 <-> float32,
  clipping, resampling).
* :mod:`relais.audio.files`: read any soundfile-readable file, as mono float32 at
  16 kHz (or its own rate), or as the int16 frames a client streams.
* :mod:`relais.audio.stream`: streaming decoding of client bytes (PCM or WAV, any
  chunking) to 16 kHz mono float32, and encoding of speech back to client bytes.

The pipeline works at :data:`PIPELINE_RATE_HZ` mono float32 in [-1, 1].
"""

PIPELINE_RATE_HZ = 16000
