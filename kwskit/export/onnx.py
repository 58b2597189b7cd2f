"""ONNX export of a KwsPipeline: a clip model and a streaming model, front-end included.

- Clip model: input ``audio`` (batch, samples) float32 at the front-end's rate -> ``probs``
  (batch, classes), softmax included.
- Streaming model: inputs ``audio`` (1, chunk samples) and every state tensor
  (``state_<i>``); outputs ``probs`` (1, classes, chunk / step_samples) and the next states
  (``state_<i>_out``). It is ``KwsPipeline.step`` traced with ``torch.export`` (the graph has
  no Python state: the states are its inputs and outputs).

Both carry their card in ``metadata_props`` (JSON values): kind, labels, sample_rate, chunk
and step samples, frame step, delay, warm-up frames, pooling window, kwskit version, and for
the streaming model every state's name, shape, dtype and initial value (every initial state is
one value repeated, so the card holds it and no side file is needed). ``onnx.checker`` passes.
Exported with the dynamo exporter (``torch.onnx.export(dynamo=True)``, opset 18).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from kwskit import __version__
from kwskit.errors import KwsError
from kwskit.fsutil import atomic_path
from kwskit.stream.chunking import chunk_samples

OPSET = 18


def _require_onnx():
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise KwsError(f"export needs onnx and onnxscript ({exc}); "
                       "pip install 'kwskit[onnx]'") from None


class _ClipProbs(nn.Module):
    def __init__(self, pipeline: nn.Module):
        super().__init__()
        self.pipeline = pipeline

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.pipeline(audio), dim=-1)


class _StreamProbs(nn.Module):
    def __init__(self, pipeline: nn.Module):
        super().__init__()
        self.pipeline = pipeline

    def forward(self, audio: torch.Tensor, *states: torch.Tensor):
        logits, *new = self.pipeline.step(audio, *states)
        return (torch.softmax(logits, dim=1), *new)


def _fill_value(t: torch.Tensor):
    flat = t.reshape(-1)
    if flat.numel() and not bool((flat == flat[0]).all()):
        raise KwsError("export: an initial streaming state is not one repeated value")
    v = flat[0].item() if flat.numel() else 0
    return "-inf" if v == float("-inf") else v


def drop_node_metadata(model) -> None:
    """Remove the per-node debugging records torch's exporter writes (the FX node, module
    path and class hierarchy of every node: half the bytes of a small model's file, read by
    no runtime). The model's own metadata (its card) is kept."""
    for node in model.graph.node:
        del node.metadata_props[:]


def _save(onnx_program, path: Path, meta: dict) -> None:
    import onnx

    model = onnx_program.model_proto
    drop_node_metadata(model)
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.checker.check_model(model, full_check=True)
    with atomic_path(path) as tmp:
        onnx.save_model(model, str(tmp))


def _export(module: nn.Module, args: tuple, path: Path, input_names, output_names,
            dynamic_shapes=None):
    import logging
    import warnings

    _require_onnx()
    # the exporter logs a warning per missing torchvision op and prints its progress: noise here
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.onnx.export(module, args, None, input_names=input_names,
                                     output_names=output_names, opset_version=OPSET,
                                     dynamo=True, dynamic_shapes=dynamic_shapes, verbose=False,
                                     optimize=True)
        except Exception as exc:  # the exporter raises many types; say which model failed
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise KwsError(f"export to {path} failed: {first}") from None


def default_export_path(checkpoint: Path, model: str, stream: bool) -> Path:
    """Where ``kwskit export`` writes a run's model: RUN/export/MODEL[-stream].onnx."""
    return Path(checkpoint).parent.parent / "export" / f"{model}{'-stream' if stream else ''}.onnx"


def card(pipeline: nn.Module, labels: list[str], name: str) -> dict:
    """What every exported file says about itself."""
    return {"kind": None, "model": name, "labels": list(labels),
            "sample_rate": int(getattr(pipeline.frontend, "sample_rate", 16000)),
            "kwskit_version": __version__}


def export_clip(pipeline: nn.Module, labels: list[str], path: str | os.PathLike,
                clip_samples: int = 16000, name: str = "") -> dict:
    """Write the clip model (dynamic batch); returns its card."""
    path = Path(path)
    pipeline = pipeline.eval()
    audio = torch.zeros(2, clip_samples)
    batch = torch.export.Dim("batch", min=1, max=1024)
    prog = _export(_ClipProbs(pipeline), (audio,), path, ["audio"], ["probs"],
                   dynamic_shapes=({0: batch},))
    meta = card(pipeline, labels, name) | {"kind": "clip", "clip_samples": int(clip_samples)}
    _save(prog, path, meta)
    return meta


def export_stream(pipeline: nn.Module, labels: list[str], path: str | os.PathLike,
                  chunk_ms: float = 10.0, window_s: float = 1.0, name: str = "",
                  calibration: dict | None = None) -> dict:
    """Write the streaming model for chunks of ``chunk_ms`` (rounded to whole output frames,
    at least one); returns its card. ``calibration`` (thresholds, smoothing, refractory, from
    ``kwskit calibrate``) goes into the card, for runtimes to use by default."""
    from kwskit.stream.streaming import Streamer

    path = Path(path)
    streamer = Streamer(pipeline.eval(), window_s=window_s)  # checks it can stream
    sr, unit = streamer.sample_rate, streamer.unit
    chunk = chunk_samples(chunk_ms, sr, unit)
    states = pipeline.init_state(1, streamer.window)
    names = [f"state_{i}" for i in range(len(states))]
    prog = _export(_StreamProbs(pipeline), (torch.zeros(1, chunk), *states), path,
                   ["audio", *names], ["probs", *[f"{n}_out" for n in names]])
    meta = card(pipeline, labels, name) | {
        "kind": "stream", "chunk_samples": chunk, "step_samples": unit,
        "frame_step_s": unit / sr, "delay_s": streamer.delay_s,
        "warmup_frames": int(pipeline.stream_warmup), "window_frames": streamer.window,
        "window_s": float(window_s), "frame_win": streamer.win, "frame_left_pad": streamer.left_pad,
        "states": [{"name": n, "shape": list(s.shape), "dtype": str(s.dtype).replace("torch.", ""),
                    "init": _fill_value(s)} for n, s in zip(names, states)]}
    if calibration:
        meta["calibration"] = calibration
    _save(prog, path, meta)
    return meta

