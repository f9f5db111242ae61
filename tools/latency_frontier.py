"""Quality-latency frontier: `relais eval` over named latency configurations, plotted as the papers do.

Each configuration is a latency mode plus overrides of its LatencyProfile (`relais eval
--latency MODE --profile k=v,...`). Every run goes to OUT/NAME/ (results.json, results.md,
plots); then OUT/frontier.png plots BLEU against LAAL (text output) and ASR-BLEU against
StartOffset and EndOffset (speech output), with the offline baseline and the Pareto front, and
OUT/frontier.md tables every configuration with its BLEU difference to the offline
baseline (paired bootstrap 95 % interval, relais.eval.scores).

    python tools/latency_frontier.py --manifest ../shared/eval/fr_en_dev/manifest.tsv \\
        --models ~/.cache/relais/test-models --out docs/benchmarks/frontier \\
        --config low=low --config balanced=balanced --config quality=quality \\
        --config alignatt-0.5=balanced:policy=alignatt,step_s=0.5
    python tools/latency_frontier.py --from-results docs/benchmarks/frontier/low docs/benchmarks/frontier/balanced \\
        --out docs/benchmarks/frontier                      # re-plot existing runs only

The offline baseline is translated once (the first configuration's run; it does not depend
on the latency profile) unless --offline each.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from relais.console import LATENCY_CHOICES
from relais.eval.scores import BleuDifference, normaliser_for, paired_bootstrap_bleu

DEFAULT_CONFIGS = ("low=low", "balanced=balanced", "quality=quality")


@dataclass(frozen=True)
class FrontierConfig:
    name: str
    latency_mode: str
    profile: str = ""  # "key=value,key=value" for --profile

    @classmethod
    def parse(cls, spec: str) -> FrontierConfig:
        """``NAME=MODE[:key=value,...]``, e.g. ``aa-0.5=balanced:policy=alignatt,step_s=0.5``."""
        name, sep, rest = spec.partition("=")
        mode, _, profile = rest.partition(":")
        name, mode, profile = name.strip(), mode.strip(), profile.strip()
        if not sep or not name or "/" in name or name.startswith("."):
            raise ValueError(f"a configuration is NAME=MODE[:key=value,...], got {spec!r}")
        if mode not in LATENCY_CHOICES:
            raise ValueError(f"configuration {name!r}: latency mode must be one of {LATENCY_CHOICES}, got {mode!r}")
        if profile:
            from relais.eval.command import parse_profile

            parse_profile(profile, mode)  # fail before any run
        return cls(name, mode, profile)


def eval_command(config: FrontierConfig, out_dir: Path, args: argparse.Namespace, offline: bool) -> list[str]:
    cmd = [sys.executable, "-m", "relais.cli", "eval", "--manifest", str(args.manifest), "--mode", args.mode,
           "--latency", config.latency_mode, "--out", str(out_dir / config.name),
           "--from", args.source, "--to", args.target]
    if config.profile:
        cmd += ["--profile", config.profile]
    if args.models:
        cmd += ["--models", str(args.models)]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    if args.no_asr:
        cmd.append("--no-asr")
    if not offline:
        cmd.append("--no-offline")
    return cmd


# --- reading runs ---------------------------------------------------------------------------------

@dataclass
class FrontierPoint:
    name: str
    path: Path
    mode: str
    latency: str  # "balanced" or "balanced + policy=alignatt, step_s=0.5"
    summary: dict
    meta: dict
    streamed: dict[str, tuple[str, str]]  # id -> (translation, reference)
    offline: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (translation, reference)
    offline_summary: dict = field(default_factory=dict)
    bleu_difference: BleuDifference | None = None  # streamed - offline

    def get(self, key: str):
        return self.summary.get(key)


def load_point(path: Path, name: str | None = None) -> FrontierPoint:
    data = json.loads((path / "results.json").read_text())
    meta = data["meta"]
    overrides = meta.get("latency_overrides") or {}
    latency = meta["latency_mode"] + (" + " + ", ".join(f"{k}={v}" for k, v in overrides.items())
                                      if overrides else "")
    streamed = {u["id"]: (u["translation"], u["reference"]) for u in data["utterances"] if u.get("reference")}
    off = data.get("offline") or {}
    offline = {u["id"]: (u["translation"], u["reference"]) for u in off.get("utterances", []) if u.get("reference")}
    return FrontierPoint(name or path.name, path, meta["mode"], latency, data["summary"], meta, streamed, offline,
                         off.get("summary", {}))


def attach_differences(points: list[FrontierPoint]) -> FrontierPoint | None:
    """Each point's BLEU minus the offline baseline's (the first run that has one), paired bootstrap."""
    base = next((p for p in points if p.offline), None)
    if base is None:
        return None
    for p in points:
        ids = [i for i in p.streamed if i in base.offline]
        if not ids:
            continue
        norm = normaliser_for(p.meta.get("target_language", "en"))
        p.bleu_difference = paired_bootstrap_bleu([p.streamed[i][0] for i in ids], [base.offline[i][0] for i in ids],
                                                  [p.streamed[i][1] for i in ids], norm)
    return base


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both lower latency (x) and higher quality (y), by latency."""
    front = [p for p in points if not any(q[0] <= p[0] and q[1] >= p[1] and q != p for q in points)]
    return sorted(set(front))


# --- output ---------------------------------------------------------------------------------------

def _f(value, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(points: list[FrontierPoint], base: FrontierPoint | None, out_dir: Path) -> str:
    first = points[0].meta
    modes = sorted({p.mode for p in points})
    lines = ["# Quality-latency frontier", "",
             f"{first['manifest']} · {first['machine']} · mode **{', '.join(modes)}** · {first['date']} (first run)",
             "", "![frontier](frontier.png)", "",
             "| configuration | latency profile | BLEU | BLEU − offline [95 % CI] | ASR-BLEU | chrF | LAAL (s) | "
             "AL (s) | StartOffset (s) | EndOffset (s) | first text (s) | lag p95 (s) | RTF | n |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in points:
        d = p.bleu_difference
        diff = (f"{d.difference:+.1f} [{d.ci_low:+.1f}, {d.ci_high:+.1f}]{'' if d.excludes_zero else ' (n.s.)'}"
                if d is not None else "–")
        label = f"[{p.name}]({Path(os.path.relpath(p.path.resolve(), out_dir.resolve())).as_posix()}/results.md)"
        lines.append(f"| {label} | {p.latency} | {_f(p.get('bleu'), 1)} | {diff} | {_f(p.get('asr_bleu'), 1)} | "
                     f"{_f(p.get('chrf'), 1)} | {_f(p.get('laal_s'))} | {_f(p.get('al_s'))} | "
                     f"{_f(p.get('start_offset_s'))} | {_f(p.get('end_offset_s'))} | {_f(p.get('first_text_s'))} | "
                     f"{_f(p.get('lag_p95_s'))} | {_f(p.get('rtf'))} | {p.get('n_utterances')} |")
    if base is not None:
        o = base.offline_summary
        lines += ["", f"Offline baseline (whole utterances, same models; from {base.name}): BLEU "
                      f"{_f(o.get('bleu'), 1)}, ASR-BLEU {_f(o.get('asr_bleu'), 1)}, chrF {_f(o.get('chrf'), 1)}. "
                      "BLEU − offline: paired bootstrap over the utterances both translated, 1000 resamples; "
                      "(n.s.): the interval includes 0."]
    return "\n".join(lines) + "\n"


def plot(points: list[FrontierPoint], base: FrontierPoint | None, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    speech_key = "asr_bleu" if any(p.get("asr_bleu") is not None for p in points) else "bleu"
    speech_label = "ASR-BLEU" if speech_key == "asr_bleu" else "BLEU"
    panels = [("laal_s", "bleu", "LAAL (s)", "BLEU", "Text output"),
              ("start_offset_s", speech_key, "StartOffset (s)", speech_label, "Speech output, first words"),
              ("end_offset_s", speech_key, "EndOffset (s)", speech_label, "Speech output, last words")]
    modes = {p.mode for p in points}
    clock = ("mixed clocks" if len(modes) > 1 else
             "computation-aware" if modes == {"realtime"} else "computation-unaware")
    fig, axes = plt.subplots(1, len(panels), figsize=(16, 4.8))
    for ax, (xk, yk, xlabel, ylabel, title) in zip(axes, panels):
        xy = [(p.get(xk), p.get(yk), p.name) for p in points if p.get(xk) is not None and p.get(yk) is not None]
        ax.scatter([x for x, _, _ in xy], [y for _, y, _ in xy], zorder=3)
        for x, y, name in xy:
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        front = pareto([(x, y) for x, y, _ in xy])
        if len(front) > 1:
            ax.step([x for x, _ in front], [y for _, y in front], where="post", color="tab:blue", alpha=0.5,
                    label="Pareto front")
        if base is not None and base.offline_summary.get(yk) is not None:
            ax.axhline(base.offline_summary[yk], color="grey", ls="--", label="offline (whole utterance)")
        ax.set_xlabel(f"{xlabel}, {clock}")
        ax.margins(x=0.25, y=0.2)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}: {ylabel} vs {xlabel.split()[0]}", fontsize=10)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_frontier(points: list[FrontierPoint], out_dir: Path) -> list[Path]:
    if len({p.mode for p in points}) > 1:
        print("warning: the runs mix realtime and simulated clocks; their latencies are not comparable",
              file=sys.stderr)
    base = attach_differences(points)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "frontier.md"
    md.write_text(markdown(points, base, out_dir))
    return [md, plot(points, base, out_dir / "frontier.png")]


# --- main -----------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks/frontier"))
    p.add_argument("--from-results", nargs="+", type=Path, metavar="DIR",
                   help="re-plot these existing `relais eval` output directories (runs nothing)")
    p.add_argument("--config", action="append", metavar="NAME=MODE[:key=value,...]",
                   help=f"a configuration to run (repeatable; default: {' '.join(DEFAULT_CONFIGS)})")
    p.add_argument("--manifest", type=Path, help="the eval manifest (needed to run)")
    p.add_argument("--models", type=Path, help="model set for the in-process server")
    p.add_argument("--mode", choices=["realtime", "simulated"], default="realtime")
    p.add_argument("--from", dest="source", default="fr")
    p.add_argument("--to", dest="target", default="en")
    p.add_argument("--limit", type=int, help="only the first N utterances")
    p.add_argument("--no-asr", action="store_true", help="skip ASR-BLEU (the speech panel then plots BLEU)")
    p.add_argument("--offline", choices=["first", "each", "none"], default="first",
                   help="which runs translate the offline baseline (default: the first only)")
    args = p.parse_args(argv)

    if args.from_results:
        missing = [d for d in args.from_results if not (d / "results.json").is_file()]
        if missing:
            p.error(f"no results.json in {', '.join(map(str, missing))}")
        dirs = list(args.from_results)
    else:
        if args.manifest is None:
            p.error("--manifest is needed to run configurations (or give --from-results)")
        try:
            configs = [FrontierConfig.parse(c) for c in args.config or DEFAULT_CONFIGS]
        except ValueError as exc:
            p.error(str(exc))
        if len({c.name for c in configs}) != len(configs):
            p.error("configuration names must be unique")
        dirs = []
        for i, config in enumerate(configs):
            offline = args.offline == "each" or (args.offline == "first" and i == 0)
            cmd = eval_command(config, args.out, args, offline)
            print(f"[{i + 1}/{len(configs)}] {config.name}: {' '.join(cmd[2:])}", file=sys.stderr, flush=True)
            rc = subprocess.run(cmd, check=False).returncode
            if rc not in (0, 1) or not (args.out / config.name / "results.json").is_file():
                print(f"error: `relais eval` failed for {config.name} (exit {rc})", file=sys.stderr)
                return 2
            if rc != 0:
                print(f"warning: some utterances failed for {config.name} (exit {rc})", file=sys.stderr)
            dirs.append(args.out / config.name)
    points = [load_point(d) for d in dirs]
    written = write_frontier(points, args.out)
    print((args.out / "frontier.md").read_text())
    print(f"wrote {', '.join(map(str, written))}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
