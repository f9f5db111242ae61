"""tools/latency_frontier.py: configurations, the eval commands it runs, and the frontier it draws from results."""

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from relais.eval.measure import UtteranceFigures
from relais.eval.report import write
from relais.eval.results import (EvalResults, OfflineResults, OfflineRow, OfflineSummary, RunMeta, quality,
                                 streamed_vs_offline, summarise)

TOOL = Path(__file__).resolve().parents[1] / "tools" / "latency_frontier.py"
spec = importlib.util.spec_from_file_location("latency_frontier", TOOL)
frontier = importlib.util.module_from_spec(spec)
sys.modules["latency_frontier"] = frontier  # dataclasses look their module up
spec.loader.exec_module(frontier)

REFS = [f"the {w} near the station was closed on monday because of the {v}"
        for w, v in zip(("river", "garden", "market", "bridge", "forest", "island", "valley", "harbour"),
                        ("storm", "strike", "flood", "snow", "fire", "wind", "works", "fog"))]
OFFLINE = [" ".join(r.split()[:3 + i % 5]) + " and more" for i, r in enumerate(REFS)]


def _run(out: Path, name: str, translations: list[str], laal_s: float, end_offset_s: float, *,
         overrides: dict | None = None, offline: bool = False) -> Path:
    figs = [UtteranceFigures(id=f"u{i}", duration_s=5.0, mode="realtime", translation=t, reference=r,
                             laal_s=laal_s, end_offset_s=end_offset_s, asr_text=t, audio_out_s=4.0)
            for i, (t, r) in enumerate(zip(translations, REFS))]
    meta = RunMeta("m.tsv", "2026-01-01T00:00:00", "cpu", "in-process", "realtime", "balanced", "fr", "en", 100,
                   False, None, None, "norm", latency_overrides=overrides or {})
    off = None
    if offline:
        rows = [OfflineRow(f"u{i}", t, t, r, 4.0) for i, (t, r) in enumerate(zip(OFFLINE, REFS))]
        off_figs = [UtteranceFigures(id=r.id, duration_s=5.0, mode="offline", translation=r.translation,
                                     reference=r.reference, asr_text=r.asr_text, audio_out_s=4.0) for r in rows]
        off = OfflineResults(OfflineSummary(len(rows), 0.2, quality(off_figs)), rows, "whole utterance")
    write(EvalResults(meta, summarise(figs), figs, offline=off, bleu_difference=streamed_vs_offline(figs, off)),
          out / name)
    return out / name


def test_configurations_parse_and_are_checked_before_running():
    c = frontier.FrontierConfig.parse("aa-0.5=balanced:policy=alignatt,step_s=0.5")
    assert (c.name, c.latency_mode, c.profile) == ("aa-0.5", "balanced", "policy=alignatt,step_s=0.5")
    assert frontier.FrontierConfig.parse("low=low") == frontier.FrontierConfig("low", "low", "")
    for bad, message in [("low", "NAME=MODE"), ("a/b=low", "NAME=MODE"), ("x=fast", "latency mode"),
                         ("x=balanced:colour=blue", "not a latency profile field")]:
        with pytest.raises(ValueError, match=message):
            frontier.FrontierConfig.parse(bad)


def test_eval_command_carries_the_mode_profile_and_offline_choice(tmp_path):
    args = argparse.Namespace(
        manifest=Path("m.tsv"), mode="realtime", source="fr", target="en", models=Path("models"), limit=2,
        no_asr=True)
    cmd = frontier.eval_command(frontier.FrontierConfig("aa", "low", "step_s=0.5"), tmp_path, args, offline=False)
    assert cmd[1:4] == ["-m", "relais.cli", "eval"]
    joined = " ".join(cmd[4:])
    assert f"--mode realtime --latency low --out {tmp_path / 'aa'}" in joined
    assert "--profile step_s=0.5" in joined and "--limit 2" in joined and "--models models" in joined
    assert cmd[-2:] == ["--no-asr", "--no-offline"]
    assert "--no-offline" not in frontier.eval_command(frontier.FrontierConfig("b", "low"), tmp_path, args, True)


def test_pareto_front_keeps_the_undominated_points():
    points = [(1.0, 10.0), (2.0, 12.0), (3.0, 11.0), (2.5, 12.0), (4.0, 15.0)]
    assert frontier.pareto(points) == [(1.0, 10.0), (2.0, 12.0), (4.0, 15.0)]


def test_frontier_from_results_tables_and_plots_every_run(tmp_path):
    runs = tmp_path / "runs"
    a = _run(runs, "same-as-offline", OFFLINE, 2.0, 3.0, offline=True)
    b = _run(runs, "perfect", REFS, 4.0, 5.0, overrides={"policy": "alignatt", "step_s": 0.5})
    out = tmp_path / "frontier"
    assert frontier.main(["--from-results", str(a), str(b), "--out", str(out)]) == 0
    md = (out / "frontier.md").read_text()
    rows = {line.split(" | ")[0]: line.split(" | ") for line in md.splitlines() if line.startswith("| [")}
    same, perfect = rows["| [same-as-offline](../runs/same-as-offline/results.md)"], \
        rows["| [perfect](../runs/perfect/results.md)"]
    assert same[1] == "balanced" and same[3] == "+0.0 [+0.0, +0.0] (n.s.)" and same[6] == "2.00"
    assert perfect[1] == "balanced + policy=alignatt, step_s=0.5" and perfect[2] == "100.0"
    diff = json.loads((b / "results.json").read_text())  # no offline in that run: the tool pairs it itself
    assert "bleu_streamed_minus_offline" not in diff
    assert perfect[3].startswith("+") and "(n.s.)" not in perfect[3]
    assert "Offline baseline (whole utterances, same models; from same-as-offline)" in md
    assert (out / "frontier.png").stat().st_size > 10000


def test_running_configurations_translates_offline_once_and_stops_on_errors(tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd, check=False):
        calls.append(cmd)
        name = Path(cmd[cmd.index("--out") + 1]).name
        if name == "broken":
            return type("P", (), {"returncode": 2})()
        _run(tmp_path / "out", name, REFS if name == "b" else OFFLINE, 1.0 + len(calls), 2.0,
             offline="--no-offline" not in cmd)
        return type("P", (), {"returncode": 0})()

    monkeypatch.setattr(frontier.subprocess, "run", fake_run)
    out = tmp_path / "out"
    assert frontier.main(["--manifest", "m.tsv", "--out", str(out), "--config", "a=low",
                          "--config", "b=balanced:step_s=0.5"]) == 0
    assert ["--no-offline" in c for c in calls] == [False, True]
    assert "--profile" in calls[1] and (out / "frontier.md").is_file() and (out / "frontier.png").is_file()
    calls.clear()
    assert frontier.main(["--manifest", "m.tsv", "--out", str(out), "--config", "broken=low",
                          "--config", "c=low"]) == 2
    assert len(calls) == 1  # stopped at the failed run
    with pytest.raises(SystemExit):
        frontier.main(["--out", str(out), "--config", "x=low"])  # no manifest
