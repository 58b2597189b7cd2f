"""A fixed labelled recording from gsc-dev's validation speakers, and every run scored on it.

    python benchmarks/check_recording.py [RUN ...] [--data ../shared/data/gsc-dev] [--out checks/val10]

Builds (once; the same seed gives the same samples) a 10-minute recording the way eval-stream
builds its streams -- validation-speaker keywords and other words, 0.5-2.5 s pauses over
background noise at 10-20 dB SNR, 30% of the pauses loud -- and writes it as
``OUT/recording.flac`` with ``OUT/recording_labels.tsv`` (``keyword, start, end``: the format
``kwskit eval-stream --stream FILE --labels-file FILE`` reads). The audio is built, never
committed. Then each RUN is scored on it with that command, and its misses at 1 FA/h printed:
a standing check that any later model is measured on the same audio.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kwskit.data.speech_commands import resolve_labels  # noqa: E402
from kwskit.data.streams import build_test_stream, write_labels_file  # noqa: E402
from kwskit.fsutil import atomic_path  # noqa: E402

MINUTES, SEED, LOUD = 10.0, 11, 0.3


def build(data: str, out: Path) -> tuple[Path, Path]:
    audio, labels_file = out / "recording.flac", out / "recording_labels.tsv"
    if audio.exists() and labels_file.exists():
        return audio, labels_file
    import numpy as np
    import soundfile as sf

    ts = build_test_stream(data, resolve_labels("mini10"), "validation", MINUTES, (10.0, 20.0),
                           SEED, loud_noise=LOUD)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(audio) as tmp:
        sf.write(str(tmp), np.clip(ts.audio, -1, 1), ts.sample_rate, subtype="PCM_16", format="FLAC")
    write_labels_file(labels_file, ts.occurrences)
    print(f"built {audio} ({ts.duration_s / 60:.1f} min, {len(ts.occurrences)} keywords, "
          f"{len(ts.words)} words)")
    return audio, labels_file


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="*", help="runs to score on the recording")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "gsc-dev"))
    ap.add_argument("--out", default=str(ROOT / "checks" / "val10"))
    a = ap.parse_args()
    audio, labels_file = build(a.data, Path(a.out))
    for run in a.runs:
        out = Path(a.out) / "scores" / Path(run).name
        subprocess.run([sys.executable, "-m", "kwskit", "eval-stream", run, "--stream", str(audio),
                        "--labels-file", str(labels_file), "--out", str(out)], check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
