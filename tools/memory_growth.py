"""Memory growth of `relais serve` under one long stream, for settings compared side by side.

For each --config NAME=[VAR=VALUE,...] in turn, starts `relais serve` (subprocess, CPU) with
those environment variables, streams --minutes of the fr_longform monologues (looped) through
one stream as fast as the server takes them, and samples the server's RSS every --every-s
seconds. Reports per config the RSS after the warm-up, its fitted growth per minute of
speech, and the throughput (minutes of speech per wall minute), so a memory fix is checked
not to cost speed. Writes results.json, results.md and a plot into --out.

    python tools/memory_growth.py --minutes 16 --config arena=RELAIS_RUNTIME_CPU_MEM_ARENA=true \
        --config default= --out docs/benchmarks/memory-growth
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the tests' `relais serve` launcher

from serving import relais_serve  # noqa: E402

from relais.audio.files import load_audio_16k  # noqa: E402
from relais.client import TranslateClient, TranslateOptions  # noqa: E402
from relais.eval.data import default_eval_dir, read_manifest  # noqa: E402
from relais.eval.machine import machine  # noqa: E402
from relais.models.manifest import default_models_dir  # noqa: E402


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS"))


def _parse_config(text: str) -> tuple[str, dict[str, str]]:
    name, _, assignments = text.partition("=")
    env = {}
    for item in filter(None, assignments.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--config {text!r}: write NAME=VAR=VALUE[,VAR=VALUE] (or NAME= for the defaults)")
        env[key] = value
    return name, env


def run_one(env: dict[str, str], audio: np.ndarray, models_dir: Path, every_s: float) -> dict:
    """One server with ``env``: RSS samples (wall s, speech min received back, MB) over one long stream."""
    reached = [0.0]  # source seconds the translations have reached

    def follow(event) -> None:
        end = getattr(event, "source_end_s", None)
        if end:
            reached[0] = max(reached[0], end)

    with tempfile.TemporaryDirectory() as work, relais_serve(models_dir, Path(work), "max_session_s: 100000",
                                                             env=env) as served:
        samples: list[tuple[float, float, float]] = []
        stop = threading.Event()
        began = time.monotonic()

        def sample() -> None:
            while not stop.wait(every_s):
                samples.append((time.monotonic() - began, reached[0] / 60, _rss_mb(served.proc.pid)))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        with TranslateClient(f"127.0.0.1:{served.port}") as client:
            result = client.translate_audio(audio, 16000, TranslateOptions(
                target_language="en", source_language="fr", speed=0), on_event=follow)
        wall_s = time.monotonic() - began
        stop.set()
        sampler.join()
        return {"samples": samples, "wall_s": wall_s, "words": len(result.translation.split()),
                "rss_mb_end": _rss_mb(served.proc.pid)}


def summarise(run: dict, audio_min: float, warmup_min: float) -> dict:
    warm = [(m, mb) for _, m, mb in run["samples"] if m >= warmup_min]
    slope = float(np.polyfit(*np.array(warm).T, 1)[0]) if len(warm) >= 5 else None
    return {
        "rss_mb_at_warmup_end": warm[0][1] if warm else None,
        "rss_mb_last": warm[-1][1] if warm else None,
        "rss_mb_max_after_warmup": max(mb for _, mb in warm) if warm else None,
        "rss_growth_mb_per_speech_min": slope,
        "speech_min_per_wall_min": audio_min / (run["wall_s"] / 60),
        "words": run["words"],
    }


def _plot(runs: dict[str, dict], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for name, run in runs.items():
        ax.plot([m for _, m, _ in run["samples"]], [mb for _, _, mb in run["samples"]], ".-", ms=3, label=name)
    ax.set_xlabel("minutes of speech translated")
    ax.set_ylabel("server RSS (MB)")
    ax.legend()
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=90)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=16.0, help="minutes of speech in the one stream")
    parser.add_argument("--config", action="append", required=True, help="NAME=VAR=VALUE[,VAR=VALUE]; NAME= for defaults")
    parser.add_argument("--every-s", type=float, default=15.0)
    parser.add_argument("--warmup-min", type=float, default=3.0, help="minutes of speech left out of the fit")
    parser.add_argument("--models-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "memory-growth")
    args = parser.parse_args()
    configs = dict(_parse_config(c) for c in args.config)
    folder = default_eval_dir() / "fr_longform"
    one = np.concatenate([load_audio_16k(u.path) for u in read_manifest(folder / "manifest.tsv")])
    total = int(args.minutes * 60 * 16000)
    audio = np.tile(one, -(-total // len(one)))[:total]
    models_dir = args.models_dir or default_models_dir()
    runs = {}
    for name, env in configs.items():
        print(f"{name}: {env or 'defaults'}, {args.minutes:g} min of speech, unpaced...", flush=True)
        runs[name] = run_one(env, audio, models_dir, args.every_s)
    summary = {name: summarise(run, args.minutes, args.warmup_min) for name, run in runs.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M"), "minutes": args.minutes,
              "warmup_min": args.warmup_min, "configs": configs, "summary": summary, "runs": runs}
    (args.out / "results.json").write_text(json.dumps(report, indent=1))
    title = f"one unpaced stream of {args.minutes:g} min of French through `relais serve`, {machine()}"
    _plot(runs, args.out / "memory.png", title)
    command = "python tools/memory_growth.py --minutes {:g} ".format(args.minutes) + " ".join(
        f"--config {c}" for c in args.config)
    lines = [f"# Memory growth: {title}", "", f"{report['date']}. `{command}`. Fit from minute "
             f"{args.warmup_min:g} of speech on.", "",
             "| config | env | RSS at warm-up end (MB) | last (MB) | growth (MB per speech min) | speech min per wall min |",
             "|---|---|---|---|---|---|"]
    for name, s in summary.items():
        fmt = lambda v: "–" if v is None else f"{v:.1f}"  # noqa: E731
        lines.append(f"| {name} | {configs[name] or 'defaults'} | {fmt(s['rss_mb_at_warmup_end'])} | "
                     f"{fmt(s['rss_mb_last'])} | {fmt(s['rss_growth_mb_per_speech_min'])} | "
                     f"{s['speech_min_per_wall_min']:.2f} |")
    lines += ["", "![memory](memory.png)", ""]
    (args.out / "results.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
