"""CRNN with GRU and attention: the base model of the "streaming KWS + 10x compression"
homework (seed 004), after Shan et al. 2018, "Attention-based End-to-End Models for
Small-Footprint Keyword Spotting", Interspeech 2018, arXiv:1803.10916.

    40 log-mel x T frames
    conv 2-D, 8 channels, kernel 5 x 20 (freq x time), stride 2 x 8, no freq padding
        -> (8, 18, T/8) flattened to 144 channels per frame
    GRU, 2 layers, hidden 64, unidirectional (dropout 0.1 between layers)
    attention pooling over time: e_t = w^T tanh(W h_t + b) + c, softmax over t, sum_t a_t h_t
    linear -> classes

70,443 trainable parameters for the homework's 2 classes (71,093 for 12). ``channels`` and
``hidden`` scale it (the compression issue shrinks it ~10x: e.g. channels=4, hidden=16).

Choices (the homework leaves these open or they differ from its notebook):
- The conv keeps its bias and has no BatchNorm or activation: its output goes straight into
  the GRU, as in the notebook.
- Time padding: the notebook's conv is 'valid' (11 frames per 101). Here it is padded so the
  frame grid is kwskit's (ceil(T / 8) frames): ``causal=True`` (default) pads the 19 past
  frames, giving a model with zero look-ahead -- the GRU is causal anyway; ``causal=False``
  centres the 20-frame kernel (10 frames = 100 ms look-ahead).
- ``dropout`` is the GRU's inter-layer dropout (the model's only dropout); the head is a
  plain linear layer.

Streaming: the conv keeps its last 19 input frames, the GRU carries its hidden state across
chunks (``StreamGRU``), and the attention pools the last ``window`` GRU frames (the
homework's ``max_window_length``, in body frames of 80 ms; pass it to ``init_state`` /
``forward_frames``). Chunked streaming equals ``forward_frames`` frame for frame. Note the
GRU itself never forgets: its state summarises everything since the stream started, as the
homework's "share hidden state between steps" asks.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from kwskit.errors import KwsError
from kwskit.layers import StreamClassifier, StreamConv2d, StreamSequential
from kwskit.layers.recurrent import AttentionPool, StreamGRU
from kwskit.models.registry import check_positive_int, check_probability, register_model

PAPER = ("Shan et al. 2018, Attention-based End-to-End Models for Small-Footprint Keyword "
         "Spotting, arXiv:1803.10916 (CRNN base model of the streaming-KWS homework)")
# The homework's torchaudio MelSpectrogram: n_fft = win = 400 (25 ms), hop 160 (10 ms),
# 40 mels, log(clamp(x, 1e-9)). kwskit frames with center=False: 98 frames per second.
FRONTEND = {"type": "logmel", "n_mels": 40, "n_fft": 400, "win_length": 400,
            "hop_length": 160, "f_min": 0.0, "log_offset": 1e-9}
PUBLISHED = {"params": 70_443, "macs": None, "acc_v1": None, "acc_v2": None,
             "au_fa_fr": 2e-4,
             "source": "seed 004 homework (darya-baranovskaya/keyword_spotting README): base "
                       "CRNN, keyword 'sheila' vs rest (2 classes), area under FA/FR ~0.0002",
             "note": "params for 2 classes; the homework reports no accuracy"}


class FlattenFreq(nn.Module):
    """(batch, channels, freq, frames) -> (batch, channels * freq, frames); frame-wise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1, 2)


class CRNN(StreamClassifier):
    """CRNN on (batch, 1, in_features, frames) log-mel features.

    Args:
        num_classes: output classes.
        in_features: mel bins (F >= the conv's frequency kernel).
        channels: conv output channels (8).
        hidden: GRU hidden size (64); the attention's projection has the same width.
        num_layers: stacked GRU layers (2).
        kernel, stride: the conv's (freq, time) kernel and stride ((5, 20), (2, 8)).
        dropout: dropout between GRU layers (0.1 in the homework).
        causal: causal time padding for the conv (zero look-ahead), else centred.
    """

    def __init__(self, num_classes: int, in_features: int = 40, channels: int = 8,
                 hidden: int = 64, num_layers: int = 2, kernel=(5, 20), stride=(2, 8),
                 dropout: float = 0.1, causal: bool = True):
        kf, sf = int(kernel[0]), int(stride[0])
        if in_features < kf:
            raise KwsError(f"CRNN: in_features={in_features} is smaller than the conv's "
                           f"frequency kernel {kf}")
        freq_out = (in_features - kf) // sf + 1
        body = StreamSequential(OrderedDict(
            conv=StreamConv2d(1, channels, tuple(kernel), stride=tuple(stride),
                              padding="causal" if causal else "same", freq_padding="valid"),
            flatten=FlattenFreq(),
            gru=StreamGRU(channels * freq_out, hidden, num_layers, dropout=dropout),
        ))
        super().__init__(body, nn.Linear(hidden, num_classes), in_features=in_features,
                         input_kind="2d")
        self.pool = AttentionPool(hidden)  # replaces the base class's TimePool
        self.num_classes, self.hidden, self.channels = num_classes, hidden, channels


def _pair(model: str, name: str, value) -> tuple[int, int]:
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)):
        raise KwsError(f"{model}: {name} must be a (freq, time) pair of positive integers, "
                       f"got {value!r}")
    return int(value[0]), int(value[1])


@register_model("crnn", family="crnn", paper=PAPER, input="2d", frontend=FRONTEND,
                published=PUBLISHED)
def crnn(num_classes: int = 12, in_features: int = 40, dropout: float = 0.1,
         channels: int = 8, hidden: int = 64, num_layers: int = 2, kernel=(5, 20),
         stride=(2, 8), causal: bool = True) -> CRNN:
    """CRNN-GRU-attention: conv 8 @ 5x20 / 2x8, GRU 2 x 64, attention, linear (~70 K)."""
    name = "crnn"
    check_positive_int(name, "num_classes", num_classes)
    check_positive_int(name, "in_features", in_features)
    check_positive_int(name, "channels", channels)
    check_positive_int(name, "hidden", hidden)
    check_positive_int(name, "num_layers", num_layers)
    dropout = check_probability(name, "dropout", dropout)
    return CRNN(num_classes, in_features, channels, hidden, num_layers,
                _pair(name, "kernel", kernel), _pair(name, "stride", stride), dropout,
                bool(causal))
