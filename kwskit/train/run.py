"""Run directories: building the model a config names, saving and loading checkpoints.

A run directory holds:

    config.yaml          the resolved config (every default filled in)
    labels.json          the ordered label list
    checkpoints/last.pt  after every epoch (model, optimiser, epoch, history) -- for --resume
    checkpoints/best.pt  the best validation accuracy so far (model weights only)
    metrics.json         per-epoch history and the best epoch
    mlflow.db            MLflow's local SQLite store (when no --tracking-uri is given;
                         mlflow ui --backend-store-uri sqlite:///RUN/mlflow.db)
    eval/                what `kwskit eval` writes

Every command that takes a model accepts a run directory or a checkpoint file.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import torch

from kwskit.config import ExperimentConfig, config_from_dict
from kwskit.errors import KwsError
from kwskit.fsutil import atomic_path


def build_pipeline(cfg: ExperimentConfig, num_classes: int):
    """The front-end + backbone (+ SpecAugment) a config describes, freshly initialised."""
    from kwskit.data.augment import AugmentConfig, SpecAugment
    from kwskit.features.frontend import build_frontend
    from kwskit.models.pipeline import KwsPipeline
    from kwskit.models.registry import create_model, model_info

    info = model_info(cfg.model.name)
    frontend = build_frontend(cfg.frontend)
    kw = dict(cfg.model.args)
    if info.get("input") in ("2d", "1d"):
        if not hasattr(frontend, "n_features"):
            raise KwsError(f"config: frontend: {cfg.model.name} takes features, but frontend.type is "
                           f"{cfg.frontend.get('type')!r} (use logmel or mfcc)")
        kw.setdefault("in_features", int(frontend.n_features))  # sized by its front-end
    backbone = create_model(cfg.model.name, num_classes=num_classes, **kw)
    aug = AugmentConfig.from_dict(cfg.augment)
    spec = SpecAugment.from_config(aug) if aug.enabled and aug.spec_prob > 0 else None
    return KwsPipeline(frontend, backbone, input_kind=info.get("input", "2d"), specaugment=spec)


def save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def resolve_checkpoint(run_or_ckpt: str | Path, which: str = "best") -> Path:
    p = Path(run_or_ckpt)
    if p.is_file():
        return p
    if p.is_dir():
        for name in (which, "last") if which == "best" else (which,):
            ck = p / "checkpoints" / f"{name}.pt"
            if ck.exists():
                return ck
        raise KwsError(f"{p}: no checkpoints/{which}.pt in this run directory")
    raise KwsError(f"{p}: no such run directory or checkpoint")


def read_checkpoint(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        reason = textwrap.shorten(str(exc).strip().splitlines()[0] if str(exc).strip()
                                  else type(exc).__name__, 120, placeholder=" ...")
        hint = ("a run whose last.pt is damaged cannot --resume: evaluate its best.pt "
                "(--checkpoint best) or train it again" if Path(path).name == "last.pt"
                else "copy it again, or use the run's other checkpoint (--checkpoint best|last)")
        raise KwsError(f"{path}: damaged or truncated checkpoint ({reason}); {hint}") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise KwsError(f"{path}: not a kwskit checkpoint (no model/config inside)")
    return state


def load_model(run_or_ckpt: str | Path, which: str = "best"):
    """(pipeline in eval mode, config, labels) from a run directory or a checkpoint."""
    path = resolve_checkpoint(run_or_ckpt, which)
    state = read_checkpoint(path)
    cfg = config_from_dict(state["config"])
    labels = list(state["labels"])
    model = build_pipeline(cfg, len(labels))
    model.load_state_dict(state["model"])
    model.eval()
    return model, cfg, labels


def write_labels(run_dir: Path, labels: list[str]) -> None:
    from kwskit.fsutil import write_text

    write_text(run_dir / "labels.json", json.dumps(labels) + "\n")
