"""Cost of streaming vs re-running the 1-s window, for every streamable model.

    python benchmarks/stream_cost.py                   # all registered models
    python benchmarks/stream_cost.py "bcresnet*" --seconds 20 --json out.json

For each model (its recipe's front-end, 12 classes, random weights, batch 1, one CPU thread):

- streaming MACs per 10 ms of audio: FlopCounterMode (kwskit.eval.profile.count_macs) over
  ``Streamer.step`` calls fed 160-sample (10 ms) chunks for 1 s, after a warm-up longer than
  the model's look-ahead, divided by 100. Front-end included, and model alone.
- naive MACs per 10 ms: the whole 1-s clip through front-end + model, re-run once per
  output frame of the streamer (the same output rate), i.e. clip MACs x 10 ms / frame step.
- real-time factors (wall time / audio time; < 1 keeps up): streaming = ``step`` on 10 ms
  (and 100 ms) chunks over ``--seconds`` of audio, the fastest of ``--repeats`` runs;
  naive = median clip latency / frame step.

Prints a markdown table (and writes JSON with ``--json``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from kwskit.config import ExperimentConfig, ModelConfig  # noqa: E402
from kwskit.errors import KwsError  # noqa: E402
from kwskit.eval.profile import count_macs, measure_latency  # noqa: E402
from kwskit.fsutil import write_json  # noqa: E402
from kwskit.stream.streaming import Streamer  # noqa: E402
from kwskit.train.run import build_pipeline  # noqa: E402

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


class _Feed(nn.Module):
    """``forward(samples)`` = stream them through ``streamer`` in 10 ms chunks (so
    count_macs / FlopCounterMode can wrap a sequence of ``step`` calls)."""

    def __init__(self, streamer: Streamer):
        super().__init__()
        self.pipeline = streamer.pipeline  # registered, so eval-mode handling reaches it
        self.streamer = streamer

    def forward(self, x):
        frames = 0
        for i in range(0, x.shape[-1], HOP):
            frames += self.streamer.step(x[0, i : i + HOP]).shape[0]
        return torch.tensor(frames)


def measure(name: str, seconds: float, repeats: int) -> dict:
    from kwskit.models import model_info

    info = model_info(name)
    torch.manual_seed(0)
    cfg = ExperimentConfig(model=ModelConfig(name), frontend=info["frontend"])
    pipe = build_pipeline(cfg, 12).eval()
    streamer = Streamer(pipe)  # KwsError for models that cannot stream
    gen = torch.Generator().manual_seed(0)
    noise = lambda s: 0.1 * torch.randn(1, int(s * 16000), generator=gen)  # noqa: E731

    feed = _Feed(streamer)
    warm = streamer.delay_s + 1.2  # past the look-ahead, so every step emits its share
    with torch.inference_mode():
        feed(noise(warm))
    stream_total = count_macs(feed, noise(1.0)) / 100.0
    clip = noise(1.0)
    naive_clip = count_macs(pipe, clip)
    fe_clip = count_macs(pipe.frontend, clip) if pipe.input_kind != "wave" else 0
    # front-end cost per 10 ms when streaming: one frame per hop of the front-end
    if pipe.input_kind != "wave":
        one_frame = count_macs(pipe.frontend, noise(streamer.win / 16000))
        fe_stream = one_frame * HOP / streamer.hop
    else:
        fe_stream = 0.0
    per_10ms = 0.01 / streamer.frame_step_s  # naive re-runs per 10 ms of audio

    audio = noise(seconds)[0].numpy()

    def rtf(chunk: int) -> float:
        times = []
        for _ in range(repeats):
            streamer.reset()
            t0 = time.perf_counter()
            with torch.inference_mode():
                for i in range(0, len(audio), chunk):
                    streamer.step(audio[i : i + chunk])
            times.append(time.perf_counter() - t0)
        return min(times) / seconds

    lat = measure_latency(pipe, clip, threads=1, warmup=3, repeats=max(10, 3 * repeats))
    return {
        "model": name, "input": pipe.input_kind,
        "params": int(sum(p.numel() for p in pipe.backbone.parameters() if p.requires_grad)),
        "frame_step_ms": streamer.frame_step_s * 1e3, "delay_ms": streamer.delay_s * 1e3,
        "stream_macs_per_10ms": stream_total, "stream_model_macs_per_10ms": stream_total - fe_stream,
        "naive_macs_per_10ms": naive_clip * per_10ms,
        "naive_model_macs_per_10ms": (naive_clip - fe_clip) * per_10ms,
        "rtf_stream": rtf(HOP), "rtf_stream_100ms": rtf(10 * HOP), "rtf_naive": lat["median_ms"] / 1e3 / streamer.frame_step_s,
        "clip_latency_ms": lat["median_ms"],
    }


def _m(x: float) -> str:
    return f"{x / 1e6:.2f} M" if x >= 1e6 else f"{x / 1e3:.1f} k"


def render(rows: list[dict], skipped: dict) -> str:
    lines = ["| model | in | params | step ms | delay ms | stream MACs/10 ms (model) | "
             "naive MACs/10 ms (model) | saving | RTF stream 10 ms / 100 ms chunks | RTF naive |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['input']} | {r['params'] / 1e3:.1f} k | {r['frame_step_ms']:g} | "
            f"{r['delay_ms']:.0f} | {_m(r['stream_macs_per_10ms'])} ({_m(r['stream_model_macs_per_10ms'])}) | "
            f"{_m(r['naive_macs_per_10ms'])} ({_m(r['naive_model_macs_per_10ms'])}) | "
            f"{r['naive_macs_per_10ms'] / r['stream_macs_per_10ms']:.0f}x | "
            f"{r['rtf_stream']:.3f} / {r['rtf_stream_100ms']:.3f} | {r['rtf_naive']:.3f} |")
    for name, why in skipped.items():
        lines.append(f"| {name} | - | - | - | - | not streamable: {why} | | | | |")
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
    for name in list_models(a.pattern):
        try:
            row = measure(name, a.seconds, a.repeats)
        except KwsError as exc:
            skipped[name] = str(exc).split(": ", 1)[-1]
            continue
        rows.append(row)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}),
              file=sys.stderr, flush=True)
    print(render(rows, skipped))
    if a.json:
        write_json(a.json, {"rows": rows, "not_streamable": skipped,
                            "torch": torch.__version__, "threads": 1,
                            "date": time.strftime("%Y-%m-%d")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
