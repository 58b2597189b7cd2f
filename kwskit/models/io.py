"""Model I/O: the pipeline a config or an architecture spec describes, checkpoints, run folders.

An architecture spec (``arch_of``) is a small JSON-able dict that says how to rebuild a model
without its training config::

    {"name": "bcresnet1",                  # the registered constructor (create_model)
     "args": {"num_classes": 12, "in_features": 40, "dropout": 0.1, ...},  # every argument,
                                           # defaults filled in, tuples as lists
     "frontend": {"type": "logmel", ...},  # build_frontend's dict
     "input": "2d",                        # how the backbone takes features (KwsPipeline)
     "kwskit_version": "0.1.0"}

Training stores it in every checkpoint next to the weights, so a model whose structure no
longer matches its config -- pruned, distilled into other widths, searched -- reloads as
what it is; checkpoints without one are rebuilt from their config as before.

A run directory (what the train command writes):

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

import dataclasses
import importlib
import json
import textwrap
from pathlib import Path

import torch

from kwskit.config import ExperimentConfig, config_from_dict
from kwskit.errors import KwsError
from kwskit.fsutil import atomic_path

ARCH_KEYS = ("name", "args", "frontend", "input")

# Optional arch keys that compression records: key -> "module:function(pipeline, value) -> pipeline",
# applied in this order after the registered model is built (e.g. pruned channel counts, then
# quantization-aware wrappers), so a compressed run rebuilds, resumes and reloads as it is.
ARCH_EDITS: dict[str, str] = {
    "pruned": "kwskit.models.pruned:resize_modules",  # first: channel counts (kwskit prune)
    "approx": "kwskit.layers.approx_math:apply_approx",  # hardware sinc + log (kwskit approx)
    "qat": "kwskit.layers.quant:apply_qat",  # last: wraps the layers built before (--qat)
}


def _jsonable(value, what: str):
    """``value`` as plain JSON types (tuples become lists); KwsError when it has no JSON form."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise KwsError(f"{what}: not JSON-serialisable ({exc})") from None


def arch_of(cfg: ExperimentConfig, num_classes: int) -> dict:
    """The architecture spec (module doc) of the model ``cfg`` describes with ``num_classes``.

    ``args`` is every constructor argument: the registered defaults, overridden by
    ``cfg.model.args``, with ``num_classes`` and -- for backbones that take features --
    ``in_features`` from the front-end's size (unless the config sets it).
    """
    from kwskit import __version__
    from kwskit.features.frontend import build_frontend
    from kwskit.models.registry import model_info

    info = model_info(cfg.model.name)
    kw = {k: v for k, v in info["defaults"].items() if k != "num_classes"}
    kw.update(cfg.model.args)
    if info["input"] in ("2d", "1d"):
        frontend = build_frontend(cfg.frontend)
        if not hasattr(frontend, "n_features"):
            raise KwsError(f"config: frontend: {cfg.model.name} takes features, but frontend.type is "
                           f"{cfg.frontend.get('type')!r} (use logmel or mfcc)")
        if "in_features" not in cfg.model.args:
            kw["in_features"] = int(frontend.n_features)  # sized by its front-end
    return {"name": info["name"],
            "args": _jsonable({"num_classes": num_classes, **kw}, f"model {info['name']}: args"),
            "frontend": _jsonable(dict(cfg.frontend or {}), "frontend"),
            "input": info["input"], "kwskit_version": __version__}


def _check_arch(arch) -> None:
    from kwskit.models.registry import INPUT_KINDS

    if not isinstance(arch, dict) or any(k not in arch for k in ARCH_KEYS) \
            or not isinstance(arch["args"], dict) or not isinstance(arch["frontend"], dict):
        raise KwsError(f"arch: expected a dict with {', '.join(ARCH_KEYS)} (args and frontend "
                       f"dicts), got {arch!r:.200}")
    if arch["input"] not in INPUT_KINDS:
        raise KwsError(f"arch: input must be one of {', '.join(INPUT_KINDS)}, got {arch['input']!r}")


def build_from_arch(arch: dict, specaugment: torch.nn.Module | None = None):
    """A freshly initialised KwsPipeline from an architecture spec (``arch_of``)."""
    from kwskit.features.frontend import build_frontend
    from kwskit.models.pipeline import KwsPipeline
    from kwskit.models.registry import create_model

    _check_arch(arch)
    frontend = build_frontend(arch["frontend"])
    backbone = create_model(arch["name"], **arch["args"])
    pipeline = KwsPipeline(frontend, backbone, input_kind=arch["input"], specaugment=specaugment)
    for key, target in ARCH_EDITS.items():
        if arch.get(key) is not None:
            module, _, func = target.partition(":")
            pipeline = getattr(importlib.import_module(module), func)(pipeline, arch[key])
    return pipeline


def build_pipeline(cfg: ExperimentConfig, num_classes: int, arch: dict | None = None):
    """The front-end + backbone (+ SpecAugment) a config describes, freshly initialised.

    ``arch`` (default ``arch_of(cfg, num_classes)``) sets the structure; the config adds the
    training-only SpecAugment.
    """
    from kwskit.data.augment import AugmentConfig, SpecAugment

    aug = AugmentConfig.from_dict(cfg.augment)
    spec = SpecAugment.from_config(aug) if aug.enabled and aug.spec_prob > 0 else None
    return build_from_arch(arch if arch is not None else arch_of(cfg, num_classes), spec)


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
    """(pipeline in eval mode, config, labels) from a run directory or a checkpoint.

    The model is built from the checkpoint's ``arch`` when it has one (the returned config's
    ``model`` and ``frontend`` then say the same), else from its config.
    """
    path = resolve_checkpoint(run_or_ckpt, which)
    state = read_checkpoint(path)
    cfg = config_from_dict(state["config"])
    labels = list(state["labels"])
    arch = state.get("arch")
    if arch is None:
        arch = arch_of(cfg, len(labels))
    else:
        _check_arch(arch)
        if arch["args"].get("num_classes") != len(labels):
            raise KwsError(f"{path}: arch has {arch['args'].get('num_classes')} classes but the "
                           f"checkpoint lists {len(labels)} labels")
        args = {k: v for k, v in arch["args"].items() if k != "num_classes"}
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name=arch["name"], args=args),
                                  frontend=dict(arch["frontend"]))
    model = build_from_arch(arch)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise KwsError(f"{path}: weights do not fit the {arch['name']} it describes "
                       f"({textwrap.shorten(' '.join(first[:3]), 200, placeholder=' ...')})") from None
    model.eval()
    return model, cfg, labels
