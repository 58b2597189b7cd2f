"""`kwskit eval`: score a trained model on a data set split and write the report under RUN/eval/.

The model is a run directory, a checkpoint, or an exported clip model (``.onnx``, scored by
ONNX Runtime through ``kwskit.runtime.OnnxClassifier``). A run that ``kwskit quantize`` wrote
in int8 or fp16 holds its quantized ONNX models beside the float checkpoint they came from
(``RUN/quantization.json`` names them): evaluating the run evaluates its quantized clip
model; evaluating ``RUN/checkpoints/best.pt`` evaluates the float checkpoint. Both go through
the same data preparation (``split_clips``) and scoring (``predict``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kwskit.errors import KwsError
from kwskit.fsutil import write_json

SPLITS = {"test": ["testing"], "validation": ["validation"], "train": ["training"],
          "all": ["training", "validation", "testing"]}
QUANTIZATION_FILE = "quantization.json"


def predict(model, waves: np.ndarray, batch_size: int = 256, desc: str = "eval") -> np.ndarray:
    """Softmax scores (N, classes) for int16 clips (N, samples). ``model`` is a PyTorch
    pipeline (logits out) or an exported clip model with ``probs(audio)`` (OnnxClassifier)."""
    from tqdm import tqdm

    from kwskit.data.loader import INT16_SCALE

    onnx = hasattr(model, "probs")
    if not onnx:
        import torch
    out = []
    for i in tqdm(range(0, len(waves), batch_size), desc=desc, unit="batch", disable=None, leave=False):
        x = np.asarray(waves[i : i + batch_size], dtype=np.float32) / INT16_SCALE
        if onnx:
            out.append(np.asarray(model.probs(x), dtype=np.float32))
        else:
            with torch.no_grad():
                out.append(torch.softmax(model(torch.from_numpy(x)).float(), dim=1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def split_clips(cfg, labels: list[str], data: str | Path, split: str) -> tuple:
    """(int16 clips (N, samples), label indices (N,), data set layout) of one split of
    ``data``, prepared as training prepared them (the config's data options and seed)."""
    from kwskit.data.loader import prepare_split
    from kwskit.data.speech_commands import scan_dataset

    if split not in SPLITS:
        raise KwsError(f"--split {split}: must be one of {', '.join(SPLITS)}")
    index = scan_dataset(str(data))
    # The separate official test archive has no lists: every clip in it is a test clip.
    parts = ["testing"] if index.layout == "test_archive" else SPLITS[split]
    d = cfg.data
    examples, waves = [], []
    for part in parts:
        sd = prepare_split(index, labels, part, silence_share=d.silence_share, unknown_share=d.unknown_share,
                           seed=cfg.train.seed, sample_rate=d.sample_rate, clip_samples=d.clip_samples,
                           cache_dir=d.cache_dir, min_clip_fraction=d.min_clip_fraction,
                           unknown_holdout=d.unknown_holdout)
        examples += sd.examples
        waves.append(np.asarray(sd.waves))
    if not examples:
        raise KwsError(f"{data}: no clips in split '{split}' for labels {labels}")
    targets = np.array([ex.label for ex in examples], dtype=np.int64)
    return np.concatenate(waves), targets, index.layout


def read_quantization(run: str | Path) -> dict | None:
    """``RUN/quantization.json`` (what ``kwskit quantize`` made: mode, bits, the quantized
    ONNX files relative to the run, calibration), or None for an ordinary run."""
    path = Path(run) / QUANTIZATION_FILE
    if not Path(run).is_dir() or not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise KwsError(f"{path}: unreadable ({exc})") from None
    if not isinstance(record, dict) or "mode" not in record:
        raise KwsError(f"{path}: not a kwskit quantization record (no mode)")
    return record


def quantized_export(run: str | Path, kind: str) -> Path | None:
    """The quantized ONNX model (``kind`` "clip" or "stream") a quantized run holds, or None."""
    record = read_quantization(run)
    name = (record or {}).get("onnx", {}).get(kind)
    if not name:
        return None
    path = Path(run) / name
    if not path.is_file():
        raise KwsError(f"{path}: missing ({Path(run) / QUANTIZATION_FILE} names it); "
                       "quantize again")
    return path


def load_scorer(run: str | Path, which: str = "best") -> tuple:
    """(model for ``predict``, config, labels, report folder, description) for a run directory,
    a checkpoint or an exported clip model; a quantized run gives its quantized clip model.

    An ONNX model is evaluated with its run's config (data options) when it lies in
    RUN/export/, else with the defaults; its reports go to RUN/eval/ (or the file's folder's
    eval/) under a name that ends in the file's stem, so they never replace the reports of the
    float checkpoint."""
    p = Path(run)
    onnx = p if p.suffix == ".onnx" else quantized_export(p, "clip")
    if onnx is None:
        from kwskit.models.io import load_model, resolve_checkpoint

        model, cfg, labels = load_model(run, which)
        ckpt = resolve_checkpoint(run, which)
        return model, cfg, labels, ckpt.parent.parent / "eval", "", f"{ckpt} (PyTorch)"
    from kwskit.config import ExperimentConfig, load_config
    from kwskit.runtime import OnnxClassifier

    model = OnnxClassifier(onnx)  # KwsError for a missing, broken or streaming file
    home = onnx.parent.parent if onnx.parent.name == "export" else None
    if home is not None and (home / "config.yaml").is_file():
        cfg = load_config(home / "config.yaml")
    else:
        cfg, home = ExperimentConfig(), onnx.parent
    what = f"{onnx} (ONNX Runtime{'' if onnx == p else ', the quantized model of this run'})"
    return model, cfg, model.labels, home / "eval", f"-{onnx.stem}", what


def evaluate_run(run: str | Path, data: str | Path, split: str = "test", batch_size: int = 256,
                 which: str = "best") -> tuple[dict, Path]:
    """Evaluate a run, checkpoint or exported clip model on ``data``; returns (metrics, report
    folder). ``metrics["model"]`` says which file was scored and how (``load_scorer``)."""
    from kwskit.eval.metrics import evaluate_scores
    from kwskit.eval.plots import plot_confusion, plot_far_frr

    if split not in SPLITS:
        raise KwsError(f"--split {split}: must be one of {', '.join(SPLITS)}")
    model, cfg, labels, folder, suffix, what = load_scorer(run, which)
    waves, targets, layout = split_clips(cfg, labels, data, split)
    scores = predict(model, waves, batch_size)
    metrics = evaluate_scores(scores, targets, labels)
    metrics.update({"split": split, "data": str(data), "layout": layout, "model": what})

    report = folder / f"{Path(data).resolve().name}-{split}{suffix}"
    report.mkdir(parents=True, exist_ok=True)
    write_json(report / "metrics.json", metrics)
    write_json(report / "confusion.json", {"labels": labels, "matrix": metrics["confusion"]})
    plot_confusion(np.array(metrics["confusion"]), labels, report / "confusion.png")
    if metrics.get("far_frr"):
        plot_far_frr(metrics["far_frr"], report / "far_frr.png")
    return metrics, report


def format_metrics(m: dict) -> str:
    lines = [f"accuracy {m['accuracy']:.4f} on {m['n']} clips ({m['split']}, layout {m['layout']})",
             f"{'label':>12} {'prec':>6} {'recall':>6} {'f1':>6} {'n':>6}"]
    if m.get("model"):
        lines.insert(0, f"model: {m['model']}")
    for name, r in m["per_class"].items():
        fmt = lambda v: "   n/a" if v is None else f"{v:6.3f}"  # noqa: E731
        lines.append(f"{name:>12} {fmt(r['precision'])} {fmt(r['recall'])} {fmt(r['f1'])} {r['support']:6d}")
    return "\n".join(lines)
