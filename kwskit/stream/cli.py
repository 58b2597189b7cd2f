"""``kwskit stream``, ``kwskit eval-stream`` and ``kwskit calibrate``: arguments and commands.

``add_parsers(subparsers)`` adds the three sub-commands to the ``kwskit`` parser; heavy imports
(torch, the model) happen only when one of them runs.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from kwskit.errors import KwsError


def parse_threshold(text: str) -> float | dict:
    """``"0.7"`` -> 0.7; ``"yes=0.8,no=0.6"`` -> dict; ``"0.6,yes=0.8"`` -> dict with a
    default for the keywords not named (key ``"*"``)."""
    default, named = None, {}
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        key, _, val = part.rpartition("=")
        try:
            v = float(val)
        except ValueError:
            raise KwsError(f"--threshold: {part!r} is not a number or keyword=number") from None
        if not 0.0 <= v <= 1.0 or not math.isfinite(v):
            raise KwsError(f"--threshold: {part!r} must be a probability in [0, 1]")
        if key:
            named[key.strip()] = v
        else:
            default = v
    if not named:
        if default is None:
            raise KwsError(f"--threshold: no value in {text!r}")
        return default
    if default is not None:
        named["*"] = default
    return named


def _thresholds_for(thr: float | dict, labels: list[str]) -> float | dict:
    if not isinstance(thr, dict):
        return thr
    default = thr.get("*", 0.5)
    unknown = sorted(k for k in thr if k != "*" and k not in labels)
    if unknown:
        raise KwsError(f"--threshold: unknown keyword(s) {', '.join(unknown)} "
                       f"(labels: {', '.join(labels)})")
    return {lab: thr.get(lab, default) for lab in labels}


def _plot_path(base: str, audio: str, many: bool) -> Path:
    p = Path(base)
    if not many:
        return p
    return p.with_name(f"{p.stem}_{Path(audio).stem}{p.suffix or '.png'}")


def _print_detections(res, file=None) -> None:
    file = file or sys.stdout
    n = len(res.detections)
    print(f"{res.source}: {res.duration_s:.1f} s, {n} detection{'s' if n != 1 else ''}",
          file=file)
    for d in res.detections:
        print(f"  {d.start:9.2f} s  {d.keyword:<12s} {d.score:.3f}  "
              f"(until {d.end:.2f} s)", file=file)


# ------------------------------------------------------------------------------ microphone
def mic_blocks(chunk_ms: float, seconds: float | None, sample_rate: int = 16000):
    """Blocks of mono float32 samples from the default input device (``sounddevice``).

    Opens the device at ``sample_rate`` when it supports it, else at its default rate with a
    streaming soxr resampler. Stops after ``seconds`` (None: until Ctrl-C). A missing
    ``sounddevice`` package, PortAudio library or input device raises KwsError.
    """
    import queue

    import numpy as np

    try:
        import sounddevice as sd
    except (ImportError, OSError) as exc:
        raise KwsError(f"no audio input device (sounddevice unavailable: {exc}; "
                       "`pip install sounddevice` for --mic)") from None
    try:
        dev = sd.query_devices(kind="input")
    except Exception as exc:  # PortAudioError / ValueError when there is no input device
        raise KwsError(f"no audio input device ({exc})") from None
    rate = sample_rate
    try:
        sd.check_input_settings(samplerate=rate, channels=1, dtype="float32")
    except Exception:
        rate = int(dev.get("default_samplerate") or sample_rate)
    resampler = None
    if rate != sample_rate:
        import soxr

        resampler = soxr.ResampleStream(rate, sample_rate, 1, dtype="float32", quality="HQ")
    block = max(1, int(round(chunk_ms / 1000.0 * rate)))
    q: queue.Queue = queue.Queue()

    def callback(indata, frames, time_info, status):  # runs on PortAudio's thread
        q.put(indata[:, 0].copy())

    limit = None if seconds is None else int(round(seconds * rate))
    got = 0
    try:
        stream = sd.InputStream(samplerate=rate, channels=1, dtype="float32", blocksize=block,
                                callback=callback)
    except Exception as exc:
        raise KwsError(f"no audio input device ({exc})") from None
    with stream:
        while limit is None or got < limit:
            x = q.get()
            if limit is not None:
                x = x[: limit - got]
            got += len(x)
            yield resampler.resample_chunk(x) if resampler is not None else x
    if resampler is not None:  # the resampler's filter still holds the last few samples
        yield resampler.resample_chunk(np.zeros(0, np.float32), last=True)


class _LiveLine:
    """One status line rewritten in place: time, the top keyword now, the last detection."""

    def __init__(self, labels: list[str], file=None):
        from kwskit.stream.detector import DEFAULT_IGNORE

        self.kw = [i for i, lab in enumerate(labels) if lab not in DEFAULT_IGNORE]
        self.labels, self.file, self.last = labels, file or sys.stderr, "-"

    def __call__(self, scores, times, new) -> None:
        for d in new:
            self.last = f"{d.keyword} @ {d.start:.2f} s ({d.score:.2f})"
            print(f"\r{' ' * 78}\r  detected {self.last}", file=self.file)
        if len(times) and self.kw:
            row = scores[-1]
            i = max(self.kw, key=lambda k: row[k])
            line = (f"\r  {times[-1]:8.1f} s | top {self.labels[i]:<10s} {row[i]:.2f} | "
                    f"last {self.last}")
            print(f"{line:<80s}", end="", file=self.file, flush=True)


# ------------------------------------------------------------------------------ commands
def open_streamer(model: str, window_s: float, threads: int, checkpoint: str = "best"):
    """(streamer, labels, calibration or None) for a run directory or checkpoint (PyTorch)
    or an exported ``.onnx`` streaming model (ONNX Runtime; torch is not imported). A run
    that ``kwskit quantize`` wrote holds a quantized streaming model: it streams with that.
    Without PyTorch, a run streams with its exported streaming model."""
    quantized = exported = None
    if not str(model).endswith(".onnx"):
        from kwskit.eval.evaluate import quantized_export

        quantized = quantized_export(model, "stream")
        exported = quantized or _export_without_torch(model)
    if exported is not None or str(model).endswith(".onnx"):
        from kwskit.runtime import OnnxStreamer

        streamer = OnnxStreamer(exported or model, threads=threads)
        if abs(streamer.window_s - window_s) > 1e-9:
            again = "quantize again" if quantized else "export again"
            raise KwsError(f"--window-s: {exported or model} was exported with a "
                           f"{streamer.window_s:g}-s window; {again} with --window-s {window_s:g}")
        return streamer, streamer.labels, streamer.card.get("calibration")
    import torch

    from kwskit.models.io import load_model
    from kwskit.stream.calibrate import read_calibration
    from kwskit.stream.streaming import Streamer

    torch.set_num_threads(threads)
    pipeline, _cfg, labels = load_model(model, checkpoint)
    return Streamer(pipeline, window_s=window_s), labels, read_calibration(model)


def _export_without_torch(run: str) -> Path | None:
    """A run's exported streaming model (RUN/export/*-stream.onnx, as the pretrained models
    ship) when PyTorch is not installed: ONNX Runtime then runs it. None when torch is there
    (the checkpoint is used) or ``run`` is a checkpoint file; KwsError when the run has no
    single streaming export."""
    import importlib.util

    try:
        has_torch = importlib.util.find_spec("torch") is not None
    except ModuleNotFoundError:  # an import hook that hides it
        has_torch = False
    if has_torch or not Path(run).is_dir():
        return None
    found = sorted((Path(run) / "export").glob("*-stream.onnx"))
    if len(found) != 1:
        raise KwsError(f"{run}: PyTorch is not installed, so this run streams only through its "
                       f"exported streaming model, and {run}/export holds "
                       f"{len(found) or 'no'} *-stream.onnx files: kwskit export RUN --stream "
                       "where torch is, or pip install 'kwskit[train]'")
    return found[0]


def detector_options(a, labels: list[str], cal: dict | None) -> tuple[dict, str]:
    """Detector settings: what the command line says, else the model's calibration, else
    threshold 0.5, smoothing 0.1 s, refractory 1 s. Returns (kwargs, a line saying which)."""
    use = cal if a.threshold is None and cal else None
    thr = parse_threshold(a.threshold) if a.threshold is not None else \
        (dict(use["thresholds"]) if use else 0.5)
    opts = {"threshold": _thresholds_for(thr, labels),
            "smoothing_s": a.smoothing_s if a.smoothing_s is not None else
            (use["smoothing_s"] if use else 0.1),
            "refractory_s": a.refractory_s if a.refractory_s is not None else
            (use["refractory_s"] if use else 1.0),
            "min_duration_s": a.min_duration_s}
    if use:
        why = (f"thresholds calibrated for {use['target_fa_per_hour']:g} false alarm(s) per "
               f"hour, smoothing {opts['smoothing_s']:g} s")
    elif a.threshold is not None:
        why = f"threshold {a.threshold}"
    else:
        why = "threshold 0.5 (not calibrated: kwskit calibrate RUN picks per-keyword ones)"
    return opts, why


def cmd_stream(a) -> int:
    """``kwskit stream RUN_OR_ONNX AUDIO... | --mic``."""
    from kwskit.stream.detector import Detector
    from kwskit.stream.longaudio import run_stream, stream_file

    if bool(a.audio) == bool(a.mic):
        raise KwsError("give audio files to stream, or --mic (not both)")
    if not a.chunk_ms > 0:
        raise KwsError(f"--chunk-ms: must be > 0, got {a.chunk_ms}")
    if a.threads < 1:
        raise KwsError(f"--threads: must be >= 1, got {a.threads}")
    for path in a.audio:
        if Path(path).is_dir():
            raise KwsError(f"{path}: is a directory; give audio files (e.g. {Path(path) / '*.wav'})")
        if not Path(path).is_file():
            raise KwsError(f"{path}: no such audio file")
    if a.threshold is not None:
        parse_threshold(a.threshold)  # a typo is an error before the model loads
    streamer, labels, cal = open_streamer(a.run, a.window_s, a.threads, a.checkpoint)
    opts, why = detector_options(a, labels, cal)
    thr = opts["threshold"]
    detector = Detector(labels, **opts)
    if not a.json:
        print(f"{a.run}: {streamer}; {why}", file=sys.stderr)
    results = []
    if a.mic:
        live = _LiveLine(labels)
        try:
            res = run_stream(streamer, mic_blocks(a.chunk_ms, a.seconds), detector,
                             keep_scores=bool(a.plot), source="microphone", on_frames=live,
                             progress=False)
        except KeyboardInterrupt:  # Ctrl-C ends a live session normally
            res = None
        print(file=sys.stderr)
        if res is None:
            print("stopped", file=sys.stderr)
            return 0
        results.append(res)
    else:
        for path in a.audio:
            results.append(stream_file(streamer, path, detector, chunk_ms=a.chunk_ms,
                                       keep_scores=bool(a.plot)))
    if a.plot:
        from kwskit.stream.plots import plot_stream

        for res in results:
            out = _plot_path(a.plot, res.source, len(results) > 1)
            plot_stream(res.scores, res.times, labels, res.detections, out, threshold=thr,
                        envelope=res.envelope, title=f"{Path(res.source).name}: "
                        f"{len(res.detections)} detection(s), {why.split(' (')[0]}")
            if not a.json:
                print(f"plot: {out}", file=sys.stderr)
    if a.json:
        print(json.dumps({"run": str(a.run), "labels": labels, "threshold": thr,
                          "calibrated": bool(cal) and a.threshold is None,
                          "window_s": a.window_s, "delay_s": round(streamer.delay_s, 4),
                          "frame_step_s": round(streamer.frame_step_s, 4),
                          "files": [r.to_dict() for r in results]}))
    else:
        for res in results:
            _print_detections(res)
    return 0


def cmd_eval_stream(a) -> int:
    """``kwskit eval-stream RUN --data DIR | --stream FILE --labels-file FILE``."""
    from kwskit.eval.detection import format_summary
    from kwskit.stream.evalstream import evaluate_stream

    result, out = evaluate_stream(
        a.run, data=a.data, split=a.split, minutes=a.minutes, snr_db=a.snr, seed=a.seed,
        out=a.out, stream=a.stream, labels_file=a.labels_file, which=a.checkpoint,
        window_s=a.window_s, smoothing_s=a.smoothing_s, refractory_s=a.refractory_s,
        save_audio=a.save_audio, loud_noise=a.loud_noise)
    print(format_summary(result))
    print(f"report: {out / 'det.json'}  plot: {out / 'det.png'}")
    if a.json:
        print(json.dumps({"summary": result["summary"], "occurrences": result["occurrences"],
                          "duration_s": result["duration_s"], "out": str(out)}))
    return 0


def cmd_calibrate(a) -> int:
    """``kwskit calibrate RUN [--target-fa-per-hour 1]``."""
    from kwskit.stream.calibrate import calibrate, format_calibration

    cal, path = calibrate(a.run, data=a.data, split=a.split, minutes=a.minutes, snr_db=a.snr,
                          seed=a.seed, target_fa_per_hour=a.target_fa_per_hour,
                          stream=a.stream, labels_file=a.labels_file, which=a.checkpoint,
                          window_s=a.window_s, loud_noise=a.loud_noise)
    print(format_calibration(cal))
    print(f"written: {path} (kwskit stream and kwskit export --stream use it by default)")
    return 0


def _add_stream_source(p, split: str, minutes: float, seed: int, what: str, verb: str) -> None:
    """The options eval-stream and calibrate share: where the stream comes from (generated
    from a data set's split, or a recording and its labels) and how the model reads it."""
    p.add_argument("--data", help=f"data set to build {what} from (default: the one the run "
                   "was trained on)")
    p.add_argument("--split", default=split, choices=["test", "validation", "train"],
                   help="split whose speakers and words make the stream")
    p.add_argument("--minutes", type=float, default=minutes, help="generated stream length")
    p.add_argument("--snr", type=float, nargs="+", default=[10.0, 20.0], metavar="DB",
                   help="word SNR in dB: one value or a low and a high")
    p.add_argument("--seed", type=int, default=seed, help="seed of the generated stream")
    p.add_argument("--loud-noise", type=float, default=0.0, metavar="SHARE",
                   help="share of pauses filled with loud noise (RMS 0.03-0.3)")
    p.add_argument("--stream", help=f"a real recording to {verb} instead (with --labels-file)")
    p.add_argument("--labels-file", help="CSV/TSV of keyword, start, end (seconds)")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"], help="which checkpoint")
    p.add_argument("--window-s", type=float, default=1.0, help="classifier window (s)")


def add_parsers(subparsers) -> None:
    """Add ``stream``, ``eval-stream`` and ``calibrate`` to the ``kwskit`` sub-command parser."""
    s = subparsers.add_parser("stream", help="detect keywords in long recordings or live audio")
    s.add_argument("run", help="run directory, checkpoint, or exported streaming .onnx model")
    s.add_argument("audio", nargs="*", help="audio files (any rate / channels; read in blocks)")
    s.add_argument("--mic", action="store_true", help="listen to the default input device")
    s.add_argument("--seconds", type=float, default=None, help="--mic: stop after this long")
    s.add_argument("--plot", metavar="PNG", help="write keyword probability over time")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.add_argument("--threshold", default=None,
                   help="probability, or keyword=p,... (a bare number is the default); "
                   "default: the model's calibration (kwskit calibrate), else 0.5")
    s.add_argument("--chunk-ms", type=float, default=100.0, help="audio block size (ms)")
    s.add_argument("--window-s", type=float, default=1.0, help="classifier window (s)")
    s.add_argument("--smoothing-s", type=float, default=None,
                   help="posterior smoothing (s); default: the calibration's, else 0.1")
    s.add_argument("--refractory-s", type=float, default=None,
                   help="debounce per keyword (s); default: the calibration's, else 1.0")
    s.add_argument("--min-duration-s", type=float, default=0.0, help="shortest span (s)")
    s.add_argument("--checkpoint", default="best", choices=["best", "last"], help="which checkpoint")
    s.add_argument("--threads", type=int, default=1, help="CPU threads (torch or onnxruntime)")
    s.set_defaults(func=cmd_stream)

    e = subparsers.add_parser("eval-stream",
                              help="false rejects vs false alarms per hour on long streams")
    e.add_argument("run", help="run directory or checkpoint")
    _add_stream_source(e, "test", 10.0, 0, "the test stream", "score")
    e.add_argument("--out", help="output folder (default: RUN/eval-stream)")
    e.add_argument("--smoothing-s", type=float, default=0.1, help="posterior smoothing (s)")
    e.add_argument("--refractory-s", type=float, default=1.0, help="debounce per keyword (s)")
    e.add_argument("--save-audio", action="store_true", help="also write the stream as FLAC")
    e.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    e.set_defaults(func=cmd_eval_stream)

    c = subparsers.add_parser("calibrate",
                              help="per-keyword thresholds for a false-alarm rate, kept in the run")
    c.add_argument("run", help="run directory")
    c.add_argument("--target-fa-per-hour", type=float, default=1.0,
                   help="false alarms per hour allowed over all keywords")
    _add_stream_source(c, "validation", 30.0, 1, "the calibration stream", "calibrate on")
    c.set_defaults(func=cmd_calibrate)
