"""Is noise at every loudness called silence? Silence recall of trained runs, level by level.

    python benchmarks/noise_levels.py runs/a runs/b [--data ../shared/data/gsc-dev]

1-s windows from the validation region of each ``_background_noise_`` recording (the region
no training silence comes from; kwskit.data.speech_commands.SILENCE_REGIONS) are scaled to
an RMS of 1e-4 ... 0.3 (-80 ... -10 dBFS) and classified by each run's clip model (batch,
one thread). Prints, per level, the share called ``_silence_`` and the share called a keyword
(a false alarm in a product), as a markdown table.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from kwskit import SAMPLE_RATE  # noqa: E402
from kwskit.data.audio import load_audio  # noqa: E402
from kwskit.data.speech_commands import (SILENCE, SILENCE_REGIONS, keyword_labels,  # noqa: E402
                                         scan_dataset)
from kwskit.models.io import load_model  # noqa: E402

LEVELS = (1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3)


def noise_windows(data: str, per_file: int = 20, split: str = "validation") -> np.ndarray:
    """(N, 16000) windows evenly spread over each noise file's ``split`` region."""
    lo, hi = SILENCE_REGIONS[split]
    out = []
    for path in scan_dataset(data).background:
        x = load_audio(path, SAMPLE_RATE)
        start, end = math.ceil(lo * len(x)), math.floor(hi * len(x)) - SAMPLE_RATE
        for s in np.linspace(start, end, per_file).astype(int):
            out.append(x[s:s + SAMPLE_RATE])
    return np.stack(out).astype(np.float32)


def recall_by_level(run: str, windows: np.ndarray) -> dict:
    pipeline, _, labels = load_model(run)
    kw = [labels.index(k) for k in keyword_labels(labels)]
    sil = labels.index(SILENCE)
    rms = np.sqrt(np.mean(windows.astype(np.float64) ** 2, axis=1, keepdims=True))
    rows = {}
    for level in LEVELS:
        x = np.clip(windows * (level / np.maximum(rms, 1e-12)), -1, 1).astype(np.float32)
        with torch.inference_mode():
            pred = pipeline(torch.from_numpy(x)).argmax(-1).numpy()
        rows[level] = {"silence": float(np.mean(pred == sil)),
                       "keyword": float(np.mean(np.isin(pred, kw)))}
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run directories")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "gsc-dev"),
                    help="data set whose noise recordings are used")
    a = ap.parse_args()
    torch.set_num_threads(1)
    windows = noise_windows(a.data)
    results = {run: recall_by_level(run, windows) for run in a.runs}
    head = "| RMS (dBFS) | " + " | ".join(f"{Path(r).name}: silence / keyword" for r in a.runs)
    print(f"{len(windows)} windows from {Path(a.data).name}'s noise recordings (validation region)\n")
    print(head + " |")
    print("|---|" + "---|" * len(a.runs))
    for level in LEVELS:
        cells = [f"{100 * results[r][level]['silence']:.0f}% / {100 * results[r][level]['keyword']:.0f}%"
                 for r in a.runs]
        print(f"| {level:g} ({20 * math.log10(level):.0f}) | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
