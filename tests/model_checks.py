"""Helpers shared by the model and layer tests: sizes, BatchNorm set-up, recipe inputs, and the
streaming proof (random chunks through ``step`` equal the whole-sequence forward).

Plain functions, not fixtures; the one-thread fixture is ``one_thread`` in conftest.py.
"""

from __future__ import annotations

import torch
from torch import nn

from kwskit.features.frontend import build_frontend
from kwskit.models import create_model, model_info
from kwskit.models.pipeline import KwsPipeline

_INIT = object()  # run_stream's default: start from module.init_state(batch, **state_kw)


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
def chunk_sizes(total: int, seed: int, max_chunk: int = 7) -> list[int]:
    """Random chunk sizes (0..max_chunk) summing to ``total`` >= 2, led by the edge cases 0, 1,
    0, 1 (empty and single-frame chunks) and ending with an empty chunk."""
    g = torch.Generator().manual_seed(seed)
    sizes, left = [0, 1, 0, 1], total - 2
    while left > 0:
        c = min(int(torch.randint(0, max_chunk + 1, (1,), generator=g)), left)
        sizes.append(c)
        left -= c
    return sizes + [0]


def run_stream(module: nn.Module, x: torch.Tensor, seed: int = 0, max_chunk: int = 7,
               state=_INIT, **state_kw) -> torch.Tensor:
    """Feed ``x`` through ``module.step`` in ``chunk_sizes`` chunks along its last axis and
    concatenate the outputs there. The first state is ``module.init_state(batch, **state_kw)``
    unless ``state`` is given (``state=None``: the module's lazy state)."""
    if state is _INIT:
        state = module.init_state(x.shape[0], **state_kw)
    classes = getattr(module, "num_classes", None)
    outs, i = [], 0
    for c in chunk_sizes(x.shape[-1], seed, max_chunk):
        y, state = module.step(x[..., i:i + c], state)
        assert y.shape[0] == x.shape[0]
        if classes is not None:  # a classifier: (B, classes, n_new) logits, even when n_new = 0
            assert y.shape[:2] == (x.shape[0], classes)
        outs.append(y)
        i += c
    assert i == x.shape[-1]
    return torch.cat(outs, dim=-1)


def expected_frames(t: int, stride: int, lookahead: int) -> int:
    """Output frames computable from t input frames: j with j*stride + lookahead <= t-1."""
    return (t - 1 - lookahead) // stride + 1 if t - 1 >= lookahead else 0


def assert_model_streams(model: nn.Module, x: torch.Tensor, window: int | None, *, seed: int,
                         max_chunk: int, atol: float, causal: bool = False):
    """The streaming proof for a classifier in eval mode: chunked ``step`` logits equal
    ``forward_frames(x, window)`` on every frame that needs no input past the end of ``x``
    (all frames when ``causal``). Returns (whole, streamed)."""
    with torch.no_grad():
        whole = model.forward_frames(x, window)
        streamed = run_stream(model, x, seed, max_chunk, window=window)
    t = x.shape[-1]
    assert whole.shape == (x.shape[0], model.num_classes, model.num_out_frames(t))
    n, la, s = streamed.shape[-1], model.lookahead_frames, model.frame_stride
    assert n == expected_frames(t, s, la) > 0  # every frame not needing input past the end
    if causal:
        assert la == 0 and n == whole.shape[-1]
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
