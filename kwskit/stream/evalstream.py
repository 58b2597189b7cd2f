"""``kwskit eval-stream``: a model on a long stream, scored by the one detection rule.

``evaluate_stream`` builds a seeded test stream from a data set's split
(kwskit.data.streams) or reads a recording and its keyword-times file, runs the model over it
once (Streamer, one thread), sweeps the detector's threshold over the stored scores and scores
every threshold with the MLPerf Tiny streaming rule (kwskit.eval.detection): DET curves of
false-reject rate vs false alarms per hour, per keyword and overall. The constant processing
delay ``delay_s`` (front-end framing + look-ahead) is reported beside the curves.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from kwskit.data.speech_commands import keyword_labels
from kwskit.data.streams import (GAP_S, KEYWORD_SHARE, build_test_stream, read_labels_file,
                                 write_labels_file)
from kwskit.errors import KwsError
from kwskit.eval.detection import TOLERANCE_S, summarize, sweep


@dataclass
class ScoredStream:
    """A model's scores over one long stream, with what the stream holds."""

    labels: list[str]
    scores: np.ndarray  # (frames, classes) probabilities
    times: np.ndarray  # (frames,) seconds
    occurrences: list
    duration_s: float
    source: dict
    delay_s: float
    frame_step_s: float
    run_dir: Path  # where results go by default
    audio: object = None  # the generated TestStream (None for a recording)


def score_stream(run: str | os.PathLike, data: str | os.PathLike | None = None,
                 split: str = "test", minutes: float = 10.0,
                 snr_db: Sequence[float] = (10.0, 20.0), seed: int = 0,
                 stream: str | os.PathLike | None = None,
                 labels_file: str | os.PathLike | None = None, which: str = "best",
                 window_s: float = 1.0, progress: bool = True,
                 loud_noise: float = 0.0, keyword_share: float = KEYWORD_SHARE) -> ScoredStream:
    """Build a seeded test stream from ``data``'s ``split`` (default: the data the run was
    trained on) or read a recording and its keyword-times file, and run the model over it
    once (Streamer, one thread, flushed at the end). ``keyword_share`` 0 builds keyword-free
    audio: every detection on it is a false alarm."""
    import torch

    from kwskit.models.io import load_model
    from kwskit.stream.longaudio import array_blocks, run_stream, stream_file
    from kwskit.stream.streaming import Streamer

    if (stream is None) != (labels_file is None):
        raise KwsError("--stream and --labels-file go together (a recording and its keyword "
                       "times)")
    pipeline, cfg, labels = load_model(run, which)
    if stream is None and data is None:
        data = cfg.data.root  # the data set the run was trained on, as its config records it
        if not data or not Path(data).is_dir():
            raise KwsError(f"--data: give a data set folder to build test streams from (the run "
                           f"was trained on {data or 'an unrecorded data set'}, which is not "
                           "here), or --stream FILE --labels-file FILE")
        if progress:
            print(f"data: {data} (the run's training data)", file=sys.stderr)
    streamer = Streamer(pipeline, window_s=window_s)
    if not keyword_labels(labels):
        raise KwsError(f"{run}: the model has no keyword labels (only {', '.join(labels)})")
    run_path = Path(run)
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # small chunks: one thread is fastest and fair to other jobs
    try:
        if stream is None:
            ts = build_test_stream(data, labels, split, minutes, snr_db, seed, progress=progress,
                                   loud_noise=loud_noise, keyword_share=keyword_share)
            occurrences = ts.occurrences
            scored = run_stream(streamer, array_blocks(ts.audio, streamer.sample_rate),
                                keep_scores=True, source="test stream",
                                total_s=ts.duration_s, progress=progress)
            source = {"kind": "generated", "data": str(data), "split": split, "minutes": minutes,
                      "snr_db": list(snr_db) if isinstance(snr_db, (list, tuple)) else [snr_db],
                      "seed": seed, "noise": ts.noise, "words": len(ts.words),
                      "keyword_share": keyword_share, "gap_s": list(GAP_S),
                      "loud_noise": loud_noise}
        else:
            occurrences = read_labels_file(labels_file, labels)
            scored = stream_file(streamer, stream, chunk_ms=1000.0, keep_scores=True,
                                 progress=progress)
            source = {"kind": "recording", "stream": str(stream), "labels_file": str(labels_file)}
            ts = None
    finally:
        torch.set_num_threads(old)
    name = str(stream) if stream is not None else "the test stream"
    if scored.scores is None or not len(scored.scores):
        raise KwsError(f"{name}: too short to give a single score frame")
    late = [o for o in occurrences if o.start >= scored.duration_s]
    if late:
        raise KwsError(f"{labels_file}: keyword {late[0].keyword!r} at {late[0].start:g} s is "
                       f"past the end of {name} ({scored.duration_s:.1f} s); wrong labels file?")
    return ScoredStream(labels, scored.scores, scored.times, list(occurrences),
                        scored.duration_s, source, streamer.delay_s, streamer.frame_step_s,
                        run_path if run_path.is_dir() else run_path.parent, ts)


def evaluate_stream(run: str | os.PathLike, data: str | os.PathLike | None = None,
                    split: str = "test", minutes: float = 10.0,
                    snr_db: Sequence[float] = (10.0, 20.0), seed: int = 0,
                    out: str | os.PathLike | None = None, stream: str | os.PathLike | None = None,
                    labels_file: str | os.PathLike | None = None, which: str = "best",
                    window_s: float = 1.0, smoothing_s: float = 0.1, refractory_s: float = 1.0,
                    save_audio: bool = False, progress: bool = True,
                    loud_noise: float = 0.0) -> tuple[dict, Path]:
    """``kwskit eval-stream``: build (or read) a stream, score it once, sweep, write results.

    Writes to ``out`` (default RUN/eval-stream): det.json (settings, curves, summary),
    det.png, stream_labels.tsv (the occurrences) and, with ``save_audio``, stream.flac.
    Returns (result dict, output folder).
    """
    from kwskit.fsutil import write_json

    s = score_stream(run, data, split, minutes, snr_db, seed, stream, labels_file, which,
                     window_s, progress, loud_noise)
    out_dir = Path(out) if out else s.run_dir / "eval-stream"
    result = sweep(s.scores, s.times, s.labels, s.occurrences, s.duration_s,
                   smoothing_s=smoothing_s, refractory_s=refractory_s)
    result["summary"] = summarize(result)
    result.update(run=str(run), labels=s.labels, source=s.source, rule={
        "hit": "a detection of the keyword starting in [onset, end + 1 s]",
        "false_alarm": "any other detection (one detection finds one occurrence)", "tolerance_s": TOLERANCE_S,
        "smoothing_s": smoothing_s, "refractory_s": refractory_s, "window_s": window_s,
        "delay_s": s.delay_s, "frame_step_s": s.frame_step_s})
    write_json(out_dir / "det.json", result)
    from kwskit.eval.plots import plot_det

    plot_det(result, out_dir / "det.png")
    write_labels_file(out_dir / "stream_labels.tsv", s.occurrences)
    if s.audio is not None and save_audio:
        import soundfile as sf

        from kwskit.fsutil import atomic_path

        with atomic_path(out_dir / "stream.flac") as tmp:
            sf.write(str(tmp), np.clip(s.audio.audio, -1, 1), s.audio.sample_rate,
                     subtype="PCM_16", format="FLAC")
    return result, out_dir


__all__ = ["ScoredStream", "evaluate_stream", "score_stream"]
