"""`kwskit eval`: score a trained model on a data set split and write the report under RUN/eval/."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from kwskit.data.loader import INT16_SCALE
from kwskit.errors import KwsError
from kwskit.fsutil import write_json

SPLITS = {"test": ["testing"], "validation": ["validation"], "train": ["training"],
          "all": ["training", "validation", "testing"]}


@torch.no_grad()
def predict(model, waves: np.ndarray, batch_size: int = 256, desc: str = "eval") -> np.ndarray:
    """Softmax scores (N, classes) for int16 clips (N, samples)."""
    out = []
    for i in tqdm(range(0, len(waves), batch_size), desc=desc, unit="batch", disable=None, leave=False):
        x = torch.from_numpy(np.asarray(waves[i : i + batch_size], dtype=np.float32) / INT16_SCALE)
        out.append(torch.softmax(model(x).float(), dim=1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def evaluate_run(run: str | Path, data: str | Path, split: str = "test", batch_size: int = 256,
                 which: str = "best") -> tuple[dict, Path]:
    """Evaluate a run (or checkpoint) on ``data``; returns (metrics, report folder)."""
    from kwskit.data.loader import prepare_split
    from kwskit.data.speech_commands import scan_dataset
    from kwskit.eval.metrics import evaluate_scores
    from kwskit.eval.plots import plot_confusion, plot_far_frr
    from kwskit.models.io import load_model, resolve_checkpoint

    if split not in SPLITS:
        raise KwsError(f"--split {split}: must be one of {', '.join(SPLITS)}")
    model, cfg, labels = load_model(run, which)
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
    waves = np.concatenate(waves)
    targets = np.array([ex.label for ex in examples], dtype=np.int64)
    scores = predict(model, waves, batch_size)
    metrics = evaluate_scores(scores, targets, labels)
    metrics.update({"split": split, "data": str(data), "layout": index.layout})

    run_dir = Path(run) if Path(run).is_dir() else resolve_checkpoint(run).parent.parent
    report = run_dir / "eval" / f"{Path(data).resolve().name}-{split}"
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
    for name, r in m["per_class"].items():
        fmt = lambda v: "   n/a" if v is None else f"{v:6.3f}"  # noqa: E731
        lines.append(f"{name:>12} {fmt(r['precision'])} {fmt(r['recall'])} {fmt(r['f1'])} {r['support']:6d}")
    return "\n".join(lines)
