"""DS-CNN: depthwise-separable CNN for keyword spotting.

Zhang, Suda, Lai, Chandra, "Hello Edge: Keyword Spotting on Microcontrollers", 2017,
arXiv:1711.07128. Layer sizes follow the paper's S/M/L models as released in Arm's
ML-KWS-for-MCU training recipes (model_size_info):

    S: conv 64 @ 10x4 (time x freq), stride 2x2;  4 DS layers of 64, all stride 1
    M: conv 172 @ 10x4, stride 2x1;  4 DS layers of 172, the first stride 2x2
    L: conv 276 @ 10x4, stride 2x1;  5 DS layers of 276, the first stride 2x2

Each DS layer is depthwise 3x3 conv -> BN -> ReLU -> pointwise 1x1 conv -> BN -> ReLU; then
global average pooling and one fully connected layer. Input: 10 MFCC x 49 frames (40 ms
window, 20 ms hop). Convs have no bias (the BN after each supplies it), which gives the same
trainable-parameter count as the original TF-slim model (conv bias + BN beta, no gamma).

Published "memory" figures (38.6 / 189.2 / 497.6 KB) are NOT parameter counts: they are
8-bit weights with BN folded into the conv biases plus the two largest activation buffers
(tests/test_models.py reproduces them exactly). Trainable parameters are 23.2 K / 136.6 K /
413.7 K for 12 classes.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from kwskit.layers import FreqMean, StreamClassifier, StreamConv2d, StreamSequential
from kwskit.models.registry import check_positive_int, check_probability, register_model

PAPER = "Zhang et al. 2017, Hello Edge: Keyword Spotting on Microcontrollers, arXiv:1711.07128"
# Arm ML-KWS-for-MCU recipe: 10 MFCC from 40 ms windows every 20 ms (49 frames per second)
FRONTEND = {"type": "mfcc", "n_mfcc": 10, "win_length": 640, "hop_length": 320, "n_fft": 1024}
_SOURCE = "Hello Edge (arXiv:1711.07128), summary of best models; v1 = GSC v1, 12 classes"
_NOTE = ("memory_kb = 8-bit weights (BN folded) + activations, not a parameter count; "
         "macs = ops / 2")


def _published(memory_kb: float, ops: float, acc_v1: float) -> dict:
    return {"params": None, "memory_kb": memory_kb, "ops": ops, "macs": ops / 2,
            "acc_v1": acc_v1, "acc_v2": None, "source": _SOURCE, "note": _NOTE}


def _ds_layer(channels: int, stride, padding: str) -> StreamSequential:
    """Depthwise 3x3 (freq x time) -> BN -> ReLU -> pointwise 1x1 -> BN -> ReLU."""
    return StreamSequential(OrderedDict(
        dw=StreamConv2d(channels, channels, 3, stride=stride, groups=channels, bias=False,
                        padding=padding),
        dw_bn=nn.BatchNorm2d(channels), dw_relu=nn.ReLU(),
        pw=nn.Conv2d(channels, channels, 1, bias=False),
        pw_bn=nn.BatchNorm2d(channels), pw_relu=nn.ReLU(),
    ))


class DSCNN(StreamClassifier):
    """DS-CNN on (batch, 1, in_features, frames) features.

    Args:
        num_classes: output classes.
        in_features: MFCC / mel bins (F).
        channels: filters in every layer.
        first_stride: (freq, time) stride of the first 10x4 conv.
        ds_strides: (freq, time) stride of each depthwise layer (their count = DS layers).
        dropout: dropout before the classifier (0 in the paper).
        causal: pad time causally (no look-ahead) instead of 'same'.
    """

    def __init__(self, num_classes: int, in_features: int = 10, channels: int = 64,
                 first_stride=(2, 2), ds_strides=((1, 1),) * 4, dropout: float = 0.0,
                 causal: bool = False):
        pad = "causal" if causal else "same"
        layers = OrderedDict(
            conv=StreamConv2d(1, channels, (4, 10), stride=first_stride, bias=False, padding=pad),
            bn=nn.BatchNorm2d(channels), relu=nn.ReLU(),
        )
        for i, s in enumerate(ds_strides, start=1):
            layers[f"ds{i}"] = _ds_layer(channels, s, pad)
        layers["freq_mean"] = FreqMean()
        head = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, num_classes))
        super().__init__(StreamSequential(layers), head, in_features=in_features, input_kind="2d")
        self.num_classes = num_classes


def _build(name: str, num_classes, in_features, dropout, causal, channels, first_stride,
           ds_strides) -> DSCNN:
    check_positive_int(name, "num_classes", num_classes)
    check_positive_int(name, "in_features", in_features)
    dropout = check_probability(name, "dropout", dropout)
    return DSCNN(num_classes, in_features, channels, first_stride, ds_strides, dropout,
                 bool(causal))


@register_model("dscnn_s", family="dscnn", paper=PAPER, input="2d", frontend=FRONTEND,
                published=_published(38.6, 5.4e6, 94.4))
def dscnn_s(num_classes: int = 12, in_features: int = 10, dropout: float = 0.0,
            causal: bool = False) -> DSCNN:
    """DS-CNN-S: 64 channels, 4 DS layers (23.2 K params, 2.66 M MACs for 12 classes)."""
    return _build("dscnn_s", num_classes, in_features, dropout, causal, 64, (2, 2), [(1, 1)] * 4)


@register_model("dscnn_m", family="dscnn", paper=PAPER, input="2d", frontend=FRONTEND,
                published=_published(189.2, 19.8e6, 94.9))
def dscnn_m(num_classes: int = 12, in_features: int = 10, dropout: float = 0.0,
            causal: bool = False) -> DSCNN:
    """DS-CNN-M: 172 channels, 4 DS layers (136.6 K params, 9.8 M MACs for 12 classes)."""
    return _build("dscnn_m", num_classes, in_features, dropout, causal, 172, (1, 2),
                  [(2, 2)] + [(1, 1)] * 3)


@register_model("dscnn_l", family="dscnn", paper=PAPER, input="2d", frontend=FRONTEND,
                published=_published(497.6, 56.9e6, 95.4))
def dscnn_l(num_classes: int = 12, in_features: int = 10, dropout: float = 0.0,
            causal: bool = False) -> DSCNN:
    """DS-CNN-L: 276 channels, 5 DS layers (413.7 K params, 28.3 M MACs for 12 classes)."""
    return _build("dscnn_l", num_classes, in_features, dropout, causal, 276, (1, 2),
                  [(2, 2)] + [(1, 1)] * 4)
