"""How much the detector's settings move the stream misses: smoothing x minimum duration.

    python benchmarks/decision_rule.py "seed 0=runs/a" "seed 1=runs/b" ...
        [--smoothing 0.05 0.1 0.2 0.3 0.5] [--min-duration 0 0.1 0.2]

The detector (kwskit.stream.detector.Detector) averages each keyword's probability over the
last ``smoothing_s`` and drops a detection whose span above the threshold is shorter than
``min_duration_s``. This re-scores stream_ablation.py's streams (the same seeds and cache, so a run it scored costs
no model pass) at every setting of the grid: misses at 0.5 / 1 / 5 / 10 false alarms an hour on
the keyword stream, and at 1 / 10 counted on the keyword-free stream. Writes
benchmarks/results/decision_rule.md. One torch thread.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stream_ablation import (RESULTS, TARGETS, add_stream_args, pct,  # noqa: E402
                             misses_counting_keyword_free_alarms, named_runs, scored)

from kwskit.eval.detection import frr_at_fa, sweep  # noqa: E402
from kwskit.fsutil import write_text  # noqa: E402


def misses(run: str, a, smoothing_s: float, min_duration_s: float) -> list[float | None]:
    """Misses at TARGETS FA/h on the keyword stream, then at 1 and 10 counted on keyword-free
    audio, for one detector setting."""
    kw = dict(smoothing_s=smoothing_s, min_duration_s=min_duration_s)
    test = scored(run, a.data, a.minutes, a.seed, a.loud_noise)
    det = sweep(test.scores, test.times, test.labels, test.occurrences, test.duration_s, **kw)
    free = misses_counting_keyword_free_alarms(det, run, a.data, a.minutes, a.seed,
                                               a.loud_noise, **kw)
    return ([frr_at_fa(det["curves"]["overall"], det["thresholds"], g)["frr"] for g in TARGETS]
            + [free[g]["frr"] for g in ("1", "10")])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_stream_args(ap)
    ap.add_argument("--smoothing", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.3, 0.5])
    ap.add_argument("--min-duration", type=float, nargs="+", default=[0.0, 0.1, 0.2])
    a = ap.parse_args()
    torch.set_num_threads(1)
    lines = ["| run | smoothing (s) | min. duration (s) | misses at 0.5 / 1 / 5 / 10 FA/h "
             "| misses at 1 / 10 FA/h counted on keyword-free audio |", "|---|---|---|---|---|"]
    for name, _, path in named_runs(a.runs):
        for sm, md in itertools.product(a.smoothing, a.min_duration):
            m = misses(path, a, sm, md)
            lines.append(f"| {name} | {sm:g} | {md:g} | {' / '.join(map(pct, m[:4]))} "
                         f"| {' / '.join(map(pct, m[4:]))} |")
            print(lines[-1], flush=True)
    md = "\n".join(lines) + "\n"
    write_text(RESULTS / "decision_rule.md", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
