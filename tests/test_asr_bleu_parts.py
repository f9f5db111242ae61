"""tools/asr_bleu_parts.py on the model set's voice and ASR: a run's streamed phrases spoken again."""

import importlib.util
import json
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "asr_bleu_parts.py"
spec = importlib.util.spec_from_file_location("asr_bleu_parts", TOOL)
parts = importlib.util.module_from_spec(spec)
sys.modules["asr_bleu_parts"] = parts
spec.loader.exec_module(parts)

REFERENCE = "the building is heated with the help of solar panels"


def _run_dir(tmp_path: Path, phrases: list[str], asr_text: str | None) -> Path:
    events = [{"kind": "translation_final", "text": p} for p in phrases]
    events += [{"kind": "audio", "text": p, "arrival_s": 1.0 + i, "duration_s": 0.8} for i, p in enumerate(phrases)]
    utt = {"id": "u", "reference": REFERENCE, "translation": " ".join(phrases), "timeline": {"events": events}}
    if asr_text is not None:
        utt["asr_text"] = asr_text
    (tmp_path / "results.json").write_text(json.dumps({"utterances": [utt]}))
    return tmp_path


def test_the_streamed_phrases_spoken_again_are_heard_by_the_asr(tmp_path, model_set, capsys):
    """The voice speaks the run's phrases and the ASR hears them: a sentence the run streamed in two
    phrases scores far above zero against its reference, whole and phrase by phrase; the run's own
    ASR-BLEU (here: it heard nothing right) is reported beside them."""
    run = _run_dir(tmp_path, ["The building is heated", "with the help of solar panels."], "the bill")
    assert parts.main(["--run", str(run), "--models", str(model_set.root), "--reps", "1"]) == 0
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip()
            for line in capsys.readouterr().out.splitlines() if line.startswith("| ")}
    assert float(rows["the text itself (BLEU)"]) == 100.0
    assert float(rows["whole"]) > 40 and float(rows["phrases, length scale voice"]) > 40
    assert float(rows["the run's own speech"]) < 10


def test_a_run_without_speech_is_refused_with_a_reason(tmp_path, capsys):
    run = _run_dir(tmp_path, [], None)
    assert parts.main(["--run", str(run), "--reps", "1"]) == 2
    assert "no utterance with a reference and spoken phrases" in capsys.readouterr().err
