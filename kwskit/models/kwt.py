"""KWT: the Keyword Transformer, a fully self-attentional keyword spotter.

Berg, O'Connor, Tairum Cruz, "Keyword Transformer: A Self-Attention Model for Keyword
Spotting", Interspeech 2021, arXiv:2104.00769 (section 3: model; Table 1: sizes; section 4:
training). Input: 40 MFCC x 98 frames (30 ms window, 10 ms hop), as 1-D features
(batch, 40, frames).

    every frame is one token: Linear(40 -> d) (the paper's time-domain "patches" of 40x1)
    prepend a learned class token, add a learned position embedding (99 x d)
    L transformer encoder layers, POST-norm (the paper's choice; their ablation found
    post-norm better than pre-norm):
        x = LN(x + MHSA(x));  x = LN(x + MLP(x)),  MLP = Linear(d, m) GELU Linear(m, d)
    Linear(d -> classes) on the class token's output (no extra norm before it)

KWT-1: L = 12, d = 64, 1 head, MLP 256, dropout 0. Query/key/value projections have no bias
(the output projection has one) and LayerNorm eps is 1e-6, as in the authors' release; with
this the count is exactly the authors' 607,308 trainable parameters for 12 classes.

Streaming: attention is global over the fixed 98-frame window and the class token reads all
of it, so nothing can be emitted frame by frame: ``streamable`` is False and the streaming
methods raise KwsError with ``stream_note``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kwskit.errors import KwsError
from kwskit.layers import StreamClassifier, StreamModule
from kwskit.models.registry import check_positive_int, check_probability, register_model

PAPER = ("Berg, O'Connor & Tairum Cruz 2021, Keyword Transformer: A Self-Attention Model for "
         "Keyword Spotting, arXiv:2104.00769")
# The authors' recipe (flags of their released KWT-1): TF-style MFCC, 40 coefficients of 80
# mel bands in 20-7600 Hz from the magnitude (not power) spectrum, 30 ms window, 10 ms hop
FRONTEND = {"type": "mfcc", "n_mfcc": 40, "n_mels": 80, "win_length": 480, "hop_length": 160,
            "n_fft": 512, "f_min": 20.0, "f_max": 7600.0, "power": 1.0, "log_offset": 1e-12}
CLIP_FRAMES = 98  # 1 s at 10 ms hop with a 30 ms window
LN_EPS = 1e-6
INIT_STD = 0.02  # truncated-normal init of every weight and embedding (DeiT / the release)
STREAM_NOTE = ("global self-attention over the 1-s window; a streaming variant would "
               "recompute the window every hop")


class SelfAttention(nn.Module):
    """Multi-head self-attention over (batch, tokens, dim); q/k/v without bias."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise KwsError(f"KWT: dim={dim} must be divisible by heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        y = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d_head)) v
        return self.drop(self.proj(y.transpose(1, 2).reshape(b, n, d)))


class EncoderLayer(nn.Module):
    """Transformer encoder layer, post-norm (``prenorm=True`` for the pre-norm variant)."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float, prenorm: bool):
        super().__init__()
        self.prenorm = prenorm
        self.attn = SelfAttention(dim, heads, dropout)
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim),
                                 nn.Dropout(dropout))
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.prenorm:
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.mlp(x))


class KWTEncoder(StreamModule):
    """(batch, in_features, frames) -> class-token output (batch, dim, 1).

    One output "frame" per window of ``num_frames`` input frames, aligned with the window's
    first frame: ``stride == num_frames`` and ``lookahead == num_frames - 1`` (the whole
    window must have arrived). Whole-window only; ``step`` raises KwsError.
    """

    def __init__(self, in_features: int, num_frames: int, dim: int, depth: int, heads: int,
                 mlp_dim: int, dropout: float, prenorm: bool):
        super().__init__()
        self.num_frames = num_frames
        self.embed = nn.Linear(in_features, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_frames + 1, dim))
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, mlp_dim, dropout, prenorm)
                                    for _ in range(depth))

    @property
    def stride(self) -> int:
        return self.num_frames

    @property
    def lookahead(self) -> int:
        return self.num_frames - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing() and x.shape[-1] != self.num_frames:
            raise KwsError(f"KWT: takes exactly {self.num_frames} frames, got {x.shape[-1]}")
        tokens = self.embed(x.transpose(1, 2))  # (B, T, dim): one token per frame
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        h = torch.cat([cls, tokens], dim=1) + self.pos_embed
        for layer in self.layers:
            h = layer(h)
        return h[:, 0].unsqueeze(-1)  # the class token, as a single output frame

    def step(self, x, state):
        raise KwsError(f"KWT cannot stream: {STREAM_NOTE}")


class KWT(StreamClassifier):
    """Keyword Transformer on (batch, in_features, num_frames) features.

    Args:
        num_classes: output classes.
        in_features: MFCC bins per frame (40 in the paper).
        num_frames: frames per clip, fixed by the learned position embedding (98 = 1 s).
        dim, depth, heads, mlp_dim: token width, encoder layers, attention heads, MLP width.
        dropout: dropout on the attention and MLP outputs (0 for KWT-1..3).
        prenorm: pre-norm layers instead of the paper's post-norm.

    Not streamable (``stream_note``); ``forward_frames``, ``init_state`` and ``step`` raise
    KwsError. ``forward`` gives clip logits (batch, num_classes).
    """

    streamable = False
    stream_note = STREAM_NOTE

    def __init__(self, num_classes: int, in_features: int = 40, num_frames: int = CLIP_FRAMES,
                 dim: int = 64, depth: int = 12, heads: int = 1, mlp_dim: int = 256,
                 dropout: float = 0.0, prenorm: bool = False):
        encoder = KWTEncoder(in_features, num_frames, dim, depth, heads, mlp_dim, dropout,
                             prenorm)
        super().__init__(encoder, nn.Linear(dim, num_classes), in_features=in_features,
                         input_kind="1d", pool="last")
        self.num_classes, self.num_frames = num_classes, num_frames
        self.dim, self.depth, self.heads, self.mlp_dim = dim, depth, heads, mlp_dim
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=INIT_STD, a=-2 * INIT_STD, b=2 * INIT_STD)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for p in (self.body.cls_token, self.body.pos_embed):
            nn.init.trunc_normal_(p, std=INIT_STD, a=-2 * INIT_STD, b=2 * INIT_STD)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Clip logits (batch, num_classes) from (batch, in_features, num_frames) features."""
        self._check(x)
        if not torch.jit.is_tracing() and x.shape[-1] != self.num_frames:
            raise KwsError(
                f"{self.model_name}: takes exactly {self.num_frames} frames (its position "
                f"embedding has one entry per frame), got {x.shape[-1]}; crop/pad the clip or "
                f"set model.args.num_frames={x.shape[-1]}")
        return super().forward(x)

    def no_weight_decay(self) -> set[str]:
        """Parameter names the authors exempt from weight decay besides norms and biases
        (the timm convention; an optimizer may honour it)."""
        return {"body.cls_token", "body.pos_embed"}

    def _refuse(self, what: str):
        raise KwsError(f"{self.model_name} cannot {what}: {self.stream_note}")

    def forward_frames(self, x: torch.Tensor, window: int | None = None) -> torch.Tensor:
        """Not available: the model only scores whole ``num_frames`` windows (KwsError)."""
        self._refuse("score frame by frame")

    def step(self, x: torch.Tensor, state):
        """Not available (KwsError): see ``stream_note``."""
        self._refuse("stream")


def _published(acc_v1: float, acc_v2_12: float, acc_v2_35: float) -> dict:
    return {"params": 607e3, "macs": None, "acc_v1": acc_v1, "acc_v2": acc_v2_12,
            "acc_v2_35": acc_v2_35,
            "source": "arXiv:2104.00769 results table (GSC v1-12, v2-12, v2-35; mean of the "
                      "authors' runs, no distillation); "
                      "params: the authors' model summary, 607,308 for 12 classes",
            "note": "macs not reported in the paper"}


@register_model("kwt1", family="kwt", paper=PAPER, input="1d", frontend=FRONTEND,
                published=_published(97.26, 98.08, 96.95))
def kwt1(num_classes: int = 12, in_features: int = 40, dropout: float = 0.0,
         num_frames: int = CLIP_FRAMES, prenorm: bool = False) -> KWT:
    """KWT-1: 12 layers, dim 64, 1 head, MLP 256 (607.3 K params for 12 classes)."""
    name = "kwt1"
    check_positive_int(name, "num_classes", num_classes)
    check_positive_int(name, "in_features", in_features)
    check_positive_int(name, "num_frames", num_frames)
    dropout = check_probability(name, "dropout", dropout)
    if not isinstance(prenorm, bool):
        raise KwsError(f"{name}: prenorm must be true or false, got {prenorm!r}")
    return KWT(num_classes, in_features, num_frames, 64, 12, 1, 256, dropout, prenorm)
