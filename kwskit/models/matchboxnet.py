"""MatchboxNet: 1-D time-channel separable convolutions (a small QuartzNet for commands).

Majumdar, Ginsburg, "MatchboxNet: 1D Time-Channel Separable Convolutional Neural Network
Architecture for Speech Commands Recognition", Interspeech 2020, arXiv:2004.08531 (Table 1:
the BxRxC layout), checked against the authors' released NeMo configs. Input: 64 MFCC x T
frames (25 ms window, 10 ms hop) as 1-D features (batch, 64, frames): MFCC bins are channels.

MatchboxNet-BxRxC (here 3x1x64), every conv 'same'-padded in time, stride 1 everywhere
(the released configs keep the prologue at stride 1; QuartzNet's stride 2 is an ASR choice):

    Conv1 (prologue)   separable k=11, 128 ch, BN, ReLU, dropout
    B blocks           block b (b = 1..B): R sub-blocks of C channels, kernel 11 + 2b
                       (13, 15, 17 for B = 3); a sub-block is depthwise k + pointwise 1x1 + BN
                       (+ ReLU + dropout, except the last); the block adds a 1x1 conv + BN
                       shortcut of its input, then ReLU + dropout
    Conv2 (epilogue)   separable k=29, dilation 2, 128 ch, BN, ReLU, dropout
    Conv3              1x1, 128 ch, BN, ReLU, dropout
    Conv4              global average pool over time, then a 1x1 conv (= Linear) -> classes

Convolutions have no bias (the BN after each supplies it); BN uses eps 1e-3 and conv weights
Xavier-uniform init, as in the authors' NeMo release. This gives 77.2 K trainable parameters
for 30 classes (GSC v1, all words), the paper's "77 K"; 77.9 K for 35 classes, 74.9 K for 12.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from kwskit.errors import KwsError
from kwskit.layers import StreamClassifier, StreamConv1d, StreamSequential, StreamSum
from kwskit.models.registry import check_positive_int, check_probability, register_model

PAPER = ("Majumdar & Ginsburg 2020, MatchboxNet: 1D Time-Channel Separable Convolutional "
         "Neural Network Architecture for Speech Commands Recognition, arXiv:2004.08531")
# NeMo's MatchboxNet recipe: 64 MFCC of 64 mel bands, 25 ms Hann window, 10 ms hop, 512-pt FFT
# (torchaudio's MFCC: log(mel + 1e-6), orthonormal DCT, mel bands from 0 Hz)
FRONTEND = {"type": "mfcc", "n_mfcc": 64, "n_mels": 64, "win_length": 400, "hop_length": 160,
            "n_fft": 512, "f_min": 0.0}
BN_EPS = 1e-3
PROLOGUE = (11, 128)  # kernel, channels
EPILOGUE = (29, 2, 128)  # kernel, dilation, channels
HEAD_CHANNELS = 128


def block_kernels(blocks: int) -> list[int]:
    """Kernel of each block: 13, 15, 17, ... (Table 1: 13/15/17 for B=3; 6xR uses up to 23)."""
    return [11 + 2 * b for b in range(1, blocks + 1)]


def _separable(in_ch: int, out_ch: int, kernel: int, dilation: int, padding: str) -> list:
    """Time-channel separable conv: depthwise over time, then pointwise over channels."""
    return [StreamConv1d(in_ch, in_ch, kernel, dilation=dilation, groups=in_ch, bias=False,
                         padding=padding),
            nn.Conv1d(in_ch, out_ch, 1, bias=False)]


def _act(dropout: float) -> list:
    return [nn.ReLU(), nn.Dropout(dropout)]


def conv_layer(in_ch: int, out_ch: int, kernel: int, dilation: int, dropout: float,
               padding: str) -> StreamSequential:
    """Prologue / epilogue layer: separable conv (plain 1x1 when kernel is 1) + BN + ReLU +
    dropout."""
    if kernel == 1:
        convs = [nn.Conv1d(in_ch, out_ch, 1, bias=False)]
    else:
        convs = _separable(in_ch, out_ch, kernel, dilation, padding)
    return StreamSequential(*convs, nn.BatchNorm1d(out_ch, eps=BN_EPS), *_act(dropout))


def residual_block(in_ch: int, out_ch: int, kernel: int, repeat: int, dropout: float,
                   padding: str) -> StreamSequential:
    """One MatchboxNet block: R separable sub-blocks, plus a 1x1 conv + BN shortcut."""
    main = []
    ch = in_ch
    for r in range(repeat):
        main += _separable(ch, out_ch, kernel, 1, padding) + [nn.BatchNorm1d(out_ch, eps=BN_EPS)]
        if r < repeat - 1:  # the last sub-block's ReLU/dropout come after the residual add
            main += _act(dropout)
        ch = out_ch
    shortcut = nn.Sequential(nn.Conv1d(in_ch, out_ch, 1, bias=False),
                             nn.BatchNorm1d(out_ch, eps=BN_EPS))
    return StreamSequential(OrderedDict(
        sum=StreamSum(shortcut, StreamSequential(*main)),  # the sum delays the 1x1 shortcut
        relu=nn.ReLU(), drop=nn.Dropout(dropout)))


class MatchboxNet(StreamClassifier):
    """MatchboxNet-BxRxC on (batch, in_features, frames) features.

    Args:
        num_classes: output classes.
        in_features: MFCC bins (F), the prologue's input channels (64 in the paper).
        blocks: B, residual blocks (kernels 13, 15, 17, ...).
        repeat: R, separable sub-blocks per block.
        channels: C, channels inside the blocks.
        dropout: dropout after every ReLU (0.0 in the authors' released recipe).
        causal: pad time causally (no look-ahead) instead of 'same'.

    Time is never strided, so the output frame rate equals the input's (10 ms); the 'same'
    look-ahead is the sum of the half-kernels: 5 + 6 + 7 + 8 + 28 = 54 frames for 3x1x64.
    """

    def __init__(self, num_classes: int, in_features: int = 64, blocks: int = 3,
                 repeat: int = 1, channels: int = 64, dropout: float = 0.0,
                 causal: bool = False):
        pad = "causal" if causal else "same"
        k0, c0 = PROLOGUE
        layers = OrderedDict(prologue=conv_layer(in_features, c0, k0, 1, dropout, pad))
        in_ch = c0
        for b, kernel in enumerate(block_kernels(blocks), start=1):
            layers[f"block{b}"] = residual_block(in_ch, channels, kernel, repeat, dropout, pad)
            in_ch = channels
        k2, d2, c2 = EPILOGUE
        layers["epilogue"] = conv_layer(in_ch, c2, k2, d2, dropout, pad)
        layers["conv3"] = conv_layer(c2, HEAD_CHANNELS, 1, 1, dropout, pad)
        super().__init__(StreamSequential(layers), nn.Linear(HEAD_CHANNELS, num_classes),
                         in_features=in_features, input_kind="1d")
        self.num_classes = num_classes
        self.blocks, self.repeat, self.channels = blocks, repeat, channels
        self._init_weights()

    def _init_weights(self) -> None:
        # Xavier-uniform convs and classifier, zero bias (the authors' NeMo default)
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)


def _published() -> dict:
    # Table 3 of arXiv:2004.08531; v1 = GSC v1 all 30 words, v2 = GSC v2 all 35 words
    return {"params": 77e3, "macs": None, "acc_v1": 97.21, "acc_v2": 97.48,
            "source": "arXiv:2004.08531 Table 3 (v1: 30 classes, v2: 35 classes); "
                      "params counted with the 30-class head",
            "note": "macs not reported in the paper; the accuracies could not be checked against "
                    "the paper's table offline (only its abstract was reachable): unverified"}


@register_model("matchboxnet_3x1x64", family="matchboxnet", paper=PAPER, input="1d",
                frontend=FRONTEND, published=_published())
def matchboxnet_3x1x64(num_classes: int = 12, in_features: int = 64, dropout: float = 0.0,
                       causal: bool = False) -> MatchboxNet:
    """MatchboxNet-3x1x64: 3 blocks x 1 sub-block x 64 channels (77.2 K params, 30 classes)."""
    name = "matchboxnet_3x1x64"
    check_positive_int(name, "num_classes", num_classes)
    check_positive_int(name, "in_features", in_features)
    dropout = check_probability(name, "dropout", dropout)
    if not isinstance(causal, bool):
        raise KwsError(f"{name}: causal must be true or false, got {causal!r}")
    return MatchboxNet(num_classes, in_features, 3, 1, 64, dropout, causal)
