"""The README's Python client runs as written against a real server.

The snippet is taken from README.md as it stands and run in a subprocess against the real
in-process server on the prepared model set; the one change is the address (the test
server listens on a free port, the README says localhost:50051). It runs in a scratch
directory that sees the repository's sample under the same relative path.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
README_ADDRESS = "localhost:50051"


def readme_client_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("A minimal Python client", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README: no python block after 'A minimal Python client'"
    return match.group(1)


def test_readme_client_snippet_runs_as_written(model_set, tmp_path):
    from relais.pipeline.engine import EngineConfig, TranslationEngine
    from relais.server.app import start_in_process
    from relais.server.config import load_config

    snippet = readme_client_snippet()
    assert snippet.count(README_ADDRESS) == 1
    samples = tmp_path / "service" / "relais" / "data"
    samples.mkdir(parents=True)
    (samples / "samples").symlink_to(ROOT / "service" / "relais" / "data" / "samples")

    engine = TranslationEngine(EngineConfig(models_dir=model_set.root))
    config = load_config(None).replace(server={"host": "127.0.0.1", "port": 0, "metrics_port": 0})
    with start_in_process(config, engine=engine) as handle:
        done = subprocess.run([sys.executable, "-c", snippet.replace(README_ADDRESS, handle.address)],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    words = set(re.findall(r"[a-z]+", done.stdout.lower()))
    assert len(words & {"added", "obligations", "development", "responsibility", "capacity", "capabilities"}) >= 2, \
        done.stdout
    assert re.search(r"mean output lag \(s\): \d", done.stdout)
    audio, rate_hz = sf.read(str(tmp_path / "speech_en.wav"))
    assert rate_hz == 22050 and audio.ndim == 1 and len(audio) / rate_hz > 2.0
