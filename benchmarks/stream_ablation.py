"""Old vs new training for the stream: misses at 0.5 / 1 / 5 / 10 false alarms per hour.

    python benchmarks/stream_ablation.py "TF silence=runs/a" "SNR noise + mining=runs/b" ...
        [--data ../shared/data/gsc-dev] [--minutes 60] [--loud-noise 0.3] [--readme MARKER]
        [--add]

Every run is scored on the same seeded stream of gsc-dev's validation speakers (eval-stream's
builder: SNR 10-20 dB, other words between keywords, ``--loud-noise`` of the pauses loud) and,
for per-keyword thresholds, on a second stream (another seed, ``--calib-minutes``): thresholds
are fitted there for 1 FA/h (``kwskit calibrate``'s rule) and measured on the first stream.
Both streams come from the same validation speakers (gsc-dev has no test speakers), so the
calibrated column is optimistic about speakers, not about the stream itself. A third stream,
keyword-free (the same speakers' other words, noise and loud pauses), counts false alarms the
way wake-word benchmarks do: misses on the keyword stream at the threshold where the
keyword-free audio fires at most 0.5 / 1 / 10 times an hour. A second table breaks the
misses at 10 FA/h down by keyword, with the class each keyword was most often taken for.
A run may be ``pretrained:NAME``.

Writes benchmarks/results/stream_ablation.md (table), .json (numbers and each run's overall DET
curve) and .png (overall DET curves of every run on one plot). Scores are cached per run
(RUN/ablation-scores/), so adding a run re-scores only that one. ``--add`` keeps the rows
already in the results file (their run folders may be gone) and adds or replaces the named
ones. One torch thread.
"""

from __future__ import annotations

import argparse
import collections
import functools
import hashlib
import json
import os
import pickle
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from kwskit import pretrained  # noqa: E402
from kwskit.data.speech_commands import keyword_labels  # noqa: E402
from kwskit.data.streams import KEYWORD_SHARE, build_test_stream  # noqa: E402
from kwskit.eval.detection import (false_alarm_sources, false_alarms,  # noqa: E402
                                   fit_thresholds, frr_at_fa, keyword_peaks, keyword_rivals,
                                   score_detections, sweep)
from kwskit.eval.plots import plot_det_compare  # noqa: E402
from kwskit.fsutil import replace_between, write_json, write_text  # noqa: E402
from kwskit.stream.detector import Detector  # noqa: E402
from kwskit.stream.evalstream import score_stream  # noqa: E402
from noise_levels import LEVELS, noise_windows, recall_by_level  # noqa: E402

TARGETS = (0.5, 1.0, 5.0, 10.0)
NEG_TARGETS = (0.5, 1.0, 10.0)
SPLIT, SNR_DB = "validation", (10.0, 20.0)  # the streams' speakers and word SNRs
SNR_BANDS = ((10.0, 13.4), (16.6, 20.0))  # the stream's quietest and loudest thirds of words
RESULTS = ROOT / "benchmarks" / "results"


def scored(run: str, data: str, minutes: float, seed: int, loud: float, keyword_free: bool = False):
    """score_stream's result for ``run`` (cached in RUN/ablation-scores/, keyed by the stream
    and the run's weights: a refreshed pretrained:NAME copy keeps the folder's other files)."""
    weights = hashlib.sha1()
    for f in sorted(Path(run).glob("checkpoints/*")) + [Path(run) / "quantization.json"]:
        if f.is_file():
            weights.update(f.read_bytes())
    what = ([str(Path(data).resolve()), minutes, seed, loud, weights.hexdigest()]
            + (["keyword-free"] if keyword_free else []))
    key = hashlib.sha1(json.dumps(what).encode()).hexdigest()[:10]
    cache = Path(run) / "ablation-scores" / f"{key}.pkl"
    if cache.exists():
        return pickle.loads(cache.read_bytes())
    s = score_stream(run, data, SPLIT, minutes, SNR_DB, seed, loud_noise=loud,
                     keyword_share=0.0 if keyword_free else KEYWORD_SHARE)
    s.audio = None  # the scores are what is kept
    cache.parent.mkdir(exist_ok=True)
    cache.write_bytes(pickle.dumps(s))
    return s


@functools.lru_cache(maxsize=None)
def stream_words(labels: tuple, data: str, minutes: float, seed: int, loud: float) -> tuple:
    """The seeded stream's words (rebuilt: the score caches keep no audio), in stream order."""
    ts = build_test_stream(data, list(labels), SPLIT, minutes, SNR_DB, seed,
                           progress=False, loud_noise=loud)
    return tuple(ts.words)


def keyword_snrs(labels: tuple, data: str, minutes: float, seed: int, loud: float) -> np.ndarray:
    """Each keyword occurrence's SNR in the seeded stream, in the order of its occurrences."""
    return np.array([w["snr_db"] for w in stream_words(labels, data, minutes, seed, loud)
                     if w["keyword"]])


def alarm_sources(test, a, det: dict, fa_per_hour: float = 10.0) -> dict:
    """At the one-threshold operating point for ``fa_per_hour``: how many false alarms came
    over another keyword, over the same keyword again, over other words only, over no word
    (noise, pauses)."""
    t = frr_at_fa(det["curves"]["overall"], det["thresholds"], fa_per_hour)["threshold"]
    if t is None:
        return {"keyword": None, "repeat": None, "word": None, "noise": None}
    found = Detector(test.labels, threshold=t).detect(test.scores, test.times)
    words = stream_words(tuple(test.labels), a.data, a.minutes, a.seed, a.loud_noise)
    return false_alarm_sources(false_alarms(found, test.occurrences), words)


def peaks_and_rivals(test) -> tuple[np.ndarray, list]:
    """Each occurrence's own smoothed score peak and the class above it there (computed once
    per stream: both smooth the whole stream)."""
    return (keyword_peaks(test.scores, test.times, test.labels, test.occurrences),
            keyword_rivals(test.scores, test.times, test.labels, test.occurrences))


def peaks_by_snr(test, a, peaks: np.ndarray, rivals: list) -> dict:
    """Median smoothed peak of each keyword's own score, and the share that reaches 0.5, for the
    quietest and loudest words: misses that no threshold can take back show here."""
    snr = keyword_snrs(tuple(test.labels), a.data, a.minutes, a.seed, a.loud_noise)
    out = {"all": {"median": float(np.median(peaks)), "reach_0.5": float(np.mean(peaks >= 0.5))}}
    # what the words that never reach 0.5 were taken for, at their own score's peak
    lost = [r for r, p in zip(rivals, peaks) if p < 0.5]
    out["lost_to"] = {"_silence_": lost.count("_silence_"), "_unknown_": lost.count("_unknown_"),
                      "keyword": sum(r not in ("_silence_", "_unknown_", None) for r in lost)}
    for lo, hi in SNR_BANDS:
        sel = (snr >= lo) & (snr <= hi)
        out[f"{lo:g}-{hi:g}"] = {"median": float(np.median(peaks[sel])),
                                 "reach_0.5": float(np.mean(peaks[sel] >= 0.5)), "n": int(sel.sum())}
    return out


def per_keyword(test, det: dict, peaks: np.ndarray, rivals: list,
                fa_per_hour: float = 10.0) -> dict:
    """Each keyword's misses at the one-threshold operating point for ``fa_per_hour``, and what
    the missed occurrences were taken for most often at their own score's peak (the class
    above them there): which words the false-alarm budget costs, and against which rival."""
    t = frr_at_fa(det["curves"]["overall"], det["thresholds"], fa_per_hour)["threshold"]
    if t is None:
        return {}
    i = det["thresholds"].index(t)
    out = {}
    for k in keyword_labels(test.labels):
        lost = collections.Counter(r for o, p, r in zip(test.occurrences, peaks, rivals)
                                   if o.keyword == k and p < t)
        rival, n = lost.most_common(1)[0] if lost else (None, 0)
        out[k] = {"frr": det["curves"][k]["frr"][i], "n": det["occurrences"][k],
                  "taken_for": rival, "taken_for_n": n}
    return out


def calibrated(test, calib) -> dict:
    """Per-keyword thresholds fitted on ``calib`` for 1 FA/h, measured on ``test``."""
    fit = fit_thresholds(calib.scores, calib.times, calib.labels, calib.occurrences,
                         calib.duration_s, target_fa_per_hour=1.0)
    det = Detector(test.labels, threshold=fit["thresholds"], smoothing_s=fit["smoothing_s"],
                   refractory_s=fit["refractory_s"]).detect(test.scores, test.times)
    res = score_detections(det, test.occurrences, keyword_labels(test.labels), test.duration_s)
    return {"frr": res["overall"]["frr"], "fa_per_hour": res["overall"]["fa_per_hour"],
            "fitted_on_calibration_stream": fit["result"]["overall"]}


def misses_counting_keyword_free_alarms(test_det: dict, run: str, data: str, minutes: float,
                                        seed: int, loud: float, **detector) -> dict:
    """Misses on the keyword stream at the thresholds where a keyword-free stream of the same
    speakers (other words, noise, loud pauses; ``minutes`` long, seeded ``seed`` + 1000) raises
    at most 0.5 / 1 / 10 false alarms an hour: how wake-word benchmarks count (false rejects on
    positive audio, false alarms on negative audio), so a keyword taken for another keyword is
    a miss here but never a false alarm. ``detector``: ``sweep``'s smoothing_s /
    min_duration_s, the same as ``test_det`` was swept with."""
    neg = scored(run, data, minutes, seed + 1000, loud, keyword_free=True)
    neg_det = sweep(neg.scores, neg.times, neg.labels, neg.occurrences, neg.duration_s, **detector)
    assert neg_det["thresholds"] == test_det["thresholds"]  # the same grid: curves align
    curve = {"frr": test_det["curves"]["overall"]["frr"],
             "fa_per_hour": neg_det["curves"]["overall"]["fa_per_hour"]}
    return {"curve": curve} | {f"{g:g}": frr_at_fa(curve, test_det["thresholds"], g)
                               for g in NEG_TARGETS}


def measure(run: str, a, windows) -> dict:
    test = scored(run, a.data, a.minutes, a.seed, a.loud_noise)
    calib = scored(run, a.data, a.calib_minutes, a.calib_seed, a.loud_noise)
    det = sweep(test.scores, test.times, test.labels, test.occurrences, test.duration_s)
    metrics = json.loads((Path(run) / "metrics.json").read_text())
    noise = recall_by_level(run, windows)
    peaks = peaks_and_rivals(test)
    return {"run": run, "val_acc": metrics["best"]["val_acc"], "det": det,
            "occurrences": det["occurrences"]["overall"],
            "det_overall": {k: det["curves"]["overall"][k] for k in ("frr", "fa_per_hour")},
            "misses": {f"{g:g}": frr_at_fa(det["curves"]["overall"], det["thresholds"], g)
                       for g in TARGETS},
            "calibrated_1": calibrated(test, calib),
            "misses_keyword_free_fa": misses_counting_keyword_free_alarms(
                det, run, a.data, a.minutes, a.seed, a.loud_noise),
            "peaks": peaks_by_snr(test, a, *peaks),
            "alarms_at_10": alarm_sources(test, a, det),
            "per_keyword_at_10": per_keyword(test, det, *peaks),
            "noise_called_keyword_max": max(v["keyword"] for v in noise.values()),
            "noise_called_silence_min": min(v["silence"] for v in noise.values())}


def pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _peaks(p: dict) -> str:
    lo, hi = (p[f"{a:g}-{b:g}"] for a, b in SNR_BANDS)
    return f"{lo['median']:.2f} ({pct(lo['reach_0.5'])}) / {hi['median']:.2f} ({pct(hi['reach_0.5'])})"


def _lost(p: dict) -> str:
    lost = p["lost_to"]
    return f"{lost['_silence_']} / {lost['_unknown_']} / {lost['keyword']}"


def _alarms(src: dict) -> str:
    return " / ".join("-" if src[k] is None else str(src[k])
                      for k in ("keyword", "repeat", "word", "noise"))


def _keyword_free(r: dict) -> str:
    m = r.get("misses_keyword_free_fa")  # None: a row kept from before the column
    return "-" if m is None else " / ".join(pct(m[f"{g:g}"]["frr"]) for g in NEG_TARGETS)


def table(rows: dict, a) -> str:
    occ = next(v["occurrences"] for v in rows.values() if "occurrences" in v)  # old rows: none
    lines = [f"Validation-speaker stream: {a.minutes:g} min, {occ} keywords, SNR 10-20 dB, "
             f"{a.loud_noise:g} of the pauses loud (seed {a.seed}); per-keyword thresholds fitted "
             f"on a {a.calib_minutes:g}-min stream (seed {a.calib_seed}). Misses = false rejects "
             f"of keyword occurrences; one threshold for all keywords unless said. The last "
             f"column counts false alarms on a {a.minutes:g}-min keyword-free stream of the same "
             f"speakers instead (seed {a.seed + 1000}), as wake-word benchmarks do.",
             "",
             "| run | val acc | misses at 0.5 / 1 / 5 / 10 FA/h | per-keyword thresholds for 1 FA/h: "
             "misses (FA/h) | noise RMS 1e-4..0.3 called a keyword (worst level) | keyword peak "
             "score, median (share >= 0.5): words at SNR 10-13 / 17-20 dB | words never at 0.5 "
             "taken for silence / unknown / another keyword | false alarms at 10 FA/h over another "
             "keyword / the same keyword again / other words / no word | misses at 0.5 / 1 / 10 "
             "FA/h counted on keyword-free audio |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        m = " / ".join(pct(r["misses"][f"{g:g}"]["frr"]) for g in TARGETS)
        c = r["calibrated_1"]
        lines.append(f"| {name} | {100 * r['val_acc']:.2f}% | {m} | {pct(c['frr'])} "
                     f"({c['fa_per_hour']:.1f}) | {pct(r['noise_called_keyword_max'])} | "
                     f"{_peaks(r['peaks'])} | {_lost(r['peaks'])} | {_alarms(r['alarms_at_10'])} | "
                     f"{_keyword_free(r)} |")
    return "\n".join(lines) + "\n" + per_keyword_table(rows)


def per_keyword_table(rows: dict) -> str:
    """Misses per keyword at 10 FA/h (one threshold for all), with what the missed ones were
    taken for most often; only the rows scored since this breakdown was stored."""
    rows = {k: v["per_keyword_at_10"] for k, v in rows.items() if v.get("per_keyword_at_10")}
    if not rows:
        return ""
    keywords = sorted({k for v in rows.values() for k in v})
    lines = ["", "Misses per keyword at 10 FA/h (one threshold for all keywords); in brackets "
             "what most of the missed ones were taken for at their own score's peak, and how "
             "many:", "", "| run | " + " | ".join(keywords) + " |",
             "|---|" + "---|" * len(keywords)]
    for name, v in rows.items():
        cells = []
        for k in keywords:
            c = v.get(k)
            cells.append("-" if c is None else f"{pct(c['frr'])}" + (
                f" ({c['taken_for']} {c['taken_for_n']})" if c["taken_for"] else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def add_stream_args(ap: argparse.ArgumentParser) -> None:
    """The runs and the test stream's settings, shared with the scripts that re-score it."""
    ap.add_argument("runs", nargs="+", help="NAME=RUN pairs (or bare run folders)")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "gsc-dev"))
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--loud-noise", type=float, default=0.3)


def named_runs(runs: list[str]) -> list[tuple[str, str, str]]:
    """(name, run as given, run folder) for each NAME=RUN or bare run; ``pretrained:NAME``
    resolves to its unpacked folder."""
    pairs = [r.split("=", 1) if "=" in r else (Path(r).name, r) for r in runs]
    return [(name, run, str(pretrained.resolve(run)) if pretrained.is_reference(run) else run)
            for name, run in pairs]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_stream_args(ap)
    ap.add_argument("--calib-minutes", type=float, default=30.0)
    ap.add_argument("--calib-seed", type=int, default=11)
    ap.add_argument("--name", default="stream_ablation", help="results file stem")
    ap.add_argument("--add", action="store_true",
                    help="keep the rows of the existing results file; score only the runs named")
    ap.add_argument("--readme", metavar="MARKER",
                    help="also put the table between <!-- MARKER:start/end --> in README.md")
    a = ap.parse_args()
    torch.set_num_threads(1)
    windows = noise_windows(a.data)
    rows = previous_rows(RESULTS / f"{a.name}.json", a) if a.add else {}
    for name, run, path in named_runs(a.runs):
        print(f"{name}: {run}", file=sys.stderr)
        rows[name] = measure(path, a, windows) | {"run": run}  # the name given, not the cache
    md = table(rows, a)
    print(md)
    write_text(RESULTS / f"{a.name}.md", md)
    if a.readme and not replace_between(ROOT / "README.md", f"<!-- {a.readme}:start -->",
                                        f"<!-- {a.readme}:end -->", md.rstrip("\n")):
        print(f"README.md: no <!-- {a.readme}:start/end --> markers; table not written",
              file=sys.stderr)
    settings = vars(a) | {"data": os.path.relpath(a.data, ROOT),
                          "runs": [f"{k}={v['run']}" for k, v in rows.items()]}
    write_json(RESULTS / f"{a.name}.json", {"settings": settings, "noise_levels": list(LEVELS),
                                            "rows": {k: {kk: vv for kk, vv in v.items() if kk != "det"}
                                                     for k, v in rows.items()}})
    keyword_free = {k: v["misses_keyword_free_fa"]["curve"] for k, v in rows.items()
                    if "misses_keyword_free_fa" in v}
    plot(keyword_free, rows, RESULTS / f"{a.name}_keyword_free.png",
         f"Misses on the stream against false alarms on {a.minutes:g} min of keyword-free audio")
    missing = [k for k, v in rows.items() if "det_overall" not in v]
    if missing:  # rows kept from a results file written before the curves were stored
        print(f"{a.name}.png not rewritten: no DET curve stored for {', '.join(missing)}",
              file=sys.stderr)
        return 0
    plot({k: v["det_overall"] for k, v in rows.items()}, rows, RESULTS / f"{a.name}.png",
         f"Streaming DET, gsc-dev validation speakers, {a.minutes:g} min, loud pauses")
    return 0


def plot(curves: dict, rows: dict, path: Path, title: str) -> None:
    """``plot_det_compare`` of stored overall curves ({frr, fa_per_hour} per row)."""
    if not curves:
        return
    results = {k: {"curves": {"overall": c}, "occurrences": {"overall": rows[k]["occurrences"]},
                   "duration_s": 0.0} for k, c in curves.items()}
    plot_det_compare(results, path, title=title)
    print(f"plot: {path}", file=sys.stderr)


def previous_rows(path: Path, a) -> dict:
    """The rows of an earlier results file, when it was made on the same streams."""
    if not path.exists():
        return {}
    old = json.loads(path.read_text())
    same = ("minutes", "seed", "calib_minutes", "calib_seed", "loud_noise")
    changed = [k for k in same if old["settings"].get(k) != getattr(a, k)]
    if changed:
        raise SystemExit(f"{path}: made with other stream settings ({', '.join(changed)}); "
                         "drop --add to score every run again")
    return old["rows"]


if __name__ == "__main__":
    raise SystemExit(main())
