"""Cost of streaming vs re-running the 1-s window, in PyTorch and in ONNX Runtime.

    python benchmarks/stream_cost.py                   # all registered models
    python benchmarks/stream_cost.py "bcresnet*" --seconds 20 --json out.json

For each model (its recipe's front-end, 12 classes, random weights, batch 1, one CPU thread):

- streaming MACs per 10 ms of audio: FlopCounterMode (kwskit.eval.profile.count_macs) over
  ``pipeline.step`` on one output frame's worth of samples, after a warm-up longer than the
  model's delay, scaled to 10 ms. Front-end included, and its share.
- naive MACs per 10 ms: the whole 1-s clip through front-end + model, re-run once per
  output frame of the streamer (the same output rate), i.e. clip MACs x 10 ms / frame step.
- per-call latency (median, p99; ms) and real-time factor (wall / audio time) of
  ``Streamer.step`` (torch eager) and ``OnnxStreamer.step`` (the exported streaming model in
  onnxruntime, fp32) fed 10-ms and 100-ms chunks over ``--seconds`` of audio. Models with a
  frame step above 10 ms buffer 10-ms chunks until a whole frame is there, so their 10-ms
  median is the buffering and their p99 the model call.
- naive RTF = median clip latency / frame step.

Prints a markdown table (and writes JSON with ``--json``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from kwskit.config import ExperimentConfig, ModelConfig  # noqa: E402
from kwskit.errors import KwsError  # noqa: E402
from kwskit.eval.profile import count_macs, measure_latency  # noqa: E402
from kwskit.fsutil import write_json  # noqa: E402
from kwskit.export.onnx import export_stream  # noqa: E402
from kwskit.runtime import OnnxStreamer  # noqa: E402
from kwskit.stream.streaming import Streamer  # noqa: E402
from kwskit.models.io import build_pipeline  # noqa: E402

HOP = 160  # 10 ms at 16 kHz


def _register_all_families() -> None:
    """Import every model family file (registration is a side effect of importing), so a
    family counts here even before kwskit.models imports it."""
    import kwskit.models as models

    for mod in pkgutil.iter_modules(models.__path__):
        if mod.name not in ("registry", "pipeline"):
            try:
                importlib.import_module(f"kwskit.models.{mod.name}")
            except Exception as exc:  # a family being written right now must not stop the rest
                print(f"skip family {mod.name}: {exc}", file=sys.stderr)


class _Step(nn.Module):
    """``forward(samples)`` = one ``pipeline.step`` from a fixed (warmed-up) state, so
    count_macs / FlopCounterMode can wrap it."""

    def __init__(self, pipeline: nn.Module, states: tuple):
        super().__init__()
        self.pipeline, self.states = pipeline, states

    def forward(self, x):
        return self.pipeline.step(x, *self.states)[0]


class _Frontend(nn.Module):
    def __init__(self, frontend: nn.Module):
        super().__init__()
        self.frontend = frontend

    def forward(self, frames):
        return self.frontend.frame_features(frames)


def per_call(streamer, audio: np.ndarray, chunk: int, repeats: int) -> dict:
    """Median and p99 ms per ``step`` call and the real-time factor (the fastest repeat)."""
    best, calls = None, None
    for _ in range(repeats):
        streamer.reset()
        times = []
        t0 = time.perf_counter()
        for i in range(0, len(audio), chunk):
            t1 = time.perf_counter()
            streamer.step(audio[i : i + chunk])
            times.append(time.perf_counter() - t1)
        total = time.perf_counter() - t0
        if best is None or total < best:
            best, calls = total, np.array(times) * 1e3
    return {"median_ms": float(np.median(calls)), "p99_ms": float(np.percentile(calls, 99)),
            "rtf": best / (len(audio) / 16000)}


def measure(name: str, seconds: float, repeats: int, tmp: Path) -> dict:
    from kwskit.models import model_info

    info = model_info(name)
    torch.manual_seed(0)
    cfg = ExperimentConfig(model=ModelConfig(name), frontend=info["frontend"])
    pipe = build_pipeline(cfg, 12).eval()
    streamer = Streamer(pipe)  # KwsError for models that cannot stream
    gen = torch.Generator().manual_seed(0)
    noise = lambda s: 0.1 * torch.randn(1, int(s * 16000), generator=gen)  # noqa: E731

    # MACs of one step (one output frame) from a warmed-up state
    states = pipe.init_state(1, streamer.window)
    unit = streamer.unit
    with torch.inference_mode():
        warm = noise(streamer.delay_s + 1.2)
        warm = warm[:, : warm.shape[1] // unit * unit]
        _, *states = pipe.step(warm, *states)
    per_10ms = HOP / unit
    stream_total = count_macs(_Step(pipe, tuple(states)), noise(unit / 16000)) * per_10ms
    if pipe.input_kind != "wave":
        frames = noise(streamer.win / 16000)[:, :, None].transpose(1, 2).reshape(1, -1, 1)
        fe_stream = count_macs(_Frontend(pipe.frontend), frames) * HOP / streamer.hop
    else:
        fe_stream = 0.0
    clip = noise(1.0)
    naive_clip = count_macs(pipe, clip)
    fe_clip = count_macs(pipe.frontend, clip) if pipe.input_kind != "wave" else 0
    naive_per_10ms = 0.01 / streamer.frame_step_s  # naive re-runs per 10 ms of audio

    audio = noise(seconds)[0].numpy()
    row = {}
    with torch.inference_mode():
        for ms in (10, 100):
            row[f"torch_{ms}"] = per_call(streamer, audio, ms * HOP // 10, repeats)
    labels = [f"c{i}" for i in range(12)]
    for ms in (10, 100):
        path = tmp / f"{name}-{ms}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_stream(pipe, labels, path, chunk_ms=ms, name=name)
        row[f"ort_{ms}"] = per_call(OnnxStreamer(path, threads=1), audio, ms * HOP // 10,
                                    repeats)

    lat = measure_latency(pipe, clip, threads=1, warmup=3, repeats=max(10, 3 * repeats))
    return {
        "model": name, "input": pipe.input_kind,
        "params": int(sum(p.numel() for p in pipe.backbone.parameters() if p.requires_grad)),
        "frame_step_ms": streamer.frame_step_s * 1e3, "delay_ms": streamer.delay_s * 1e3,
        "stream_macs_per_10ms": stream_total, "frontend_macs_per_10ms": fe_stream,
        "stream_model_macs_per_10ms": stream_total - fe_stream,
        "naive_macs_per_10ms": naive_clip * naive_per_10ms,
        "naive_model_macs_per_10ms": (naive_clip - fe_clip) * naive_per_10ms,
        **row, "rtf_naive": lat["median_ms"] / 1e3 / streamer.frame_step_s,
        "clip_latency_ms": lat["median_ms"],
    }


def _m(x: float) -> str:
    return f"{x / 1e6:.2f} M" if x >= 1e6 else f"{x / 1e3:.1f} k"


def _lat(r: dict) -> str:
    return f"{r['median_ms']:.3f} / {r['p99_ms']:.3f}"


def render(rows: list[dict], skipped: dict) -> str:
    lines = ["| model | in | params | step ms | delay ms | stream MACs/10 ms (front-end share) | "
             "naive MACs/10 ms | saving | torch ms/call 10 ms chunks (med / p99) | "
             "ORT ms/call 10 ms chunks | torch 100 ms | ORT 100 ms | RTF torch 10 / 100 ms | "
             "RTF ORT 10 / 100 ms | RTF naive |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        share = r["frontend_macs_per_10ms"] / r["stream_macs_per_10ms"]
        lines.append(
            f"| {r['model']} | {r['input']} | {r['params'] / 1e3:.1f} k | {r['frame_step_ms']:g} | "
            f"{r['delay_ms']:.0f} | {_m(r['stream_macs_per_10ms'])} ({100 * share:.0f}%) | "
            f"{_m(r['naive_macs_per_10ms'])} | "
            f"{r['naive_macs_per_10ms'] / r['stream_macs_per_10ms']:.0f}x | "
            f"{_lat(r['torch_10'])} | {_lat(r['ort_10'])} | {_lat(r['torch_100'])} | "
            f"{_lat(r['ort_100'])} | {r['torch_10']['rtf']:.3f} / {r['torch_100']['rtf']:.3f} | "
            f"{r['ort_10']['rtf']:.4f} / {r['ort_100']['rtf']:.4f} | {r['rtf_naive']:.3f} |")
    for name, why in skipped.items():
        lines.append(f"| {name} | - | - | - | - | not streamable: {why} |" + " |" * 9)
    return "\n".join(lines)


def main() -> int:
    from kwskit.models import list_models

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pattern", nargs="?", default=None, help="model name pattern (bcresnet*)")
    ap.add_argument("--seconds", type=float, default=10.0, help="audio streamed for the RTF")
    ap.add_argument("--repeats", type=int, default=3, help="RTF runs (the fastest is kept)")
    ap.add_argument("--json", help="also write the rows here")
    a = ap.parse_args()
    torch.set_num_threads(1)
    _register_all_families()
    rows, skipped = [], {}
    tmp = Path(tempfile.mkdtemp(prefix="kwskit-stream-cost-"))
    for name in list_models(a.pattern):
        try:
            row = measure(name, a.seconds, a.repeats, tmp)
        except KwsError as exc:
            skipped[name] = str(exc).split(": ", 1)[-1]
            continue
        rows.append(row)
        print(json.dumps(row, default=float), file=sys.stderr, flush=True)
    print(render(rows, skipped))
    if a.json:
        write_json(a.json, {"rows": rows, "not_streamable": skipped,
                            "torch": torch.__version__, "threads": 1,
                            "date": time.strftime("%Y-%m-%d")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
