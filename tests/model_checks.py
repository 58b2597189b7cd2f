"""Helpers shared by the model and layer tests: sizes, BatchNorm set-up, recipe inputs, and the
streaming proof (random chunks through ``step`` equal the whole-sequence forward).

Plain functions, not fixtures; the one-thread fixture is ``one_thread`` in conftest.py.
"""

from __future__ import annotations

import torch
from torch import nn

from kwskit.features.frontend import build_frontend
from kwskit.layers import FrameSpec
from kwskit.models import create_model, model_info
from kwskit.models.pipeline import KwsPipeline

# ---------------------------------------------------------------- sizes and set-up
def n_params(model: nn.Module) -> int:
    """Trainable parameters (frozen buffers and statistics do not count)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial running statistics (and affine parameters where there are any) in every
    BatchNorm of any dimension, so that eval-mode BN is not the identity in the proofs."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.data.copy_(torch.randn(c, generator=g) * 0.2)


def eval_model(name: str, num_classes: int = 12, **kwargs) -> nn.Module:
    """``create_model(name, num_classes, **kwargs)`` with random BatchNorm statistics
    (``randomize_batchnorm``), in eval mode: the subject of the streaming proofs."""
    model = create_model(name, num_classes=num_classes, **kwargs)
    randomize_batchnorm(model)
    return model.eval()


# ---------------------------------------------------------------- recipe inputs
def recipe_frames(name: str) -> int:
    """Frames of a 1-s, 16 kHz clip under the model's recipe front-end (center=False)."""
    fe = model_info(name)["frontend"]
    return 1 + (16000 - fe["win_length"]) // fe["hop_length"]


def feature_shape(name: str, batch: int, frames: int) -> tuple[int, ...]:
    """Input shape of the registered model ``name``: (B, 1, F, T) for 2-D models, (B, F, T)
    for 1-D ones, F the recipe's MFCC (or mel) bins. Not for raw-audio ('wave') models."""
    info = model_info(name)
    fe = info["frontend"]
    f = fe.get("n_mfcc") or fe["n_mels"]
    return (batch, 1, f, frames) if info["input"] == "2d" else (batch, f, frames)


def recipe_pipeline(name: str, num_classes: int) -> KwsPipeline:
    """The model behind its recipe front-end, taking (B, samples) audio."""
    info = model_info(name)
    model = create_model(name, num_classes=num_classes)
    return KwsPipeline(build_frontend(info["frontend"]), model, input_kind=info["input"])


def assert_trains(module: nn.Module, x: torch.Tensor, num_classes: int,
                  params: nn.Module | None = None) -> None:
    """Train-mode forward gives finite (B, num_classes) logits, and one backward pass gives every
    parameter of ``params`` (default: ``module``) a finite, non-zero gradient."""
    y = module.train()(x)
    assert y.shape == (x.shape[0], num_classes) and torch.isfinite(y).all()
    y.logsumexp(dim=1).sum().backward()
    grads = [p.grad for p in (params if params is not None else module).parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(g.abs().sum() > 0 for g in grads)  # every weight is on the loss path


# ---------------------------------------------------------------- the streaming proof
def chunk_sizes(total: int, seed: int, max_chunk: int = 7, unit: int = 1) -> list[int]:
    """Random chunk sizes, each a multiple of ``unit`` from 1 to ``max_chunk`` units (single
    units first), summing to ``total`` (a multiple of ``unit``)."""
    g = torch.Generator().manual_seed(seed)
    sizes, left = [unit, unit], total - 2 * unit
    while left > 0:
        c = min(unit * int(torch.randint(1, max_chunk + 1, (1,), generator=g)), left)
        sizes.append(c)
        left -= c
    return sizes


def stream_states(module: nn.Module, x: torch.Tensor, window: int | None = None):
    """(states, output FrameSpec) of ``module`` for a batch shaped like ``x``: a classifier
    (it has ``frame_stride``) pools ``window`` frames; a layer gets x's frame shape."""
    spec = FrameSpec(tuple(x.shape[1:-1]))
    if hasattr(module, "frame_stride"):
        return module.stream_init(x.shape[0], window, dtype=x.dtype)
    if hasattr(module, "frames"):  # a pool (TimePool, AttentionPool)
        return module.stream_init(x.shape[0], spec, window, dtype=x.dtype)
    return module.stream_init(x.shape[0], spec, dtype=x.dtype)


def run_stream(module: nn.Module, x: torch.Tensor, seed: int = 0, max_chunk: int = 7,
               window: int | None = None) -> tuple[torch.Tensor, int]:
    """Feed ``x`` (cut to a multiple of the stride) through ``module.step`` in
    ``chunk_sizes`` chunks along its last axis; returns (the outputs after the warm-up frames,
    concatenated along time, the warm-up). Every step must return exactly chunk / stride
    frames."""
    stride = getattr(module, "frame_stride", None) or getattr(module, "stride", 1)
    states, spec = stream_states(module, x, window)
    t = x.shape[-1] // stride * stride
    outs, i = [], 0
    for c in chunk_sizes(t, seed, max_chunk, stride):
        y, states = module.step(x[..., i:i + c], states)
        assert y.shape[0] == x.shape[0] and y.shape[-1] == c // stride
        assert all(torch.is_tensor(s) for s in states)
        outs.append(y)
        i += c
    return torch.cat(outs, dim=-1)[..., spec.warmup:], spec.warmup


def assert_model_streams(model: nn.Module, x: torch.Tensor, window: int | None, *, seed: int,
                         max_chunk: int, atol: float, causal: bool = False):
    """The streaming proof for a classifier in eval mode: chunked ``step`` logits, after the
    warm-up, equal ``forward_frames(x, window)`` frame for frame (and a causal model has no
    warm-up). Returns (whole, streamed)."""
    with torch.no_grad():
        whole = model.forward_frames(x, window or model.num_out_frames(x.shape[-1]))
        streamed, warmup = run_stream(model, x, seed, max_chunk,
                                      window=window or model.num_out_frames(x.shape[-1]))
    t, s = x.shape[-1], model.frame_stride
    assert whole.shape == (x.shape[0], model.num_classes, model.num_out_frames(t))
    n = streamed.shape[-1]
    assert n == t // s - warmup > 0
    # a frame comes out at the end of the step holding its look-ahead, never before
    assert warmup * s + s - 1 >= model.lookahead_frames
    if causal:
        assert model.lookahead_frames == 0 and warmup == 0
    torch.testing.assert_close(streamed, whole[..., :n], atol=atol, rtol=0)
    return whole, streamed


def assert_clip_is_last_frame(model: nn.Module, x: torch.Tensor, atol: float) -> None:
    """On a whole clip, the clip logits equal the last frame of ``forward_frames``, both with a
    window of the clip's frames and with window=None (all frames so far)."""
    with torch.no_grad():
        clip = model(x)
        frames = model.forward_frames(x, window=model.num_out_frames(x.shape[-1]))
        torch.testing.assert_close(frames[..., -1], clip, atol=atol, rtol=0)
        torch.testing.assert_close(model.forward_frames(x)[..., -1], clip, atol=atol, rtol=0)


# The start of a ``python -c`` script that runs as if torch were not installed: checks that
# the runtime, ``kwskit stream MODEL.onnx`` and ``kwskit serve`` never import it.
NO_TORCH_PRELUDE = """
import importlib.abc, sys
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)  # as if absent
sys.meta_path.insert(0, NoTorch())
"""
