"""``kwskit calibrate``: per-keyword thresholds for a target false-alarm rate, kept in the run.

The model runs once over a validation stream (``score_stream``: generated from a data set's
split, or a labelled recording); ``fit_thresholds`` (kwskit.eval.detection) picks each
keyword's threshold and the smoothing window; the result goes to ``RUN/calibration.json``,
which ``kwskit stream`` and ``kwskit export --stream`` (the ONNX card) use by default.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from kwskit.errors import KwsError

CALIBRATION = "calibration.json"


def calibration_path(run: str | os.PathLike) -> Path:
    run = Path(run)
    return (run if run.is_dir() else run.parent.parent) / CALIBRATION


def read_calibration(run: str | os.PathLike) -> dict | None:
    """The run's calibration (None when it has none); a damaged file is one KwsError."""
    path = calibration_path(run)
    if not path.is_file():
        return None
    try:
        cal = json.loads(path.read_text())
        if not isinstance(cal.get("thresholds"), dict):
            raise ValueError("no thresholds")
    except (ValueError, OSError) as exc:
        raise KwsError(f"{path}: not a kwskit calibration ({exc}); run kwskit calibrate again "
                       "or delete it") from None
    return cal


def detector_settings(run: str | os.PathLike) -> dict | None:
    """What the detector and the ONNX card need from the run's calibration (None without)."""
    cal = read_calibration(run)
    if cal is None:
        return None
    return {k: cal[k] for k in ("thresholds", "smoothing_s", "refractory_s",
                                "target_fa_per_hour")}


def calibrate(run: str | os.PathLike, data: str | os.PathLike | None = None,
              split: str = "validation", minutes: float = 30.0,
              snr_db: Sequence[float] = (10.0, 20.0), seed: int = 0,
              target_fa_per_hour: float = 1.0, stream: str | os.PathLike | None = None,
              labels_file: str | os.PathLike | None = None, which: str = "best",
              window_s: float = 1.0, progress: bool = True,
              loud_noise: float = 0.0) -> tuple[dict, Path]:
    """Fit thresholds on a validation stream and write ``RUN/calibration.json``.
    Returns (calibration, path)."""
    from kwskit.eval.detection import fit_thresholds
    from kwskit.fsutil import write_json
    from kwskit.stream.evalstream import score_stream

    if not (isinstance(target_fa_per_hour, (int, float)) and target_fa_per_hour > 0):
        raise KwsError(f"--target-fa-per-hour: must be > 0, got {target_fa_per_hour!r}")
    s = score_stream(run, data, split, minutes, snr_db, seed, stream, labels_file, which,
                     window_s, progress, loud_noise)
    if not s.occurrences:
        raise KwsError("calibration needs a stream with keywords in it")
    cal = fit_thresholds(s.scores, s.times, s.labels, s.occurrences, s.duration_s,
                         target_fa_per_hour)
    cal.update(window_s=float(window_s), labels=s.labels,
               fitted_on=s.source | {"duration_s": s.duration_s,
                                     "occurrences": len(s.occurrences)})
    path = s.run_dir / CALIBRATION
    write_json(path, cal)
    return cal, path


def format_calibration(cal: dict) -> str:
    r = cal["result"]["overall"]
    lines = [f"calibrated for {cal['target_fa_per_hour']:g} false alarm(s) per hour: smoothing "
             f"{cal['smoothing_s']:g} s, refractory {cal['refractory_s']:g} s",
             f"on the calibration stream: {r['fa_per_hour']:.2f} FA/h, "
             f"{100 * (r['frr'] or 0):.1f}% of {r['occurrences']} keywords missed",
             "keyword      threshold"]
    for k, t in cal["thresholds"].items():
        flag = "  (over its share: fires too often even at the top threshold)" \
            if k in cal["over_budget"] else ""
        lines.append(f"{k:12s} {t:.5f}{flag}")
    return "\n".join(lines)
