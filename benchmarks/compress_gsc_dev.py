"""Streaming KWS with 10x compression (seed 004's deliverable), measured on gsc-dev mini10.

    KWSKIT_THREADS=1 OMP_NUM_THREADS=1 python benchmarks/compress_gsc_dev.py
    python benchmarks/compress_gsc_dev.py --only crnn   # one row group
    python benchmarks/compress_gsc_dev.py --no-train    # measure the runs that exist
    python benchmarks/compress_gsc_dev.py --render      # redraw table + plots from the JSON

The base is the CRNN recipe (configs/crnn.yaml, mini10, runs/crnn-teacher; Shan et al. 2018,
arXiv:1803.10916). Every setting is made by kwskit's own commands (``python -m kwskit train /
distill / quantize / prune / export``, run as subprocesses with one thread) into
``RUNS/x10-*``; a setting whose run exists is not made again, so reruns only re-measure.
A second row group does the same to DS-CNN-S (runs/n11-dscnn-same) to show the tools are not
CRNN-specific.

The goal, checked per row: against its group's base,
- weights at least 10x smaller in bytes,
- streaming at least 10x faster: CPU ms per second of streamed audio, ONNX Runtime, one
  thread, the same chunk (``--chunk-ms``, a multiple of every model's 80-ms output step),
- validation accuracy >= 0.9 x the base's and the FAR/FRR area <= the base's / 0.9.

How each number is measured:
- accuracy, FAR/FRR area: ``kwskit eval RUN --split validation`` (the quantized ONNX clip
  model for an int8 / fp16 run, the fake-quantized PyTorch model for a QAT run); the area is
  the mean over the 8 keywords of ``far_frr[keyword]["area"]`` in its metrics.json (FRR
  integrated over FAR in [0, 1], lower is better).
- weight bytes: what the streaming ONNX model stores for the backbone, at its precision: every
  initializer except the front-end's constants (mel filterbank, window: fixed, not learned;
  shown in their own column) and int64 index tensors -- so int8 weights count 1 byte each plus
  their scales and zero points, fp16 2, float 4, and whatever ONNX Runtime's quantizer leaves
  float (the GRU: it has no quantized GRU kernel) 4. A QAT run's exported ONNX stores its
  weights as float32 (each followed by QuantizeLinear / DequantizeLinear), so QAT rows count
  what an n-bit deployment stores, from the model: each quantized conv / linear weight at n
  bits packed plus a float32 scale per output channel, its (BatchNorm-folded) bias, the
  activation ranges (2 floats each) and every other tensor at 4 bytes. compress.json keeps
  every row's ONNX byte counts per element type too.
- MACs: ``kwskit.eval.profile.profile_model`` on a 1-s clip (FlopCounterMode): the model alone,
  and the front-end separately.
- speed: process CPU time of ``kwskit.runtime.OnnxStreamer.step`` over ``--seconds`` of real
  validation audio, chunk by chunk; for each setting the base and the setting are timed in
  turn ``--repeats`` times (base, setting, base, setting, ...), so machine load hits both
  alike. ms per s = the median over repeats; the speed ratio = the median of the per-pair
  ratios.
- training wall time: the wall clock of the command(s) that made the run (recorded in
  RUN/x10.json when it is made), and the sum along the chain from the base.

Writes benchmarks/results/compress.md, compress.json, compress_macs.png and compress_bytes.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"
RECORD = "x10.json"  # what this script knows about a run it made (commands, wall time, eval)
STREAM_FILE = "export/x10-stream.onnx"  # float / QAT streaming model at --chunk-ms

# The student recipe: the CRNN base recipe with a cheaper front-end and a smaller network.
# - n_fft 256 (a power of two: ONNX Runtime's DFT is ~10x slower per frame at the recipe's 400)
#   over 16-ms windows every 20 ms, 20 mel bands; the conv's time stride 4 and kernel 10
#   keep the base's 80-ms output step and 200-ms conv span;
# - 8 conv channels, one GRU layer of 20 units (6.2 K parameters against 71 K);
# - SpecAugment scaled to the new grid (the recipe masks up to 15 of 40 bands and 35 frames of
#   10 ms: 8 of 20 bands and 17 frames of 20 ms here);
# - lr 1e-3 (the small model trains slowly at the recipe's 3e-4), 80 epochs, batch 100 (at 40
#   epochs it was still improving: 86.9% val, FAR/FRR area 0.016 against the base's 0.012);
# - log offset 1e-6 (kwskit's default) instead of the recipe's 1e-9: torch.onnx's optimiser
#   (dynamo=True, optimize=True) drops an "x + 1e-9" as adding zero, so the exported model
#   takes log(0) = -inf on digital silence, and int8 calibration then gets an infinite range
#   for the features (the int8 model scored 10%). 1e-7 and above survive the export.
STUDENT = ["data.labels=mini10", "frontend.log_offset=0.000001", "frontend.n_fft=256",
           "frontend.win_length=256", "frontend.hop_length=320", "frontend.n_mels=20",
           "model.args.stride=[2,4]", "model.args.kernel=[5,10]", "model.args.channels=8",
           "model.args.hidden=20",
           "model.args.num_layers=1", "augment.spec_freq_width=8", "augment.spec_time_width=17",
           "optim.lr=0.001", "train.batch_size=100", "train.epochs=80"]


# Not made: ONNX Runtime 1.32 crashes (SIGSEGV) creating a session for the CRNN's fp16 models
# at ORT_ENABLE_ALL, the level kwskit.runtime uses: MatmulTransposeFusion turns the attention
# pool's Transpose -> fp16 MatMul into a FusedMatMul and NchwcTransformer then segfaults
# (either optimiser disabled, or ORT_ENABLE_EXTENDED, loads it).
FP16_BLOCKED = ("onnxruntime 1.32 segfaults loading the CRNN fp16 model at ORT_ENABLE_ALL "
                "(MatmulTransposeFusion + NchwcTransformer on the attention pool's fp16 MatMul)")


def _sets(values: list[str]) -> list[str]:
    return [a for v in values for a in ("--set", v)]


def settings(data: str, chunk_ms: float) -> list[dict]:
    """Every row: name, group, run (under RUNS), what it is, its source row, the kwskit
    command that makes it (``{runs}`` = the runs folder), or ``copy`` for a base."""
    q = ["--data", data, "--chunk-ms", f"{chunk_ms:g}"]
    student = ["--config", "configs/crnn.yaml", *_sets(STUDENT), "--data", data, "--no-mlflow"]
    kd = ["distill", "--teacher", "{runs}/x10-crnn-base", *student]
    qat = lambda src, bits, epochs=5: ["quantize", f"{{runs}}/{src}", "--qat",  # noqa: E731
                                       "--weight-bits", str(bits), "--act-bits", "8",
                                       "--epochs", str(epochs), "--data", data, "--no-mlflow"]
    crnn = [
        dict(name="base", run="x10-crnn-base", copy="runs/crnn-teacher",
             what="CRNN recipe (base): n_fft 400, 40 mels, conv 8, GRU 2 x 64"),
        dict(name="small", run="x10-crnn-small", source="base",
             what="student recipe, cross-entropy (no distillation)",
             cmd=["train", "--config", "configs/crnn.yaml", *_sets(STUDENT), "--data", data,
                  "--no-mlflow"]),
        dict(name="kd", run="x10-crnn-kd", source="base",
             what="student, logit KD from the base (T 4, alpha 0.5)", cmd=kd),
        dict(name="small-int8", run="x10-crnn-small-int8", source="small",
             what="student (cross-entropy), int8 ONNX",
             cmd=["quantize", "{runs}/x10-crnn-small", "--mode", "int8", *q]),
        dict(name="kd-fp16", run="x10-crnn-kd-fp16", source="kd",
             what="KD student, fp16 ONNX",
             cmd=["quantize", "{runs}/x10-crnn-kd", "--mode", "fp16", *q],
             blocked=FP16_BLOCKED),
        dict(name="kd-int8", run="x10-crnn-kd-int8", source="kd",
             what="KD student, int8 ONNX (static, 500 clips)",
             cmd=["quantize", "{runs}/x10-crnn-kd", "--mode", "int8", *q]),
        dict(name="attkd", run="x10-crnn-attkd", source="base",
             what="student, logit KD + 0.1 attention KD", cmd=[*kd, "--attention-weight", "0.1"]),
        dict(name="attkd-int8", run="x10-crnn-attkd-int8", source="attkd",
             what="attention KD + KD student, int8 ONNX",
             cmd=["quantize", "{runs}/x10-crnn-attkd", "--mode", "int8", *q]),
        dict(name="kd-qat4", run="x10-crnn-kd-qat4", source="kd",
             what="KD student, QAT 4-bit weights / 8-bit activations (5 epochs)",
             cmd=qat("x10-crnn-kd", 4)),
        dict(name="kd-qat2", run="x10-crnn-kd-qat2", source="kd",
             what="KD student, QAT 2-bit (ternary) weights / 8-bit activations (5 epochs)",
             cmd=qat("x10-crnn-kd", 2)),
        dict(name="kd-p40", run="x10-crnn-kd-p40", source="kd",
             what="KD student, conv channels pruned 8 -> 4 (40% of MACs, l1), 5 fine-tune epochs",
             cmd=["prune", "{runs}/x10-crnn-kd", "--sparsity", "0.4", "--finetune-epochs", "5",
                  "--data", data]),
        dict(name="kd-p40-int8", run="x10-crnn-kd-p40-int8", source="kd-p40",
             what="pruned KD student, int8 ONNX",
             cmd=["quantize", "{runs}/x10-crnn-kd-p40", "--mode", "int8", *q]),
        dict(name="kd-p40-qat4", run="x10-crnn-kd-p40-qat4", source="kd-p40",
             what="pruned KD student, QAT 4-bit weights (5 epochs)", cmd=qat("x10-crnn-kd-p40", 4)),
    ]
    dscnn = [
        dict(name="base", run="x10-dscnn-base", copy="runs/n11-dscnn-same",
             what="DS-CNN-S (base): MFCC n_fft 1024, 5 conv layers of 64"),
        dict(name="int8", run="x10-dscnn-int8", source="base", what="int8 ONNX",
             cmd=["quantize", "{runs}/x10-dscnn-base", "--mode", "int8", *q]),
        dict(name="p75", run="x10-dscnn-p75", source="base",
             what="channels pruned (75% of MACs, l1), 10 fine-tune epochs",
             cmd=["prune", "{runs}/x10-dscnn-base", "--sparsity", "0.75", "--finetune-epochs", "10",
                  "--data", data]),
        dict(name="p75-int8", run="x10-dscnn-p75-int8", source="p75",
             what="pruned DS-CNN-S, int8 ONNX",
             cmd=["quantize", "{runs}/x10-dscnn-p75", "--mode", "int8", *q]),
        dict(name="p75-qat4", run="x10-dscnn-p75-qat4", source="p75",
             what="pruned DS-CNN-S, QAT 4-bit weights / 8-bit activations (3 epochs)",
             cmd=qat("x10-dscnn-p75", 4, epochs=3)),
    ]
    for row in crnn:
        row["group"] = "CRNN"
    for row in dscnn:
        row["group"] = "DS-CNN-S"
    return crnn + dscnn


# ------------------------------------------------------------------------------ making runs
def _env() -> dict:
    return {**os.environ, "KWSKIT_THREADS": "1", "OMP_NUM_THREADS": "1",
            "PYTHONWARNINGS": "ignore"}


def _kwskit(args: list[str], log: Path) -> float:
    """Run ``python -m kwskit ARGS`` (one thread), its output to ``log``; wall seconds."""
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"$ kwskit {' '.join(args)}\n")
        f.flush()
        proc = subprocess.run([sys.executable, "-m", "kwskit", *args], cwd=ROOT, env=_env(),
                              stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise RuntimeError(f"kwskit {args[0]} failed (exit {proc.returncode}); see {log}")
    return time.perf_counter() - t0


def _read_record(run: Path) -> dict:
    path = run / RECORD
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_record(run: Path, record: dict) -> None:
    from kwskit.fsutil import write_json

    write_json(run / RECORD, record)


def _made(run: Path) -> bool:
    return (run / "checkpoints" / "best.pt").is_file()


def make(row: dict, runs: Path, log: Path) -> None:
    """Make the row's run unless it exists (a base is copied: its eval reports must not go
    into a run this script does not own)."""
    run = runs / row["run"]
    if _made(run):
        return
    if run.exists() and any(run.iterdir()):
        raise RuntimeError(f"{run}: exists but has no checkpoints/best.pt (a broken earlier "
                           "attempt?); remove it and rerun")
    if "copy" in row:
        src = ROOT / row["copy"]
        run.mkdir(parents=True, exist_ok=True)
        for name in ("config.yaml", "labels.json", "metrics.json"):
            shutil.copy2(src / name, run / name)
        (run / "checkpoints").mkdir(exist_ok=True)
        shutil.copy2(src / "checkpoints" / "best.pt", run / "checkpoints" / "best.pt")
        _write_record(run, {"copied_from": str(src), "wall_s": 0.0})
        return
    args = [a.replace("{runs}", str(runs)) for a in row["cmd"]] + ["--out", str(run)]
    print(f"[{row['group']} {row['name']}] kwskit {' '.join(args)}", flush=True)
    wall = _kwskit(args, log)
    _write_record(run, {"command": ["kwskit", *args], "wall_s": round(wall, 1)})


# ------------------------------------------------------------------------------ measuring
def evaluate(run: Path, data: str, log: Path, split: str = "validation") -> dict:
    """Accuracy, macro F1 and mean FAR/FRR area from ``kwskit eval`` on ``split`` (cached in
    the run's record)."""
    record = _read_record(run)
    key = "eval" if split == "validation" else f"eval_{split}"
    if key in record:
        return record[key]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "kwskit", "eval", str(run), "--data", data,
                           "--split", split], cwd=ROOT, env=_env(), capture_output=True,
                          text=True)
    with open(log, "a") as f:
        f.write(f"$ kwskit eval {run}\n{proc.stdout}{proc.stderr}\n")
    if proc.returncode:
        raise RuntimeError(f"kwskit eval {run} failed; see {log}")
    report = next(line.split("report: ", 1)[1] for line in proc.stdout.splitlines()
                  if line.startswith("report: "))
    m = json.loads((ROOT / report / "metrics.json").read_text())  # ROOT / absolute = absolute
    areas = [v["area"] for v in m["far_frr"].values() if v.get("area") is not None]
    out = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "n": m["n"],
           "far_frr_area": sum(areas) / len(areas), "keywords": len(areas),
           "model": m.get("model"), "report": str(report),
           "eval_s": round(time.perf_counter() - t0, 1)}
    record[key] = out
    _write_record(run, record)
    return out


def stream_model(run: Path, chunk_ms: float, log: Path) -> Path:
    """The streaming ONNX model a row is timed with: a quantized run's own (written by
    ``kwskit quantize --chunk-ms``), else ``kwskit export --stream`` of the run."""
    from kwskit.eval.evaluate import quantized_export

    quantized = quantized_export(run, "stream")
    if quantized is not None:
        return quantized
    path = run / STREAM_FILE
    if not path.is_file():
        _kwskit(["export", str(run), "--stream", "--chunk-ms", f"{chunk_ms:g}", "--out", str(path)],
                log)
    return path


def is_frontend(name: str) -> bool:
    from kwskit.compress.onnx_quant import FRONTEND_PREFIX

    return name.startswith(FRONTEND_PREFIX)


def onnx_bytes(path: Path) -> dict:
    """Bytes of the streaming model's stored tensors: the backbone's (every initializer and
    Constant tensor but the front-end's and int64 index tensors), the front-end's constants,
    and the bytes per element type."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    tensors = [(t.name, t) for t in model.graph.initializer]
    tensors += [(n.output[0], a.t) for n in model.graph.node if n.op_type == "Constant"
                for a in n.attribute if a.name == "value"]
    out = {"weights": 0, "frontend": 0, "by_type": {}}
    for name, t in tensors:
        if t.data_type == onnx.TensorProto.INT64:
            continue
        nbytes = int(numpy_helper.to_array(t).nbytes)
        if is_frontend(name):
            out["frontend"] += nbytes
            continue
        out["weights"] += nbytes
        kind = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name
        out["by_type"][kind] = out["by_type"].get(kind, 0) + nbytes
    out["file"] = path.stat().st_size
    return out


def qat_bytes(pipeline) -> int:
    """Bytes of a QAT backbone at its precision (module doc): n-bit weights packed, a float32
    scale per output channel, folded biases, activation ranges, every other tensor float32."""
    from kwskit.layers.quant import ActQuant, QuantConv

    backbone, counted, total = pipeline.backbone, set(), 0
    for m in backbone.modules():
        if isinstance(m, QuantConv):
            w, b = m.folded()
            total += math.ceil(w.numel() * m.weight_bits / 8) + 4 * w.shape[0]
            total += 4 * (b.numel() if b is not None else 0)
            counted |= {id(t) for t in [*m.layer.parameters(), *m.layer.buffers()]}
            if m.bn is not None:
                counted |= {id(t) for t in [*m.bn.parameters(), *m.bn.buffers()]}
        elif isinstance(m, ActQuant):
            total += 8  # lo, hi (scale and zero point)
            counted |= {id(t) for t in m.buffers()}
    for t in [*backbone.parameters(), *backbone.buffers()]:
        if id(t) not in counted and t.is_floating_point():
            total += 4 * t.numel()
            counted.add(id(t))
    return int(total)


def model_cost(run: Path) -> dict:
    """Parameters, MACs (model; front-end) on a 1-s clip, and for a QAT run its n-bit bytes."""
    from kwskit.eval.profile import profile_model
    from kwskit.models.io import load_model

    pipeline, _, _ = load_model(run)
    prof = profile_model(pipeline.backbone, frontend=pipeline.frontend, latency=False)
    qat = getattr(pipeline, "qat_spec", None)
    return {"params": prof["params"], "macs": prof["macs"], "frontend_macs": prof["frontend_macs"],
            "qat": qat, "qat_bytes": qat_bytes(pipeline) if qat else None,
            "fp32_bytes": prof["size_bytes_fp32"]}


def stream_audio(base_run: Path, data: str, seconds: float):
    """``seconds`` of real validation clips, back to back, as float32 (the timing input)."""
    import numpy as np

    from kwskit.data.loader import INT16_SCALE
    from kwskit.eval.evaluate import split_clips
    from kwskit.models.io import load_model

    _, cfg, labels = load_model(base_run)
    waves, _, _ = split_clips(cfg, labels, data, "validation")
    n = int(math.ceil(seconds))
    rng = np.random.default_rng(0)
    audio = np.concatenate(waves[rng.permutation(len(waves))[:n]]).astype(np.float32) / INT16_SCALE
    # -80 dBFS dither: no frame is exact digital silence, which the exported base model (log
    # offset 1e-9, dropped by the exporter) would turn into -inf / NaN
    return audio + rng.normal(0.0, 1e-4, audio.shape).astype(np.float32)


def cpu_ms_per_s(streamer, audio) -> float:
    """Process CPU ms per second of audio to stream ``audio`` through ``streamer`` once."""
    streamer.reset()
    t0 = time.process_time()
    streamer.step(audio)
    return (time.process_time() - t0) * 1e3 / (len(audio) / streamer.sample_rate)


def time_group(paths: dict, base: str, audio, repeats: int) -> dict:
    """Interleaved timing (module doc): {row: {ms_per_s, ratio, runs}}."""
    from kwskit.runtime import OnnxStreamer

    streamers = {k: OnnxStreamer(p, threads=1) for k, p in paths.items()}
    chunks = {k: s.feed for k, s in streamers.items()}
    if len(set(chunks.values())) != 1:
        raise RuntimeError(f"chunk sizes differ: {chunks}")
    for s in streamers.values():  # warm-up: first calls allocate
        cpu_ms_per_s(s, audio[: 4 * s.feed])
    base_ms, out = [], {}
    for k in paths:
        if k == base:
            continue
        pair = []
        for _ in range(repeats):
            b = cpu_ms_per_s(streamers[base], audio)
            s = cpu_ms_per_s(streamers[k], audio)
            base_ms.append(b)
            pair.append((b, s))
        out[k] = {"ms_per_s": statistics.median(s for _, s in pair),
                  "ratio": statistics.median(b / s for b, s in pair),
                  "repeats": [[round(b, 4), round(s, 4)] for b, s in pair]}
    out[base] = {"ms_per_s": statistics.median(base_ms), "ratio": 1.0, "repeats": len(base_ms)}
    return out


# ------------------------------------------------------------------------------ output
def _kb(n) -> str:
    return f"{n / 1e3:.1f} kB"


def _macs(n) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.0f} k"


def _wall(s) -> str:
    return "-" if s is None else f"{s:.0f} s"


def render(rows: list[dict], meta: dict) -> str:
    lines = [
        "# Streaming KWS with 10x compression (gsc-dev mini10, validation split)",
        "",
        f"Measured {meta['date']} with `KWSKIT_THREADS=1 OMP_NUM_THREADS=1 python "
        f"benchmarks/compress_gsc_dev.py` on {meta['machine']} (onnxruntime {meta['ort']}, torch "
        f"{meta['torch']}); a shared 2-core CPU, so the times are indicative and the ratios (base "
        "and setting timed in turn) are what counts.",
        "",
        f"- **speed**: process CPU ms per 1 s of streamed audio, ONNX Runtime streaming model, one "
        f"thread, {meta['chunk_ms']:g}-ms chunks for every model, {meta['seconds']:g} s of "
        f"validation clips (plus -80 dBFS dither); median of {meta['repeats']} interleaved "
        "base/setting pairs (ratio = median of the pair ratios).",
        "- **bytes**: the backbone's tensors as the streaming ONNX model stores them (int8 = 1 "
        "byte + scales / zero points, fp16 = 2, float 4; what ONNX Runtime cannot quantize, "
        "e.g. the GRU, stays float); QAT rows: n-bit weights packed + a float32 scale per output "
        "channel + the rest float32 (what an n-bit deployment stores; their ONNX files keep the "
        "weights in float32 before a QuantizeLinear). The "
        "front-end's constants (mel filterbank, window) are not weights: own column.",
        "- **MACs**: the model on one 1-s clip (FlopCounterMode), front-end in its own column.",
        "- **FAR/FRR area**: mean over the 8 keywords of `kwskit eval`'s per-keyword area (FRR "
        "over FAR in [0, 1]; lower is better).",
        "- **meets 10x**: bytes ratio >= 10, speed ratio >= 10, val acc >= 0.9 x base, area <= "
        "base area / 0.9 (all four, checked by the script). Every run's best checkpoint was "
        "picked on this validation split (the base's too; gsc-dev has no test split), so all "
        "rows share that optimism.",
        "- **train wall**: wall clock of the command that made the run (one thread), and in "
        "brackets the whole chain after the base; the base's is its own training epochs' "
        "seconds (metrics.json).",
        "",
    ]
    for group in dict.fromkeys(r["group"] for r in rows):
        g = [r for r in rows if r["group"] == group]
        lines += [f"## {group}", "",
                  "| setting | what | params | weight bytes | front-end bytes | MACs (front-end) "
                  "| ms per 1 s audio | val acc | FAR/FRR area | size ratio | speed ratio | "
                  "meets 10x? | train wall | run |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in g:
            ok = r.get("meets")
            mark = "base" if r["name"] == "base" else ("**yes**" if ok else f"no ({ok_why(r)})")
            lines.append(
                f"| {r['name']} | {r['what']} | {r['params']:,} | {_kb(r['bytes'])} | "
                f"{_kb(r['frontend_bytes'])} | {_macs(r['macs'])} ({_macs(r['frontend_macs'])}) | "
                f"{r['ms_per_s']:.3f} | {100 * r['accuracy']:.2f}% | {r['far_frr_area']:.4f} | "
                f"{r['size_ratio']:.1f}x | {r['speed_ratio']:.1f}x | {mark} | "
                f"{_wall(r['wall_s'])} ({_wall(r['chain_wall_s'])}) | runs/{r['run']} |")
        lines.append("")
    for name, why in meta.get("not_made", {}).items():
        lines.append(f"Not measured: {name} ({why}).")
    return "\n".join(lines)


def ok_why(r: dict) -> str:
    return ", ".join(k for k, v in r["checks"].items() if not v) or "-"


def plot(rows: list[dict], key: str, xlabel: str, region: str, path: Path) -> None:
    """Accuracy against ``key`` per group, base and settings labelled, the 10x region (x <=
    base / 10, accuracy >= 0.9 x base; legend ``region``) shaded."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter, NullFormatter

    from kwskit.eval.plots import place_labels
    from kwskit.fsutil import atomic_path

    groups = list(dict.fromkeys(r["group"] for r in rows))
    fig = Figure(figsize=(6.2 * len(groups), 5.0))
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, len(groups), i + 1) for i in range(len(groups))]
    for ax, group in zip(axes, groups):
        g = [r for r in rows if r["group"] == group]
        base = next(r for r in g if r["name"] == "base")
        xs, ys = [r[key] for r in g], [100 * r["accuracy"] for r in g]
        lo_x, hi_x = min(xs + [base[key] / 10]) / 2, max(xs) * 2
        lo_y = min(ys + [90 * base["accuracy"]]) - 3
        hi_y = min(100.0, max(ys) + 2)
        ax.fill_between([lo_x, base[key] / 10], 90 * base["accuracy"], hi_y, color="tab:green",
                        alpha=0.12, label=f"{region}, >= 0.9 x base accuracy")
        ax.axvline(base[key] / 10, color="tab:green", linestyle=":", linewidth=1)
        ax.axhline(90 * base["accuracy"], color="tab:green", linestyle=":", linewidth=1)
        for r in g:
            style = dict(marker="*", s=150, color="black") if r["name"] == "base" else \
                dict(marker="o", s=40, color="tab:green" if r["meets"] else "tab:red")
            ax.scatter(r[key], 100 * r["accuracy"], zorder=3, **style)
        ax.set_xscale("log")
        ax.set_xlim(lo_x, hi_x)
        ax.set_ylim(lo_y, hi_y)
        ax.xaxis.set_major_formatter(EngFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation accuracy (%)")
        ax.set_title(f"{group}: green = meets all four 10x checks (bytes, speed, accuracy, "
                     "FAR/FRR), red = not", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(f"Accuracy against {xlabel.split(' (')[0]} (gsc-dev mini10)")
    fig.tight_layout()
    for ax, group in zip(axes, groups):
        g = [r for r in rows if r["group"] == group]
        place_labels(ax, [r[key] for r in g], [100 * r["accuracy"] for r in g],
                     [r["name"] for r in g])
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130, bbox_inches="tight")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "gsc-dev"))
    ap.add_argument("--runs", default=str(ROOT / "runs"), help="where the x10-* runs go")
    ap.add_argument("--only", choices=("crnn", "dscnn"), help="one row group")
    ap.add_argument("--chunk-ms", type=float, default=960.0,
                    help="audio per streaming call, every model (a multiple of 80 ms)")
    ap.add_argument("--seconds", type=float, default=30.0, help="audio streamed per timing")
    ap.add_argument("--repeats", type=int, default=7, help="base/setting timing pairs")
    ap.add_argument("--no-train", action="store_true", help="measure only the runs that exist")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--render", action="store_true",
                    help="only redraw the table and plots from the compress.json there")
    a = ap.parse_args()
    if a.render:
        return render_saved(Path(a.out), f"-{a.only}" if a.only else "")

    import platform

    import onnxruntime
    import torch

    from kwskit.fsutil import write_json

    torch.set_num_threads(1)
    runs, out = Path(a.runs), Path(a.out)
    log = runs / "x10-compress.log"  # the commands' output
    out.mkdir(parents=True, exist_ok=True)
    rows = settings(a.data, a.chunk_ms)
    if not a.no_train:  # every base first, whatever --only says: bases are teachers too
        for row in rows:
            if "copy" in row:
                make(row, runs, log)
    if a.only:
        rows = [r for r in rows if r["group"] == {"crnn": "CRNN", "dscnn": "DS-CNN-S"}[a.only]]
    blocked = [r for r in rows if r.get("blocked")]
    rows = [r for r in rows if not r.get("blocked")]
    if not a.no_train:
        for row in rows:
            make(row, runs, log)
    rows = [r for r in rows if _made(runs / r["run"])]

    for row in rows:
        run = runs / row["run"]
        print(f"[{row['group']} {row['name']}] eval, cost, streaming model", flush=True)
        row.update(evaluate(run, a.data, log))
        row.update(model_cost(run))
        row["stream_onnx"] = str(stream_model(run, a.chunk_ms, log))
        ob = onnx_bytes(Path(row["stream_onnx"]))
        row["onnx_bytes"] = ob
        row["bytes"] = row["qat_bytes"] if row["qat"] else ob["weights"]
        row["frontend_bytes"] = ob["frontend"]
        row["wall_s"] = _read_record(run).get("wall_s")
        if "copy" in row:  # trained elsewhere: its own epochs' seconds (metrics.json)
            history = json.loads((run / "metrics.json").read_text()).get("history", [])
            row["wall_s"] = round(sum(h.get("seconds", 0.0) for h in history), 1)

    by_name = {(r["group"], r["name"]): r for r in rows}
    for r in rows:  # the chain's wall time: this run's plus its sources' (the base excluded)
        total, cur = 0.0, r
        while cur is not None and (cur is r or cur["name"] != "base"):
            total += cur.get("wall_s") or 0.0
            cur = by_name.get((cur["group"], cur.get("source")))
        r["chain_wall_s"] = total

    for group in dict.fromkeys(r["group"] for r in rows):
        g = [r for r in rows if r["group"] == group]
        base = next(r for r in g if r["name"] == "base")
        audio = stream_audio(runs / base["run"], a.data, a.seconds)
        print(f"[{group}] timing {len(g)} streaming models, {a.repeats} pairs each", flush=True)
        times = time_group({r["name"]: r["stream_onnx"] for r in g}, "base", audio, a.repeats)
        for r in g:
            t = times[r["name"]]
            r.update(ms_per_s=t["ms_per_s"], speed_ratio=t["ratio"], timing=t["repeats"])
            r["size_ratio"] = base["bytes"] / r["bytes"]
            r["mac_ratio"] = base["macs"] / r["macs"]
            r["checks"] = {"size": r["size_ratio"] >= 10, "speed": r["speed_ratio"] >= 10,
                           "accuracy": r["accuracy"] >= 0.9 * base["accuracy"],
                           "far_frr": r["far_frr_area"] <= base["far_frr_area"] / 0.9}
            r["meets"] = r["name"] != "base" and all(r["checks"].values())

    meta = {"date": time.strftime("%Y-%m-%d"), "machine": platform.machine(),
            "ort": onnxruntime.__version__, "torch": torch.__version__,
            "chunk_ms": a.chunk_ms, "seconds": a.seconds, "repeats": a.repeats,
            "data": a.data, "student": STUDENT,
            "not_made": {f"{r['group']} {r['name']}": r["blocked"] for r in blocked}}
    suffix = f"-{a.only}" if a.only else ""
    write_json(out / f"compress{suffix}.json", {"meta": meta, "rows": rows})
    return render_saved(out, suffix)


def render_saved(out: Path, suffix: str) -> int:
    """Write the markdown table and both plots from ``compress{suffix}.json`` in ``out``."""
    saved = json.loads((out / f"compress{suffix}.json").read_text())
    meta, rows = saved["meta"], saved["rows"]
    (out / f"compress{suffix}.md").write_text(render(rows, meta) + "\n")
    plot(rows, "macs", "MACs per 1-s clip (model, front-end excluded)", "10x fewer MACs",
         out / f"compress{suffix}_macs.png")
    plot(rows, "bytes", "weight bytes (at stored precision)", "10x fewer bytes",
         out / f"compress{suffix}_bytes.png")
    print(render(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
