"""`kwskit info`: profile a registered model (with its recipe's front-end) or a trained run."""

from __future__ import annotations

from pathlib import Path

import torch

from kwskit.errors import KwsError


def pipeline_for(target: str, num_classes: int = 12):
    """(pipeline, description) for a model name, a run directory or a checkpoint file."""
    p = Path(target)
    if p.exists():
        from kwskit.models.io import load_model

        model, cfg, labels = load_model(p)
        return model, f"{cfg.model.name} from {p} ({len(labels)} classes)"
    from kwskit.config import ExperimentConfig, ModelConfig
    from kwskit.models.registry import list_models, model_info
    from kwskit.models.io import build_pipeline

    if target not in list_models():
        # create_model raises the helpful error (close matches, all names)
        from kwskit.models.registry import create_model

        create_model(target, num_classes=num_classes)
        raise KwsError(f"{target}: unknown model")
    info = model_info(target)
    cfg = ExperimentConfig(model=ModelConfig(name=target), frontend=dict(info.get("frontend") or {"type": "none"}))
    model = build_pipeline(cfg, num_classes).eval()
    return model, f"{target} with its recipe front-end ({num_classes} classes)"


def profile_target(target: str, num_classes: int = 12, latency: bool = True) -> dict:
    from kwskit.eval.profile import profile_model

    model, desc = pipeline_for(target, num_classes)
    frontend = None if model.input_kind == "wave" else model.frontend
    backbone = _Squeeze1d(model.backbone) if model.input_kind == "1d" else model.backbone
    prof = profile_model(backbone, frontend=frontend, latency=latency)
    prof["model"] = desc
    return prof


class _Squeeze1d(torch.nn.Module):
    """1-D backbones take (B, F, T): drop the front-end's channel axis first."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, x):
        return self.backbone(x.squeeze(1) if x.dim() == 4 else x)
