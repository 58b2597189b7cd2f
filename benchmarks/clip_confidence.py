"""How confident a model is on isolated keyword clips at the stream's SNR.

    python benchmarks/clip_confidence.py NAME=RUN ... [--data ../shared/data/gsc-dev]
        [--snr 20 15 10] [--thresholds 0.87 0.95] [--out benchmarks/results/clip_confidence.md]

A streaming detector fires when a keyword's score passes a threshold, and at a few false alarms
an hour that threshold sits near the top of the score range. This measures, on the validation
keyword clips one at a time (no stream, no neighbours), with the data set's background noise
mixed in at an SNR over the word's active part (as ``kwskit eval-stream``'s stream builder
measures it): clip accuracy, the share of keyword clips whose own keyword scores at least each
threshold (a stream detector at that threshold can find at most about that share), and how
many clips another keyword takes at that threshold (each one a false alarm in a stream).
Prints a markdown table and writes it to ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from kwskit.data.audio import load_audio  # noqa: E402
from kwskit.data.loader import INT16_SCALE  # noqa: E402
from kwskit.data.speech_commands import keyword_labels, scan_dataset  # noqa: E402
from kwskit.data.streams import speech_bounds  # noqa: E402
from kwskit.errors import KwsError  # noqa: E402
from kwskit.eval.evaluate import predict, split_clips  # noqa: E402
from kwskit.fsutil import write_text  # noqa: E402
from kwskit.models.io import load_model  # noqa: E402


def background(data: str, sample_rate: int = 16000) -> list[np.ndarray]:
    """The data set's background noise recordings (white noise where it has none)."""
    noises = [load_audio(p, sample_rate) for p in scan_dataset(data).background]
    noises = [x for x in noises if len(x) > sample_rate and np.std(x) > 0]
    return noises or [np.random.default_rng(0).standard_normal(60 * sample_rate).astype(np.float32)]


def mix_at_snr(clips: np.ndarray, noises: list[np.ndarray], snr_db: float, seed: int = 0) -> np.ndarray:
    """Each clip plus a random noise excerpt at ``snr_db`` over the clip's active part."""
    rng = np.random.default_rng(seed)
    out = clips.copy()
    for i, x in enumerate(out):
        a, b = speech_bounds(x) or (0, len(x))
        speech = np.sqrt(np.mean(np.square(x[a:b], dtype=np.float64)))
        src = noises[int(rng.integers(len(noises)))]
        off = int(rng.integers(len(src) - len(x) + 1))
        n = src[off:off + len(x)]
        x += n * (speech / (np.sqrt(np.mean(np.square(n, dtype=np.float64))) + 1e-12)
                  / 10 ** (snr_db / 20))
    return out


def confidence(probs: np.ndarray, targets: np.ndarray, is_kw: np.ndarray,
               thresholds: list[float]) -> dict:
    """Accuracy, share of clips whose own class scores >= t, clips taken by another keyword
    at >= t."""
    pred = probs.argmax(1)
    own = probs[np.arange(len(targets)), targets]
    wrong_kw = (pred != targets) & is_kw[pred]
    return {"acc": float(np.mean(pred == targets)),
            "own": {t: float(np.mean(own >= t)) for t in thresholds},
            "taken": {t: int(np.sum(wrong_kw & (probs.max(1) >= t))) for t in thresholds}}


def measure(run: str, data: str, snrs: list[float], thresholds: list[float]) -> dict:
    model, cfg, labels = load_model(run, "best")
    waves, targets, _ = split_clips(cfg, labels, data, "validation")
    is_kw = np.isin(labels, keyword_labels(labels))
    keep = is_kw[targets]
    clips, targets = waves[keep].astype(np.float32) / INT16_SCALE, targets[keep]
    noises = background(data)
    out = {"clips": len(targets)}
    for snr in [None, *snrs]:
        x = clips if snr is None else mix_at_snr(clips, noises, snr)
        out["clean" if snr is None else f"{snr:g} dB"] = confidence(
            predict(model, x * INT16_SCALE, desc=f"{Path(run).name} {snr or 'clean'}"), targets, is_kw, thresholds)
    return out


def table(rows: dict, thresholds: list[float]) -> str:
    ts = " / ".join(f"{t:g}" for t in thresholds)
    lines = ["| run | condition | keyword clip accuracy | own keyword scores >= " + ts +
             " | taken by another keyword at >= " + ts + " |", "|---|---|---|---|---|"]
    for name, r in rows.items():
        for cond, c in r.items():
            if cond == "clips":
                continue
            own = " / ".join(f"{100 * c['own'][t]:.1f}%" for t in thresholds)
            taken = " / ".join(str(c["taken"][t]) for t in thresholds)
            lines.append(f"| {name} | {cond} | {100 * c['acc']:.1f}% | {own} | {taken} of {r['clips']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="NAME=RUN pairs (or bare run folders)")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "gsc-dev"))
    ap.add_argument("--snr", type=float, nargs="+", default=[20.0, 15.0, 10.0])
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.87, 0.95])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "clip_confidence.md"))
    a = ap.parse_args()
    rows = {}
    try:
        for item in a.runs:
            name, _, run = item.rpartition("=") if "=" in item else (item, "", item)
            rows[name] = measure(run, a.data, a.snr, a.thresholds)
    except KwsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = table(rows, a.thresholds)
    print(text)
    write_text(Path(a.out), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
