"""SincConv + (G)DSConv: keyword spotting straight from raw audio.

Mittermaier, Kürzinger, Waschneck, Rigoll, "Small-Footprint Keyword Spotting on Raw Audio Data
with Sinc-Convolutions", ICASSP 2020, arXiv:1911.02086. Input: the 16 kHz waveform itself, no
front-end. Layout (the DSConv size; its parameter table is reproduced exactly, see the tests):

    SincConv: 40 band-pass filters, 101 taps, stride 8 (2000 frames per second)
      -> log(|x| + 1) -> BN -> avg pool 2
    DS block 1: depthwise k=25, stride 2 -> pointwise 40 -> C -> ReLU -> BN -> avg pool 2
                -> spatial dropout
    DS blocks 2-5: depthwise k=9 -> pointwise C -> C -> ReLU -> BN -> avg pool 2 -> dropout
    global average pool -> linear C -> classes

DSConv: C = 160, plain pointwise convs (120,732 trainable params for 12 classes).
GDSConv: C = 162 and the pointwise convs of blocks 2-5 split into 2, 3, 2, 3 groups (162 is
divisible by both); each grouped conv is followed by a channel shuffle (ShuffleNet,
arXiv:1707.01083) so the next block's groups each see every previous group. 62,286 params
(the paper's "62k"). The shuffle is a fixed permutation of channels -- frame-wise, so it
streams. Depthwise and pointwise convs carry biases, BN follows the ReLU (the order of the
layer table the seed reproduction prints: dw, pw, act, bn).

Time: stride 8 x 2 (pool) x 2 (dw) x 2^5 (pools) = 1024 samples per output frame (64 ms);
a 1-s clip gives 16 frames. With 'same' padding the look-ahead is 5082 samples (318 ms); with
``causal=True`` it is 0.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from kwskit.errors import KwsError
from kwskit.layers import StreamClassifier, StreamConv1d, StreamPool1d, StreamSequential
from kwskit.layers.sinc import LogCompression, SincConv1d
from kwskit.models.registry import check_positive_int, check_probability, register_model

PAPER = ("Mittermaier et al. 2020, Small-Footprint Keyword Spotting on Raw Audio Data with "
         "Sinc-Convolutions, arXiv:1911.02086")
FRONTEND = {"type": "none"}
SINC_FILTERS, SINC_TAPS, SINC_STRIDE = 40, 101, 8
DS_KERNELS = (25, 9, 9, 9, 9)
DS_STRIDES = (2, 1, 1, 1, 1)
POOL = 2


class ChannelShuffle(nn.Module):
    """Interleaves ``groups`` channel groups of (batch, channels, frames): channel
    ``g * (C/groups) + i`` moves to ``i * groups + g``. Frame-wise and parameter-free."""

    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x):
        b, c, t = x.shape
        return x.reshape(b, self.groups, c // self.groups, t).transpose(1, 2).reshape(b, c, t)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


def ds_block(in_ch: int, out_ch: int, kernel: int, stride: int, groups: int, shuffle: bool,
             dropout: float, padding: str) -> StreamSequential:
    """(G)DSConv block: depthwise -> (grouped) pointwise [-> shuffle] -> ReLU -> BN -> pool ->
    spatial dropout."""
    layers = OrderedDict(
        dw=StreamConv1d(in_ch, in_ch, kernel, stride=stride, groups=in_ch, padding=padding),
        pw=nn.Conv1d(in_ch, out_ch, 1, groups=groups),
    )
    if shuffle and groups > 1:
        layers["shuffle"] = ChannelShuffle(groups)
    layers["relu"] = nn.ReLU()
    layers["bn"] = nn.BatchNorm1d(out_ch)
    layers["pool"] = StreamPool1d("avg", POOL, padding=padding)
    layers["drop"] = nn.Dropout1d(dropout)  # drops whole channels ("spatial" dropout)
    return StreamSequential(layers)


class SincConvKWS(StreamClassifier):
    """SincConv front layer + 5 (G)DSConv blocks on raw audio (batch, samples).

    Args:
        num_classes: output classes.
        channels: channels of the DS blocks (160 DSConv, 162 GDSConv).
        groups: pointwise-conv groups of each of the 5 blocks (each must divide ``channels``).
        shuffle: channel shuffle after every grouped pointwise conv.
        dropout: spatial dropout after every block (0.1).
        sample_rate: input rate [Hz] for the sinc filters' initial bands.
        causal: pad time causally (no look-ahead) instead of 'same'.

    Also accepts (batch, 1, samples), which is what ``KwsPipeline`` passes for "wave" models.
    """

    def __init__(self, num_classes: int, channels: int = 160, groups=(1, 1, 1, 1, 1),
                 shuffle: bool = True, dropout: float = 0.1, sample_rate: int = 16000,
                 causal: bool = False):
        if len(groups) != len(DS_KERNELS) or any(channels % g for g in groups):
            raise KwsError(f"groups {tuple(groups)}: need {len(DS_KERNELS)} values, each "
                           f"dividing channels={channels}")
        pad = "causal" if causal else "same"
        layers = OrderedDict(
            sinc=SincConv1d(SINC_FILTERS, SINC_TAPS, SINC_STRIDE, sample_rate=sample_rate,
                            padding=pad),
            log=LogCompression(),
            bn=nn.BatchNorm1d(SINC_FILTERS),
            pool=StreamPool1d("avg", POOL, padding=pad),
        )
        in_ch = SINC_FILTERS
        for i, (k, s, g) in enumerate(zip(DS_KERNELS, DS_STRIDES, groups), start=1):
            layers[f"block{i}"] = ds_block(in_ch, channels, k, s, g, shuffle, dropout, pad)
            in_ch = channels
        super().__init__(StreamSequential(layers), nn.Linear(channels, num_classes),
                         in_features=1, input_kind="wave")
        self.num_classes, self.channels, self.groups = num_classes, channels, tuple(groups)


def _build(name: str, num_classes, in_features, dropout, causal, sample_rate, channels, groups,
           shuffle) -> SincConvKWS:
    check_positive_int(name, "num_classes", num_classes)
    check_positive_int(name, "sample_rate", sample_rate)
    if in_features != 1:
        raise KwsError(f"{name}: in_features must be 1 (the model takes the raw waveform), "
                       f"got {in_features!r}")
    dropout = check_probability(name, "dropout", dropout)
    return SincConvKWS(num_classes, channels, groups, bool(shuffle), dropout, sample_rate,
                       bool(causal))


_SOURCE = "arXiv:1911.02086 (GSC v1, 12 classes, test set)"


@register_model("sincconv_dsconv", family="sincconv", paper=PAPER, input="wave",
                frontend=FRONTEND,
                published={"params": 122e3, "macs": None, "acc_v1": 96.6, "acc_v2": None,
                           "source": _SOURCE,
                           "note": "seed reproduction: 120,732 trainable params, 94.65 %; the paper's "
                                   "DSConv accuracy (96.6 %) could not be checked offline: "
                                   "unverified (its abstract gives GDSConv's 96.4 %)"})
def sincconv_dsconv(num_classes: int = 12, in_features: int = 1, dropout: float = 0.1,
                    causal: bool = False, sample_rate: int = 16000) -> SincConvKWS:
    """SincConv + DSConv: 160 channels (120,732 params for 12 classes)."""
    return _build("sincconv_dsconv", num_classes, in_features, dropout, causal, sample_rate,
                  160, (1, 1, 1, 1, 1), False)


@register_model("sincconv_gdsconv", family="sincconv", paper=PAPER, input="wave",
                frontend=FRONTEND,
                published={"params": 62e3, "macs": None, "acc_v1": 96.4, "acc_v2": None,
                           "source": _SOURCE})
def sincconv_gdsconv(num_classes: int = 12, in_features: int = 1, dropout: float = 0.1,
                     causal: bool = False, sample_rate: int = 16000,
                     shuffle: bool = True) -> SincConvKWS:
    """SincConv + GDSConv: 162 channels, pointwise groups 1, 2, 3, 2, 3 (62,286 params)."""
    return _build("sincconv_gdsconv", num_classes, in_features, dropout, causal, sample_rate,
                  162, (1, 2, 3, 2, 3), shuffle)
