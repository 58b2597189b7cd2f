"""How the stream misses fall with more training speakers (a learning curve).

    python benchmarks/learning_curve.py "0.25=ROW" "0.5=ROW" "1.0=ROW" "1.0=ROW" ...
        [--results benchmarks/results/stream_ablation_snr.json] [--data ../shared/data/gsc-dev]
        [--readme MARKER]

Each argument pairs a run's ``data.train_speakers`` share with its row (the name it was scored
under) in a ``stream_ablation.py`` results file; several rows may share a share (seeds). The
training keyword clips of each share are counted on the data set (``with_speaker_share``). A
power law, misses = c x clips^-b, is fitted by least squares on log misses over the runs at each
false-alarm rate and followed to ``--extrapolate-to`` keyword clips: by default Speech
Commands v0.02's training split for the mini10 keywords (Warden 2018 counts 3,723-4,044 clips
per keyword; about 80% of speakers fall in training). That is a guess at what the full data set
would buy, not a measurement, and the table says so.

Writes benchmarks/results/learning_curve.md (table) and .png (misses against training keyword
clips, log-x, the fit dashed).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from kwskit.data.speech_commands import (keyword_labels, resolve_labels, scan_dataset,  # noqa: E402
                                         with_speaker_share)
from kwskit.errors import KwsError  # noqa: E402
from kwskit.fsutil import replace_between, write_text  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
# Warden 2018 (arXiv:1804.03209), v0.02 clip counts of the mini10 keywords
V2_KEYWORD_CLIPS = {"yes": 4044, "no": 3941, "up": 3723, "down": 3917, "left": 3801,
                    "right": 3778, "stop": 3872, "go": 3880}
V2_TRAIN_SHARE = 0.8
# (label in the table, key in a results row, key under it)
POINTS = (("1 FA/h", "misses", "1"), ("5 FA/h", "misses", "5"), ("10 FA/h", "misses", "10"),
          ("1 FA/h keyword-free", "misses_keyword_free_fa", "1"),
          ("10 FA/h keyword-free", "misses_keyword_free_fa", "10"))


def keyword_clips(data: str, labels, shares) -> dict[float, tuple[int, int]]:
    """share -> (training speakers, training keyword clips) of the data set at that share."""
    index = scan_dataset(data)
    words = set(keyword_labels(labels))
    out = {}
    for share in shares:
        clips = with_speaker_share(index, "training", share).split("training")
        out[share] = (len({c.speaker for c in clips}), sum(c.word in words for c in clips))
    return out


def power_fit(x, y):
    """(c, b) of y = c * x^-b by least squares on log y; None with fewer than two x values."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(set(x.tolist())) < 2 or (y <= 0).any():
        return None
    slope, intercept = np.polyfit(np.log(x), np.log(y), 1)
    return float(np.exp(intercept)), float(-slope)


def collect(rows: dict, pairs: list[tuple[float, str]]) -> dict[float, list[dict]]:
    """share -> the results rows named for it (one per run)."""
    by_share = defaultdict(list)
    for share, name in pairs:
        if name not in rows:
            raise KwsError(f"no row {name!r} in the results file (scored rows: {len(rows)})")
        by_share[share].append(rows[name])
    return dict(sorted(by_share.items()))


def run_points(by_share, counts, key: str, k: str) -> tuple[list[int], list[float]]:
    """(training keyword clips, misses in %) of every run that has ``row[key][k]``."""
    pts = [(counts[share][1], 100 * r[key][k]["frr"])
           for share, rs in by_share.items() for r in rs if key in r]
    return [x for x, _ in pts], [y for _, y in pts]


def table(by_share, counts, fits, target: int) -> str:
    head = ("| training speakers (share) | keyword clips | runs | val acc | "
            + " | ".join(f"misses at {label}" for label, _, _ in POINTS) + " |")
    lines = [head, "|" + "---|" * (4 + len(POINTS))]
    for share, rs in by_share.items():
        speakers, clips = counts[share]
        acc = np.mean([float(r["val_acc"]) for r in rs])
        cells = []
        for _, key, k in POINTS:
            vals = [100 * r[key][k]["frr"] for r in rs if key in r]
            cells.append(f"{np.mean(vals):.1f}% ({', '.join(f'{v:.1f}' for v in vals)})"
                         if vals else "-")
        lines.append(f"| {speakers} ({share:g}) | {clips} | {len(rs)} | {100 * acc:.2f}% | "
                     + " | ".join(cells) + " |")
    cells = ["-" if fit is None else f"{100 * min(1.0, fit[0] * target ** -fit[1]):.1f}% "
             f"(b = {fit[1]:.2f})" for fit in fits.values()]
    lines.append(f"| fit c x clips^-b, followed to v0.02 (a guess) | {target} | - | - | "
                 + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(by_share, counts, fits, target: int, path: Path) -> None:
    fig = Figure(figsize=(7.5, 5.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colors = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b")
    for (label, key, k), color in zip(POINTS, colors):
        xs, ys = run_points(by_share, counts, key, k)
        if not xs:
            continue
        ax.scatter(xs, ys, color=color, s=18, alpha=0.7)
        means = sorted({x: np.mean([y for xx, y in zip(xs, ys) if xx == x]) for x in xs}.items())
        ax.plot(*zip(*means), color=color, linewidth=1.8, label=label)
        if fits.get(label):
            c, b = fits[label]
            grid = np.geomspace(min(xs), target, 50)
            ax.plot(grid, 100 * np.minimum(1.0, c * grid ** -b), color=color, linestyle="--",
                    linewidth=1.0)
    ax.axhline(10, color="gray", linewidth=0.8, linestyle=":")
    ax.axvline(target, color="gray", linewidth=0.8, linestyle=":")
    ax.text(target, 1.5, " v0.02\n (guess)", fontsize=8, color="gray", va="bottom")
    ax.set_xscale("log")
    ax.set_ylim(0, 100)
    ax.text(ax.get_xlim()[0], 10.5, " target: 10% at 1 FA/h", fontsize=8, color="gray")
    ax.set_xlabel("training keyword clips (log scale)")
    ax.set_ylabel("keywords missed (%)")
    ax.set_title("Stream misses against training data (dashed: power-law fit)", fontsize=11)
    ax.legend(fontsize=8, frameon=False, title="false-alarm budget", title_fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="SHARE=ROW pairs (ROW: a stream_ablation row name)")
    ap.add_argument("--results", default=str(RESULTS / "stream_ablation_snr.json"))
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "gsc-dev"))
    ap.add_argument("--labels", default="mini10")
    ap.add_argument("--extrapolate-to", type=int,
                    default=round(V2_TRAIN_SHARE * sum(V2_KEYWORD_CLIPS.values())))
    ap.add_argument("--name", default="learning_curve", help="results file stem")
    ap.add_argument("--readme", metavar="MARKER",
                    help="also put the table between <!-- MARKER:start/end --> in README.md")
    a = ap.parse_args()
    pairs = []
    for arg in a.runs:
        text, sep, name = arg.partition("=")
        try:
            share = float(text)
        except ValueError:
            share = None
        if not sep or share is None or not 0 < share <= 1:
            raise SystemExit(f"{arg!r}: expected SHARE=ROW with SHARE in (0, 1], e.g. 0.5=my row")
        pairs.append((share, name))
    rows = json.loads(Path(a.results).read_text())["rows"]
    by_share = collect(rows, pairs)
    counts = keyword_clips(a.data, resolve_labels(a.labels), by_share)
    fits = {}
    for label, key, k in POINTS:
        xs, ys = run_points(by_share, counts, key, k)
        fits[label] = power_fit(xs, [y / 100 for y in ys]) if xs else None
    md = (f"Runs scored by `stream_ablation.py` ({Path(a.results).name}); misses are the mean "
          "over the runs at a share (each run in brackets). The last row follows each fit to "
          f"{a.extrapolate_to} training keyword clips: a guess, not a measurement.\n\n"
          + table(by_share, counts, fits, a.extrapolate_to))
    print(md)
    write_text(RESULTS / f"{a.name}.md", md)
    plot(by_share, counts, fits, a.extrapolate_to, RESULTS / f"{a.name}.png")
    if a.readme and not replace_between(ROOT / "README.md", f"<!-- {a.readme}:start -->",
                                        f"<!-- {a.readme}:end -->", md.rstrip("\n")):
        print(f"README.md: no <!-- {a.readme}:start/end --> markers; table not written",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
