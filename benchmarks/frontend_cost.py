"""Cost of the LogMel front-end's two DFT paths, ``dft="fft"`` vs ``dft="conv"``, one CPU thread.

    python benchmarks/frontend_cost.py             # prints markdown, writes results/frontend_cost.md
    python benchmarks/frontend_cost.py --quick     # fewer repeats (a smoke run), writes nothing
    python benchmarks/frontend_cost.py --out x.md

The front-end is BC-ResNet-1's recipe (40 log-mel bands, 30-ms window of 480 samples, 10-ms hop
of 160, n_fft 512, 16 kHz); every timing uses ``torch.set_num_threads(1)``.

- MACs: ``kwskit.eval.profile.count_macs`` (FlopCounterMode / 2; an rfft counts FFTW's nominal
  2.5 N log2 N FLOPs) for one frame, i.e. a (1, 480) input; and for the whole BC-ResNet-1
  streamer (random weights, 12 classes) per 10-ms hop: 100 ``Streamer.step`` calls of 160
  samples after a warm-up, divided by 100, so the front-end's share of the per-hop cost.
- training-style: a batch of 100 one-second clips, forward (grad mode on, input without grad,
  as in training) and forward + backward (input requires grad, ``out.sum().backward()``);
  median ms over ``--train-repeats`` runs after warm-up.
- streaming-style inference (``torch.inference_mode``): ``frontend(x)`` for x of (1, 480)
  samples = one frame = what a streamer computes per 10-ms hop, and for a 100-ms chunk
  (1, 1600 + 320) = 10 frames; plus ``frontend.frame_features`` on one already-cut frame
  (1, 480, 1), the call ``KwsPipeline.step`` makes per hop. Median and p99 (nearest rank) in
  µs over ``--repeats`` calls. The paths alternate in blocks so load drift on a shared
  machine hits both alike.
- ONNX Runtime: each path exported with ``torch.onnx.export(dynamo=True)`` (dynamic batch and
  samples axes), run by onnxruntime's CPU provider with one intra-op and one inter-op thread
  on the same inputs. Skipped (with the reason) when onnx / onnxscript / onnxruntime are
  missing or a path does not export.
- whole BC-ResNet-1 streamer: ``Streamer.step`` wall time per 10-ms hop (160 samples).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from kwskit.eval.profile import count_macs  # noqa: E402
from kwskit.features.frontend import LogMel  # noqa: E402

PATHS = ("fft", "conv")
FE = {"n_mels": 40, "win_length": 480, "hop_length": 160, "n_fft": 512}  # bcresnet1's recipe
HOP = 160
CHUNK = 1600 + 320  # 100 ms of new samples + the 20 ms a 30-ms window still needs


def _noise(*shape, seed=0) -> torch.Tensor:
    return 0.1 * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _p99(xs: list[float]) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, math.ceil(0.99 * len(s)) - 1)]


def _interleaved(fns: dict, repeats: int, warmup: int, block: int = 100) -> dict:
    """Time each zero-argument callable ``repeats`` times (µs), alternating in blocks."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    done = 0
    while done < repeats:
        n = min(block, repeats - done)
        for k, fn in fns.items():
            t = times[k]
            for _ in range(n):
                t0 = time.perf_counter()
                fn()
                t.append((time.perf_counter() - t0) * 1e6)
        done += n
    return times


def _stats(ts: list[float]) -> dict:
    return {"median": statistics.median(ts), "p99": _p99(ts), "n": len(ts)}


# ---------------------------------------------------------------- MACs
class _FrameFeatures(nn.Module):
    def __init__(self, fe):
        super().__init__()
        self.fe = fe

    def forward(self, frames):
        return self.fe.frame_features(frames)


def frame_macs() -> dict:
    out = {}
    for p in PATHS:
        m = LogMel(dft=p, **FE)
        out[p] = {"frame": count_macs(m, _noise(1, 480)), "clip": count_macs(m, _noise(1, 16000))}
    return out


def _pipeline(path: str):
    from kwskit.config import ExperimentConfig, ModelConfig
    from kwskit.models import model_info
    from kwskit.models.io import build_pipeline

    fe = dict(model_info("bcresnet1")["frontend"], dft=path)
    torch.manual_seed(0)
    return build_pipeline(ExperimentConfig(model=ModelConfig("bcresnet1"), frontend=fe), 12).eval()


class _Feed(nn.Module):
    """``forward(samples)`` = stream them through ``streamer`` in 10-ms chunks."""

    def __init__(self, streamer):
        super().__init__()
        self.pipeline = streamer.pipeline
        self.streamer = streamer

    def forward(self, x):
        for i in range(0, x.shape[-1], HOP):
            self.streamer.step(x[0, i : i + HOP])
        return x


def streamer_cost(repeats: int) -> dict:
    """Per-hop MACs and ``step`` wall time of the BC-ResNet-1 streamer, per path."""
    from kwskit.stream.streaming import Streamer

    out, feeds = {}, {}
    for p in PATHS:
        pipe = _pipeline(p)
        assert pipe.frontend.dft == p and pipe.frontend.hop_length == HOP
        streamer = Streamer(pipe)
        feed = _Feed(streamer)
        with torch.inference_mode():
            feed(_noise(1, int((streamer.delay_s + 1.2) * 16000), seed=1))  # past look-ahead
        per_hop = count_macs(feed, _noise(1, 16000, seed=2)) / 100.0
        fe_hop = count_macs(pipe.frontend, _noise(1, pipe.frontend.win_length))
        out[p] = {"hop_macs": per_hop, "fe_hop_macs": fe_hop}
        feeds[p] = (streamer, _noise(repeats + 200, HOP, seed=3).numpy())
    counters = {p: 0 for p in PATHS}

    def stepper(p):
        streamer, audio = feeds[p]

        def fn():
            streamer.step(audio[counters[p] % len(audio)])
            counters[p] += 1
        return fn

    with torch.inference_mode():
        times = _interleaved({p: stepper(p) for p in PATHS}, repeats, warmup=200)
    for p in PATHS:
        out[p]["step_us"] = _stats(times[p])
    return out


# ---------------------------------------------------------------- timings
def training_cost(batch: int, repeats: int) -> dict:
    x = _noise(batch, 16000)
    out = {}
    mods = {p: LogMel(dft=p, **FE) for p in PATHS}

    def fwd(m):
        return lambda: m(x)

    def fwd_bwd(m):
        def fn():
            xg = x.detach().requires_grad_(True)
            m(xg).sum().backward()
        return fn

    t_f = _interleaved({p: fwd(m) for p, m in mods.items()}, repeats, warmup=3, block=1)
    t_fb = _interleaved({p: fwd_bwd(m) for p, m in mods.items()}, repeats, warmup=3, block=1)
    for p in PATHS:
        out[p] = {"fwd_ms": statistics.median(t_f[p]) / 1e3,
                  "fwd_bwd_ms": statistics.median(t_fb[p]) / 1e3}
    return out


def inference_cost(repeats: int) -> dict:
    mods = {p: LogMel(dft=p, **FE).eval() for p in PATHS}
    inputs = {"frame": _noise(1, 480), "chunk": _noise(1, CHUNK),
              "frame_features": _noise(1, 480, 1)}
    out = {p: {} for p in PATHS}
    with torch.inference_mode():
        for name, x in inputs.items():
            call = (lambda m, x=x: (lambda: m.frame_features(x))) if name == "frame_features" \
                else (lambda m, x=x: (lambda: m(x)))
            times = _interleaved({p: call(m) for p, m in mods.items()}, repeats, warmup=200)
            for p in PATHS:
                out[p][name] = _stats(times[p])
    return out


def _export(m: nn.Module, path: str) -> None:
    dims = ({0: torch.export.Dim("batch"), 1: torch.export.Dim("samples", min=480, max=64000)},)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (_noise(2, 16000),), path, dynamo=True, input_names=["wave"],
                          dynamic_shapes=dims, verbose=False)


def onnx_cost(repeats: int) -> dict:
    """{path: {"frame": stats, "chunk": stats, "opset": int, "max_err": float} or {"error": str}}"""
    try:
        import onnx
        import onnxruntime as ort
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError as exc:
        return {p: {"error": f"not measured: {exc}"} for p in PATHS}
    out, sessions = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for p in PATHS:
            m = LogMel(dft=p, **FE).eval()
            f = str(Path(tmp) / f"{p}.onnx")
            try:
                _export(m, f)
                so = ort.SessionOptions()
                so.intra_op_num_threads = 1
                so.inter_op_num_threads = 1
                sess = ort.InferenceSession(f, so, providers=["CPUExecutionProvider"])
            except Exception as exc:  # report, do not stop the other path
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                out[p] = {"error": f"{type(exc).__name__}: {first}"}
                continue
            x = _noise(3, 20000, seed=5)
            with torch.inference_mode():
                err = float(np.abs(sess.run(None, {"wave": x.numpy()})[0] - m(x).numpy()).max())
            ops = sorted({n.op_type for n in onnx.load(f).graph.node})
            out[p] = {"opset": onnx.load(f).opset_import[0].version, "max_err": err,
                      "ops": ops, "ort": ort.__version__}
            sessions[p] = sess
    for name, x in (("frame", _noise(1, 480)), ("chunk", _noise(1, CHUNK))):
        feed = {"wave": x.numpy()}
        times = _interleaved({p: (lambda s=s: s.run(None, feed)) for p, s in sessions.items()},
                             repeats, warmup=200)
        for p in sessions:
            out[p][name] = _stats(times[p])
    return out


def recipe_macs() -> list[dict]:
    """MACs per frame of every distinct spectral front-end in the model registry."""
    from kwskit.features.frontend import build_frontend
    from kwskit.models import list_models, model_info

    seen, rows = {}, []
    for name in list_models():
        fe = dict(model_info(name).get("frontend") or {})
        if fe.get("type", "logmel") not in ("logmel", "mfcc"):
            continue
        key = tuple(sorted((k, str(v)) for k, v in fe.items()))
        if key in seen:
            seen[key]["models"].append(name)
            continue
        row = {"models": [name], "fe": fe}
        for p in PATHS:
            m = build_frontend(dict(fe, dft=p))
            row[p] = count_macs(m, _noise(1, m.win_length))
        seen[key] = row
        rows.append(row)
    return rows


# ---------------------------------------------------------------- report
def _us(s: dict) -> str:
    return f"{s['median']:.1f} / {s['p99']:.1f}"


def render(r: dict) -> str:
    mac, tr, inf, ox, st = r["macs"], r["train"], r["infer"], r["onnx"], r["stream"]
    L = [f"Front-end cost, `dft=\"fft\"` vs `dft=\"conv\"` (BC-ResNet-1's LogMel: 40 mels, "
         f"win 480, hop 160, n_fft 512, 16 kHz). One CPU thread; {r['env']}.", ""]
    L += ["| | fft | conv | conv / fft |", "|---|---|---|---|"]

    def row(label, a, b, fmt="{:.1f}"):
        ratio = b / a if a else float("nan")
        L.append(f"| {label} | {fmt.format(a)} | {fmt.format(b)} | {ratio:.1f}x |")

    row("MACs per frame (1 x 480 samples)", mac["fft"]["frame"], mac["conv"]["frame"], "{:,.0f}")
    row("MACs per 1-s clip (98 frames)", mac["fft"]["clip"], mac["conv"]["clip"], "{:,.0f}")
    if st:
        row("BC-ResNet-1 streamer, MACs per 10-ms hop (total)", st["fft"]["hop_macs"],
            st["conv"]["hop_macs"], "{:,.0f}")
        for p in PATHS:
            st[p]["share"] = 100.0 * st[p]["fe_hop_macs"] / st[p]["hop_macs"]
        L.append(f"| ... of which front-end | {st['fft']['fe_hop_macs']:,.0f} "
                 f"({st['fft']['share']:.0f} %) | {st['conv']['fe_hop_macs']:,.0f} "
                 f"({st['conv']['share']:.0f} %) | "
                 f"{st['conv']['fe_hop_macs'] / st['fft']['fe_hop_macs']:.1f}x |")
    row(f"train: forward, batch {r['batch']} x 1 s [ms, median]", tr["fft"]["fwd_ms"],
        tr["conv"]["fwd_ms"], "{:.2f}")
    row(f"train: forward + backward, batch {r['batch']} x 1 s [ms, median]",
        tr["fft"]["fwd_bwd_ms"], tr["conv"]["fwd_bwd_ms"], "{:.2f}")

    def trow(label, a, b):
        L.append(f"| {label} | {_us(a)} | {_us(b)} | {b['median'] / a['median']:.1f}x |")

    trow("torch: `frontend(x)`, x (1, 480) = 1 frame [µs, median / p99]",
         inf["fft"]["frame"], inf["conv"]["frame"])
    trow("torch: `frontend.frame_features(f)`, f (1, 480, 1) [µs, median / p99]",
         inf["fft"]["frame_features"], inf["conv"]["frame_features"])
    trow(f"torch: `frontend(x)`, x (1, {CHUNK}) = 10 frames [µs, median / p99]",
         inf["fft"]["chunk"], inf["conv"]["chunk"])
    if all("frame" in ox[p] for p in PATHS):
        trow("onnxruntime: (1, 480) = 1 frame [µs, median / p99]",
             ox["fft"]["frame"], ox["conv"]["frame"])
        trow(f"onnxruntime: (1, {CHUNK}) = 10 frames [µs, median / p99]",
             ox["fft"]["chunk"], ox["conv"]["chunk"])
    if st:
        trow("BC-ResNet-1 `Streamer.step`, 160 samples [µs, median / p99]",
             st["fft"]["step_us"], st["conv"]["step_us"])
    L.append("")
    for p in PATHS:
        o = ox[p]
        if "error" in o:
            L.append(f"- ONNX, `dft=\"{p}\"`: {o['error']}")
        else:
            L.append(f"- ONNX, `dft=\"{p}\"`: `torch.onnx.export(dynamo=True)`, opset "
                     f"{o['opset']}, ops {', '.join(o['ops'])}; onnxruntime {o['ort']} vs "
                     f"torch max |diff| {o['max_err']:.1e} (log-mel, batch 3 x 20000 samples)")
    if st:
        L.append(f"- front-end share of the streamer's per-hop MACs: "
                 f"{st['conv']['share']:.0f} % -> {st['fft']['share']:.0f} %; the front-end's "
                 f"own per-hop MACs drop {st['conv']['fe_hop_macs'] / st['fft']['fe_hop_macs']:.1f}x"
                 f" and the streamer's total {st['conv']['hop_macs'] / st['fft']['hop_macs']:.1f}x")
    if r.get("recipes"):
        L += ["", "MACs per frame of each registry recipe's front-end:", "",
              "| models | front-end | fft | conv | conv / fft |", "|---|---|---|---|---|"]
        for rr in r["recipes"]:
            fe = rr["fe"]
            desc = (f"{fe.get('type', 'logmel')}, win {fe.get('win_length', 480)}, "
                    f"n_fft {fe.get('n_fft', 512)}, {fe.get('n_mels', 40)} mels")
            L.append(f"| {', '.join(rr['models'])} | {desc} | {rr['fft']:,} | {rr['conv']:,} | "
                     f"{rr['conv'] / rr['fft']:.1f}x |")
    return "\n".join(L) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2000, help="single-frame timing calls")
    ap.add_argument("--train-repeats", type=int, default=20, help="batch timing runs")
    ap.add_argument("--batch", type=int, default=100, help="training-style batch size")
    ap.add_argument("--quick", action="store_true", help="few repeats; do not write --out")
    ap.add_argument("--no-streamer", action="store_true", help="skip the BC-ResNet-1 rows")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "frontend_cost.md"))
    a = ap.parse_args()
    if a.quick:
        a.repeats, a.train_repeats = 200, 3
    torch.set_num_threads(1)
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    env = (f"torch {torch.__version__}, {cpu}, {time.strftime('%Y-%m-%d')}; "
           f"{a.repeats} single-frame calls, {a.train_repeats} batch runs")
    r = {"env": env, "batch": a.batch}
    steps = [("macs", frame_macs), ("recipes", recipe_macs),
             ("train", lambda: training_cost(a.batch, a.train_repeats)),
             ("infer", lambda: inference_cost(a.repeats)),
             ("onnx", lambda: onnx_cost(a.repeats)),
             ("stream", (lambda: None) if a.no_streamer else (lambda: streamer_cost(a.repeats)))]
    for key, fn in steps:
        t0 = time.perf_counter()
        r[key] = fn()
        print(f"[{key}: {time.perf_counter() - t0:.1f} s]", file=sys.stderr, flush=True)
    text = render(r)
    print(text)
    if not a.quick:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text)
        print(f"wrote {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
