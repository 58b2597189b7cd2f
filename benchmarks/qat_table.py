"""What quantization-aware training buys: validation accuracy at n bits on gsc-dev, with and
without training.

    python benchmarks/qat_table.py [--data ../shared/data/gsc-dev] [--collect]

For each trained float run and each bit width of ``PLAN`` this runs (or, when its run
directory already holds a finished ``qat.json`` with the same settings, reuses)
``kwskit.compress.qat.qat_run`` -- the same as ``kwskit quantize RUN --qat --weight-bits W
--act-bits A --epochs E --out runs/qat-MODEL-wWaA`` -- with default settings (first and last
layer at 8 bits, the default lr), one thread, no MLflow. ``qat.json`` holds three validation
accuracies, all measured with the training loop's own validation pass:

- float: the source run as it is;
- rounded: the same quantizer (BatchNorm folded, weights rounded per channel, activation ranges
  calibrated on 500 training clips) without training -- post-training quantization;
- QAT: the best epoch of the fine-tuning (as the float runs' best checkpoints are chosen).

8/8-bit runs are also exported (clip model) to ONNX and scored on the same validation clips by
ONNX Runtime, counting the convolutions it runs as integer kernels (QLinearConv).
Writes benchmarks/results/qat.md (``--collect``: only gather runs that exist).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from kwskit.compress.qat import qat_run  # noqa: E402
from kwskit.layers.quant import QuantConv  # noqa: E402
from kwskit.models.io import load_model  # noqa: E402

# (label, float run, fine-tuning epochs, [(weight bits, activation bits), ...])
PLAN = [
    ("DS-CNN-S", "runs/n11-dscnn-same", 2, [(8, 8), (4, 8), (2, 8), (1, 8), (4, 4)]),
    ("BC-ResNet-1", "runs/n11-silence", 1, [(8, 8), (4, 8), (2, 8)]),
]
RESULTS = ROOT / "benchmarks" / "results" / "qat.md"


def out_dir(source: str, wb: int, ab: int) -> Path:
    model = load_model(ROOT / source)[1].model.name
    return ROOT / "runs" / f"qat-{model}-w{wb}a{ab}"


def finished(out: Path, wb: int, ab: int, epochs: int) -> dict | None:
    path = out / "qat.json"
    if not path.exists():
        return None
    r = json.loads(path.read_text())
    same = (r["spec"]["weight_bits"], r["spec"]["act_bits"], r["epochs"]) == (wb, ab, epochs)
    return r if same and r.get("qat_val_acc") is not None else None


def weight_kb(run: Path) -> tuple[float, float]:
    """(float32 KB, quantized KB) of the conv / linear weights (BatchNorm folded, no biases)."""
    model = load_model(run)[0]
    layers = [m for m in model.modules() if isinstance(m, QuantConv)]
    n = sum(m.layer.weight.numel() for m in layers)
    bits = sum(m.layer.weight.numel() * m.weight_bits for m in layers)
    return 4 * n / 1024, bits / 8 / 1024


def onnx_check(run: Path, data: str) -> dict:
    """Clip export of ``run`` -> its validation accuracy in ONNX Runtime and the integer
    kernels ONNX Runtime runs."""
    import onnx
    import onnxruntime as ort

    from kwskit.export.onnx import export_clip
    from kwskit.runtime import OnnxClassifier
    from kwskit.train.data import TrainData

    model, cfg, labels = load_model(run)
    path = run / "export" / f"{cfg.model.name}.onnx"
    export_clip(model, labels, path, name=cfg.model.name)
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(path.with_suffix(".optimized.onnx"))
    so.log_severity_level = 3
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]
    clf, correct, total, torch_correct, agree = OnnxClassifier(path), 0, 0, 0, 0
    for wave, target in TrainData(cfg, data, quiet=True).val_loader:
        pred = clf.probs(wave.numpy()).argmax(-1)
        correct += int((pred == target.numpy()).sum())
        with torch.no_grad():
            want = model(wave).argmax(-1).numpy()
        torch_correct += int((want == target.numpy()).sum())
        agree += int((pred == want).sum())
        total += len(target)
    return {"ort_val_acc": correct / total, "torch_val_acc": torch_correct / total,
            "agree": agree, "clips": total, "qlinearconv": ops.count("QLinearConv"),
            "convs": ops.count("QLinearConv") + ops.count("Conv") + ops.count("FusedConv")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "gsc-dev"))
    ap.add_argument("--collect", action="store_true", help="only gather finished runs")
    a = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for label, source, epochs, bits in PLAN:
        for wb, ab in bits:
            out = out_dir(source, wb, ab)
            r = finished(out, wb, ab, epochs)
            if r is None and not a.collect:
                if out.exists():
                    sys.exit(f"{out}: holds an unfinished or different run; remove it first")
                t0 = time.time()
                print(f"{label} w{wb}a{ab}: {epochs} epoch(s) -> {out}", flush=True)
                r = qat_run(ROOT / source, out, weight_bits=wb, act_bits=ab, epochs=epochs,
                            data=a.data, quiet=True, track=False)["qat"]
                print(f"  {time.time() - t0:.0f} s: float {r['float_val_acc']:.4f}, rounded "
                      f"{r['rounded_val_acc']:.4f}, QAT {r['qat_val_acc']:.4f}", flush=True)
            if r is None:
                continue
            history = json.loads((out / "metrics.json").read_text())["history"]
            row = {"model": label, "source": source, "w": wb, "a": ab, "run": out, **r,
                   "epoch_s": float(np.mean([h["seconds"] for h in history]))}
            row["float_kb"], row["quant_kb"] = weight_kb(out)
            if (wb, ab) == (8, 8) and not a.collect:
                row.update(onnx_check(out, a.data))
                (out / "onnx_check.json").write_text(json.dumps(
                    {k: row[k] for k in ("ort_val_acc", "torch_val_acc", "agree", "clips",
                                         "qlinearconv", "convs")}))
            elif (out / "onnx_check.json").exists():
                row.update(json.loads((out / "onnx_check.json").read_text()))
            rows.append(row)
    write_table(rows)
    print(RESULTS.read_text())
    return 0


def write_table(rows: list[dict]) -> None:
    today = datetime.date.today().isoformat()
    lines = [
        "# Quantization-aware training on gsc-dev (mini10, validation)",
        "",
        f"Measured {today} with `python benchmarks/qat_table.py` (one thread, 2-core CPU "
        "shared with other jobs; seconds are indicative). Weights per output channel, "
        "symmetric; activations per tensor, asymmetric, EMA-tracked ranges; BatchNorm folded "
        "before rounding; first and last layer weights at 8 bits. *rounded* = the same "
        "quantizer, ranges calibrated on 500 training clips, no training (post-training "
        "rounding); *QAT* = best epoch of the fine-tuning (cosine from the run's lr, a tenth "
        "of it at w8a8). Weight KB: conv/linear weights after folding, biases excluded.",
        "",
        "| model | bits (w/a) | float val | rounded, no training | QAT | QAT - rounded | "
        "QAT - float | epochs | s/epoch | weights KB (float32 -> n-bit) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        f, q, z = 100 * r["float_val_acc"], 100 * r["qat_val_acc"], 100 * r["rounded_val_acc"]
        lines.append(f"| {r['model']} | w{r['w']}a{r['a']} | {f:.2f}% | {z:.2f}% | **{q:.2f}%** | "
                     f"{q - z:+.2f} | {q - f:+.2f} | {r['epochs']} | {r['epoch_s']:.0f} | "
                     f"{r['float_kb']:.1f} -> {r['quant_kb']:.1f} |")
    onnx_rows = [r for r in rows if "ort_val_acc" in r]
    if onnx_rows:
        lines += ["", "8-bit export (`kwskit export RUN`, clip model): ONNX Runtime 1.32 on the "
                  "same validation clips, and the convolutions it fuses into integer kernels "
                  "(QLinearConv) out of all convolutions. A conv whose output reaches a "
                  "float op (SubSpectralNorm, SiLU, a residual add, the pooling) before the "
                  "next quantizer stays a float conv on int8-valued weights: the QAT model "
                  "quantizes the inputs of convs, not their outputs. Integer kernels round "
                  "differently from PyTorch's float emulation now and then, hence the "
                  "argmax agreement below 100%.", "",
                  "| model | PyTorch val | ONNX Runtime val | same argmax | "
                  "QLinearConv / convs |",
                  "|---|---|---|---|---|"]
        for r in onnx_rows:
            lines.append(f"| {r['model']} w8a8 | {100 * r['torch_val_acc']:.2f}% | "
                         f"{100 * r['ort_val_acc']:.2f}% | {r['agree']} / {r['clips']} | "
                         f"{r['qlinearconv']} / {r['convs']} |")
    lines += ["", "1823 validation clips: one clip is 0.055 points; differences under ~0.5 "
              "points are within the spread of fine-tuning runs.", ""]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
