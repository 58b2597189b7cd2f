"""Post-training quantization on real speech: float vs fp16 vs int8 ONNX, and n-bit weights.

    python benchmarks/quantize_table.py                       # gsc-dev, the two n11 runs
    python benchmarks/quantize_table.py --torchao             # + torch pt2e / inductor int8

For BC-ResNet-1 (runs/n11-silence) and DS-CNN-S (runs/n11-dscnn-same), ``kwskit quantize``
writes runs/q-<run>-{int8,fp16,w8,w4,w2,w1} (kept and reused unless ``--fresh``), then:

- accuracy on the gsc-dev validation split (the clips ``kwskit eval --split validation``
  scores): the float PyTorch model, the float / fp16 / int8 ONNX clip models (ONNX Runtime),
  and the PyTorch model with weights rounded to 8/4/2/1 bits (kwskit.compress.quantize);
- ONNX file bytes and the bytes of the stored tensors (int64 index tensors left out:
  kwskit.compress.onnx_quant.tensor_bytes);
- ORT latency of one clip (batch 1, one thread, ORT_ENABLE_ALL as kwskit.runtime runs it):
  the models timed in turn call by call so that load from other processes hits them alike,
  the median of ``--repeats`` calls, the lowest of 3 such rounds (``clip_latency``);
- streaming cost: ``OnnxStreamer.step`` fed 10-ms blocks over ``--seconds`` of validation
  audio, timed as benchmarks/stream_cost.py does (``per_call``; the fastest of 3 passes):
  mean ms per 10 ms of audio (= real-time factor x 10 ms; DS-CNN-S's model runs every 40 ms,
  its 10-ms calls in between only buffer) and the p99 of one call;
- agreement of the int8 (and fp16) streaming model with the float streaming model over 60 s
  of validation clips played one after another (``kwskit quantize`` measures it: top-1
  agreement per frame, mean and max |dp|);
- the op types ONNX Runtime runs for the int8 models after its graph optimisation.

``--torchao`` adds the alternative path: torch.export + torchao's pt2e X86InductorQuantizer
(int8 static, per-channel weights, the same 500 calibration clips), accuracy of the converted
model and latency of it compiled with torch.compile (inductor, freezing), next to inductor
float32. Prints markdown and writes benchmarks/results/quantize.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

from kwskit.compress.onnx_quant import integer_ops, tensor_bytes  # noqa: E402
from kwskit.compress.quantize import quantize_run  # noqa: E402
from kwskit.data.loader import INT16_SCALE  # noqa: E402
from kwskit.eval.evaluate import predict, split_clips  # noqa: E402
from kwskit.export.onnx import export_clip, export_stream  # noqa: E402
from kwskit.models.io import load_model  # noqa: E402
from kwskit.runtime import OnnxClassifier, OnnxStreamer  # noqa: E402
from stream_cost import per_call  # noqa: E402

MODELS = {"BC-ResNet-1": "runs/n11-silence", "DS-CNN-S": "runs/n11-dscnn-same"}
MODES = {"int8": {"mode": "int8"}, "fp16": {"mode": "fp16"},
         **{f"w{b}": {"mode": "weights", "bits": b} for b in (8, 4, 2, 1)}}


def quantized(src: Path, data: str, out_root: Path, fresh: bool) -> dict:
    """mode -> quantization record, running ``kwskit quantize`` where needed."""
    records = {}
    for tag, kw in MODES.items():
        run = out_root / f"q-{src.name}-{tag}"
        if fresh and run.exists():
            shutil.rmtree(run)
        if not (run / "quantization.json").is_file():
            if run.exists():  # a partial run of this benchmark
                shutil.rmtree(run)
            t0 = time.time()
            quantize_run(src, run, data=data, **kw)
            print(f"{run.name}: {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
        records[tag] = {**json.loads((run / "quantization.json").read_text()), "run": run}
    return records


def clip_latency(paths: dict, clip: np.ndarray, repeats: int, rounds: int = 3) -> dict:
    """ms of one clip per model: the models called in turn, ``repeats`` calls each per
    round; the median of a round, the lowest of ``rounds`` rounds (the least disturbed by
    other processes on a shared machine)."""
    models = {k: OnnxClassifier(p, threads=1) for k, p in paths.items()}
    best = {k: float("inf") for k in models}
    for _ in range(rounds):
        times = {k: [] for k in models}
        for r in range(repeats + 10):
            for k, m in models.items():
                t0 = time.perf_counter()
                m.probs(clip)
                if r >= 10:  # warm-up calls
                    times[k].append((time.perf_counter() - t0) * 1e3)
        best = {k: min(best[k], statistics.median(v)) for k, v in times.items()}
    return best


def _times(fn, x, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def stream_cost(paths: dict, audio: np.ndarray) -> dict:
    out = {}
    for k, p in paths.items():
        r = per_call(OnnxStreamer(p, threads=1), audio, 160, repeats=3)
        out[k] = {"ms_per_10ms": 10.0 * r["rtf"], "p99_ms": r["p99_ms"]}
    return out


def torchao_row(src: Path, calib: np.ndarray, val: tuple, repeats: int) -> dict:
    """pt2e static int8 with torchao's X86InductorQuantizer; inductor latency (module doc)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    class Probs(torch.nn.Module):
        def __init__(self, p):
            super().__init__()
            self.p = p

        def forward(self, x):
            return torch.softmax(self.p(x), -1)

    model = Probs(load_model(src)[0]).eval()
    x = torch.from_numpy(calib)
    batch = torch.export.Dim("batch", min=1, max=1024)
    t0 = time.time()
    graph = torch.export.export(model, (x[:2],), dynamic_shapes=({0: batch},)).module()
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for i in range(0, len(x), 50):
            prepared(x[i:i + 50])
    q = convert_pt2e(prepared)
    seconds = time.time() - t0
    waves, targets = val
    acc = float((predict(q, waves).argmax(1) == targets).mean())
    one = torch.from_numpy(waves[:1].astype(np.float32) / INT16_SCALE)
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    lat = {}
    for name, m in (("int8", q), ("float", model)):
        t0 = time.time()
        compiled = torch.compile(m)
        with torch.no_grad():
            compiled(one)
            compile_s = time.time() - t0
            ms = min(statistics.median(_times(compiled, one, repeats)) for _ in range(3))
        lat[name] = {"ms": ms, "compile_s": compile_s}
    return {"val_acc": acc, "quantize_s": seconds, "latency": lat}


def measure(label: str, src: Path, data: str, out_root: Path, a) -> dict:
    recs = quantized(src, data, out_root, a.fresh)
    pipeline, cfg, labels = load_model(src)
    waves, targets, _ = split_clips(cfg, labels, data, "validation")
    tmp = Path(tempfile.mkdtemp(prefix="kwskit-qtable-"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_clip(pipeline, labels, tmp / "float.onnx", clip_samples=cfg.data.clip_samples)
        export_stream(pipeline, labels, tmp / "float-stream.onnx", chunk_ms=10.0)
    clip = {"float": tmp / "float.onnx"}
    stream = {"float": tmp / "float-stream.onnx"}
    for tag in ("fp16", "int8"):
        clip[tag] = recs[tag]["run"] / recs[tag]["onnx"]["clip"]
        stream[tag] = recs[tag]["run"] / recs[tag]["onnx"]["stream"]
    acc = {"float (PyTorch)": float((predict(pipeline, waves).argmax(1) == targets).mean()),
           "float": float((predict(OnnxClassifier(clip["float"]), waves).argmax(1) == targets).mean()),
           "fp16": recs["fp16"]["val_acc"], "int8": recs["int8"]["val_acc"]}
    audio = waves[: int(a.seconds)].reshape(-1).astype(np.float32) / INT16_SCALE
    row = {"model": label, "run": str(src), "val_clips": len(targets), "accuracy": acc,
           "file_bytes": {k: p.stat().st_size for k, p in clip.items()},
           "tensor_bytes": {k: tensor_bytes(p) for k, p in clip.items()},
           "stream_file_bytes": {k: p.stat().st_size for k, p in stream.items()},
           "clip_ms": clip_latency(clip, waves[:1].astype(np.float32) / INT16_SCALE, a.repeats),
           "stream": stream_cost(stream, audio),
           "agreement": {t: recs[t]["stream_agreement"] for t in ("fp16", "int8")},
           "ops": recs["int8"]["ops"],
           "weights": {t: {"bits": recs[t]["bits"], "val_acc": recs[t]["val_acc"],
                           "backbone_bytes": recs[t]["weights"]["bytes"],
                           "backbone_bytes_fp32": recs[t]["weights"]["bytes_fp32"]}
                       for t in ("w8", "w4", "w2", "w1")},
           "runs": {t: str(r["run"]) for t, r in recs.items()}}
    if a.torchao:
        from kwskit.compress.quantize import _calibration_audio

        calib = _calibration_audio(cfg, labels, data, 500, 0)
        row["torchao"] = torchao_row(src, calib, (waves, targets), a.repeats)
    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(row, default=str), file=sys.stderr, flush=True)
    return row


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def render(rows: list[dict]) -> str:
    out = ["| model | precision | val acc | ONNX clip file | stored tensors | ORT ms / clip | "
           "stream ms / 10 ms audio (p99 call) | stream file | stream vs float: top-1 agree, "
           "mean / max abs dp |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for k in ("float", "fp16", "int8"):
            ag = r["agreement"].get(k)
            agree = (f"{100 * ag['top1_agreement']:.1f}%, {ag['mean_abs_diff']:.4f} / "
                     f"{ag['max_abs_diff']:.3f}" if ag else "(reference)")
            s = r["stream"][k]
            acc = _pct(r["accuracy"][k])
            if k == "float":
                acc += f" (PyTorch {_pct(r['accuracy']['float (PyTorch)'])})"
            out.append(f"| {r['model']} | {k} | {acc} | {r['file_bytes'][k] / 1e3:.1f} kB | "
                       f"{r['tensor_bytes'][k] / 1e3:.1f} kB | {r['clip_ms'][k]:.2f} | "
                       f"{s['ms_per_10ms']:.3f} ({s['p99_ms']:.3f}) | "
                       f"{r['stream_file_bytes'][k] / 1e3:.1f} kB | {agree} |")
    out += ["", "ONNX clip file: as written (the float file is `kwskit export`'s, whose node "
            "annotations -- module paths, stack traces -- the quantized files leave out; every clip "
            "file holds the front-end's 376 kB (BC-ResNet-1) / 251 kB (DS-CNN-S) int64 framing "
            "index). Stored tensors: weights, biases, scales, zero points and front-end constants "
            "(the mel filterbank stays float32 in int8), int64 index tensors left out. Stream "
            "agreement: over 60 s of validation clips played one after another, per output frame "
            "(10 ms BC-ResNet-1, 40 ms DS-CNN-S). p99 of one call: dominated by other processes "
            "on the shared machine."]
    out += ["", "Weights rounded after training, per output channel, symmetric (PyTorch model, "
            "activations float; 1 bit = sign x mean|w|):", "",
            "| model | float | 8 bits | 4 bits | 2 bits | 1 bit | backbone bytes fp32 -> 8 / 4 / 2 / 1 bits |",
            "|---|---|---|---|---|---|---|"]
    for r in rows:
        w = r["weights"]
        sizes = " / ".join(f"{w[t]['backbone_bytes'] / 1e3:.1f}" for t in ("w8", "w4", "w2", "w1"))
        out.append(f"| {r['model']} | {_pct(r['accuracy']['float (PyTorch)'])} | "
                   + " | ".join(_pct(w[t]["val_acc"]) for t in ("w8", "w4", "w2", "w1"))
                   + f" | {w['w8']['backbone_bytes_fp32'] / 1e3:.1f} kB -> {sizes} kB |")
    out += ["", "What ONNX Runtime runs for the int8 models (graph after its optimisation, "
            "ORT_ENABLE_EXTENDED):", "",
            "| model | model | integer kernels | QLinearConv | QuantizeLinear / DequantizeLinear "
            "left | other ops |", "|---|---|---|---|---|---|"]
    for r in rows:
        for kind, ops in r["ops"].items():
            q = integer_ops(ops)
            other = {k: v for k, v in ops.items() if k not in ("QuantizeLinear", "DequantizeLinear")
                     and not k.startswith("Q")}
            out.append(f"| {r['model']} | {kind} | {q} | {ops.get('QLinearConv', 0)} | "
                       f"{ops.get('QuantizeLinear', 0)} / {ops.get('DequantizeLinear', 0)} | "
                       + ", ".join(f"{k} {v}" for k, v in other.items()) + " |")
    if any("torchao" in r for r in rows):
        out += ["", "The alternative: torchao pt2e (X86InductorQuantizer, static int8), "
                "compiled with torch.compile (inductor):", "",
                "| model | val acc int8 (pt2e) | inductor int8 ms / clip (compile s) | "
                "inductor float ms / clip (compile s) | ORT int8 / float ms / clip |",
                "|---|---|---|---|---|"]
        for r in rows:
            t = r.get("torchao")
            if t:
                li, lf = t["latency"]["int8"], t["latency"]["float"]
                out.append(f"| {r['model']} | {_pct(t['val_acc'])} | {li['ms']:.2f} "
                           f"({li['compile_s']:.0f}) | {lf['ms']:.2f} ({lf['compile_s']:.0f}) | "
                           f"{r['clip_ms']['int8']:.2f} / {r['clip_ms']['float']:.2f} |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "gsc-dev"),
                    help="data set folder")
    ap.add_argument("--out-root", default=str(ROOT / "runs"), help="where the q-* runs go")
    ap.add_argument("--repeats", type=int, default=200, help="timed calls per clip model and round")
    ap.add_argument("--seconds", type=float, default=20.0, help="audio streamed for the cost")
    ap.add_argument("--fresh", action="store_true", help="quantize again even if runs exist")
    ap.add_argument("--torchao", action="store_true", help="also measure torchao pt2e + inductor")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "quantize.md"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    rows = [measure(label, ROOT / run, a.data, Path(a.out_root), a) for label, run in MODELS.items()]
    table = render(rows)
    print(table)
    head = (f"Measured {time.strftime('%Y-%m-%d')} on {platform.processor() or platform.machine()} "
            f"(the project's shared 2-core machine, other jobs running), one thread, torch "
            f"{torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}: "
            f"`python benchmarks/quantize_table.py{' --torchao' if a.torchao else ''}`. Accuracy "
            f"on the {rows[0]['val_clips']} gsc-dev validation clips (mini10). int8: 500 "
            "calibration clips of the training split, the streaming model calibrated on 30 s of "
            "them.\n\n")
    Path(a.out).write_text(head + table + "\n")
    print(f"written: {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
