"""Res15: a deep residual network with dilated convolutions for keyword spotting.

Tang, Lin, "Deep Residual Learning for Small-Footprint Keyword Spotting", ICASSP 2018,
arXiv:1710.10361 (Fig. 1 and the res15 rows of its tables).

Input: 40 MFCCs x T frames (30 ms window, 10 ms hop, 20 Hz - 4 kHz; paper section 3) as a
(batch, 1, 40, T) image. 45 channels everywhere, 3x3 kernels, no biases:

    conv0 3x3 -> ReLU                                              s_0
    6 residual blocks:  s_k = s_{k-1} + ReLU(conv(BN(ReLU(conv(BN(s_{k-1}))))))
    BN -> conv13 3x3 -> ReLU -> BN -> global average pool -> FC

Layer i = 1..13 (after conv0) is dilated by 2^floor((i-1)/3) along BOTH axes (1, 1, 1, 2, 2,
2, 4, 4, 4, 8, 8, 8, 16) with 'same' padding, so frequency keeps its 40 bins and the receptive
field covers the whole clip. BatchNorm has no affine parameters (paper section 3.1). The BN
placement follows the authors' code (castorini/honk): the BN that follows a block's sum
feeds the next block's convolutions, while the shortcut carries the sum itself (pre-BN); the
first block's input (s_0) is not normalised.

Parameters: 405 + 13 * 18,225 (+ FC) = 237,882 for 12 classes (paper: 238 K). Stride 1 in
time; 'same' padding looks ahead 1 + sum(dilations) = 62 frames, ``causal=True`` none.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from kwskit.layers import FreqMean, Residual, StreamClassifier, StreamConv2d, StreamSequential
from kwskit.models.registry import check_positive_int, check_probability, register_model

PAPER = ("Tang & Lin 2018, Deep Residual Learning for Small-Footprint Keyword Spotting, "
         "arXiv:1710.10361")
# Paper section 3 (and honk): band-pass 20 Hz - 4 kHz, 40 MFCCs, 30 ms window, 10 ms shift.
FRONTEND = {"type": "mfcc", "n_mfcc": 40, "n_mels": 40, "win_length": 480, "hop_length": 160,
            "n_fft": 512, "f_min": 20.0, "f_max": 4000.0}


def dilation_of(layer: int) -> int:
    """Dilation of conv layer ``layer`` = 1..n (conv0 is undilated): 2^floor((layer-1)/3)."""
    return 2 ** ((layer - 1) // 3)


def _conv(channels: int, layer: int, padding: str) -> StreamConv2d:
    d = dilation_of(layer)
    return StreamConv2d(channels, channels, 3, dilation=d, bias=False, padding=padding,
                        freq_padding="same")


class Res15(StreamClassifier):
    """Tang & Lin's ResNet on (batch, 1, in_features, frames) features.

    Args:
        num_classes: output classes.
        in_features: MFCC / mel bins (F); 'same' frequency padding keeps any F.
        channels: feature maps in every layer (45 for res15).
        layers: dilated 3x3 layers after conv0 (13 for res15); pairs form residual blocks,
            an odd last layer is the plain tail conv.
        dropout: dropout before the FC (the paper uses none).
        causal: pad time causally (no look-ahead) instead of 'same'.
    """

    def __init__(self, num_classes: int, in_features: int = 40, channels: int = 45,
                 layers: int = 13, dropout: float = 0.0, causal: bool = False):
        pad = "causal" if causal else "same"
        body = OrderedDict(
            conv0=StreamConv2d(1, channels, 3, bias=False, padding=pad),
            relu0=nn.ReLU(),
        )
        for k in range(1, layers // 2 + 1):
            a, b = 2 * k - 1, 2 * k  # layer numbers of the block's two convs
            res = OrderedDict()
            if k > 1:
                res[f"bn{a - 1}"] = nn.BatchNorm2d(channels, affine=False)
            res[f"conv{a}"] = _conv(channels, a, pad)
            res[f"relu{a}"] = nn.ReLU()
            res[f"bn{a}"] = nn.BatchNorm2d(channels, affine=False)
            res[f"conv{b}"] = _conv(channels, b, pad)
            res[f"relu{b}"] = nn.ReLU()
            body[f"block{k}"] = Residual(StreamSequential(res))
        if layers % 2:  # the tail: BN, one more dilated conv, ReLU, BN
            if layers > 1:
                body[f"bn{layers - 1}"] = nn.BatchNorm2d(channels, affine=False)
            body[f"conv{layers}"] = _conv(channels, layers, pad)
            body[f"relu{layers}"] = nn.ReLU()
        body[f"bn{layers}"] = nn.BatchNorm2d(channels, affine=False)
        body["freq_mean"] = FreqMean()  # with the time pool: the global average pool
        head = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, num_classes))
        super().__init__(StreamSequential(body), head, in_features=in_features, input_kind="2d")
        self.num_classes, self.channels, self.layers = num_classes, channels, layers


@register_model("res15", family="res15", paper=PAPER, input="2d", frontend=FRONTEND,
                published={"params": 238e3, "macs": 894e6, "acc_v1": 95.8, "acc_v2": None,
                           "source": "arXiv:1710.10361 results table (GSC v1, 12 classes; "
                                     "multiplies = MACs)"})
def res15(num_classes: int = 12, in_features: int = 40, dropout: float = 0.0,
          causal: bool = False) -> Res15:
    """res15: 45 channels, 13 dilated 3x3 layers, 6 residual blocks (237.9 K params)."""
    check_positive_int("res15", "num_classes", num_classes)
    check_positive_int("res15", "in_features", in_features)
    return Res15(num_classes, in_features, 45, 13,
                 check_probability("res15", "dropout", dropout), bool(causal))
