"""How often are words a model never heard called keywords? Unknown-word rejection on held-out
words.

    python benchmarks/unknown_words.py runs/a runs/b --words cat [--data ../shared/data/gsc-dev]

Every clip of the given words (all splits: train such runs with
``data.unknown_holdout=[cat]`` so no split of them was ever ``_unknown_``) goes through each
run's clip model (batch, one thread). Prints per run and word the share called ``_unknown_``,
``_silence_`` and a keyword (with the most frequent one), plus the run's best validation
accuracy, as a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from kwskit import CLIP_SAMPLES, SAMPLE_RATE  # noqa: E402
from kwskit.data.audio import fix_length, load_audio  # noqa: E402
from kwskit.data.speech_commands import SILENCE, UNKNOWN, scan_dataset  # noqa: E402
from kwskit.models.io import load_model  # noqa: E402


def word_clips(data: str, word: str) -> np.ndarray:
    paths = sorted(c.path for c in scan_dataset(data).clips if c.word == word)
    if not paths:
        raise SystemExit(f"{data}: no clips of {word!r}")
    return np.stack([fix_length(load_audio(p, SAMPLE_RATE), CLIP_SAMPLES) for p in paths])


def rejection(run: str, clips: np.ndarray) -> dict:
    pipeline, _, labels = load_model(run)
    preds = []
    with torch.inference_mode():
        for i in range(0, len(clips), 256):
            x = torch.from_numpy(clips[i:i + 256].astype(np.float32))
            preds += pipeline(x).argmax(-1).tolist()
    names = [labels[p] for p in preds]
    keywords = [n for n in names if n not in (UNKNOWN, SILENCE)]
    top = Counter(keywords).most_common(1)
    return {"unknown": names.count(UNKNOWN) / len(names),
            "silence": names.count(SILENCE) / len(names),
            "keyword": len(keywords) / len(names), "top": top[0] if top else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run directories")
    ap.add_argument("--words", default="cat", help="comma-separated held-out words")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "gsc-dev"),
                    help="data set holding the words")
    a = ap.parse_args()
    torch.set_num_threads(1)
    print("| run | val acc | word | clips | called _unknown_ | _silence_ | a keyword (most often) |")
    print("|---|---|---|---|---|---|---|")
    for word in a.words.split(","):
        clips = word_clips(a.data, word)
        for run in a.runs:
            r = rejection(run, clips)
            best = json.loads((Path(run) / "metrics.json").read_text())["best"]["val_acc"]
            top = f" ({r['top'][0]} {r['top'][1]})" if r["top"] else ""
            print(f"| {Path(run).name} | {100 * best:.2f}% | {word} | {len(clips)} | "
                  f"{100 * r['unknown']:.1f}% | {100 * r['silence']:.1f}% | "
                  f"{100 * r['keyword']:.1f}%{top} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
