"""TC-ResNet: temporal-convolution ResNets for keyword spotting.

Choi, Seo, Shin, Byun, Kersner, Kim, Kim, Ha, "Temporal Convolution for Real-time Keyword
Spotting on Mobile Devices", Interspeech 2019, arXiv:1904.03814 (Fig. 3/4, Table 1).

The 40 MFCCs of each frame are the CHANNELS of a 1-D convolution over time, so every layer
sees the whole spectrum at once and the network stays shallow:

    conv k=3 -> 16w, BN, ReLU
    blocks: TC-ResNet8   3 blocks -> 24w, 32w, 48w        (each changes width, stride 2)
            TC-ResNet14  6 blocks -> 24w, 24w, 32w, 32w, 48w, 48w
    global average pool over time, dropout, FC

A block is ReLU(main(x) + shortcut(x)) with
    main     = conv k=9 (stride s) -> BN -> ReLU -> conv k=9 -> BN
    shortcut = identity                          when the width stays (s = 1)
               conv 1x1 stride 2 -> BN -> ReLU   when the width changes (s = 2)
as in the paper's Fig. 4 and the authors' released code (hyperconnect/TC-ResNet). Convs have
no bias (the BN after each supplies it). Where the paper is silent we follow the authors'
code: the first conv has BN + ReLU and dropout 0.5 sits before the FC. One deviation: our FC
keeps its bias (the released graph has none), +num_classes parameters.

Timing: the three stride-2 blocks decimate time by 8 (98 frames -> 13). With 'same' padding
the model looks ahead 85 (TC-ResNet8) or 197 (TC-ResNet14) input frames; ``causal=True``
pads causally instead (no look-ahead, same parameters). In streaming, the 1x1 strided
shortcut is ready 12 frames before the two k=9 convs of its block; ``StreamSum`` holds its
frames back until the main path catches up (tests/test_tcresnet_res15.py checks it).
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from kwskit.layers import (Identity, StreamClassifier, StreamConv1d, StreamSequential,
                           StreamSum)
from kwskit.models.registry import check_positive_int, check_probability, register_model

PAPER = ("Choi et al. 2019, Temporal Convolution for Real-time Keyword Spotting on Mobile "
         "Devices, arXiv:1904.03814")
# Paper section 4: 40 MFCCs from 30 ms windows every 10 ms (TensorFlow's Speech Commands
# front-end: 40 mel bands between 20 Hz and 4 kHz).
FRONTEND = {"type": "mfcc", "n_mfcc": 40, "n_mels": 40, "win_length": 480, "hop_length": 160,
            "n_fft": 512, "f_min": 20.0, "f_max": 4000.0}
BASE_CHANNELS = (16, 24, 32, 48)
FIRST_KERNEL, BLOCK_KERNEL = 3, 9


def tc_block(in_ch: int, out_ch: int, padding: str) -> StreamSequential:
    """One TC-ResNet block; stride 2 and a 1x1 projection shortcut when the width changes."""
    stride = 2 if in_ch != out_ch else 1
    main = StreamSequential(OrderedDict(
        conv1=StreamConv1d(in_ch, out_ch, BLOCK_KERNEL, stride=stride, bias=False,
                           padding=padding),
        bn1=nn.BatchNorm1d(out_ch), relu1=nn.ReLU(),
        conv2=StreamConv1d(out_ch, out_ch, BLOCK_KERNEL, bias=False, padding=padding),
        bn2=nn.BatchNorm1d(out_ch),
    ))
    if stride == 1:
        shortcut = Identity()
    else:
        # a 1x1 window: its output j is input frame 2j, the same frame the k=9 conv centres on
        shortcut = StreamSequential(OrderedDict(
            conv=StreamConv1d(in_ch, out_ch, 1, stride=2, bias=False, padding=padding),
            bn=nn.BatchNorm1d(out_ch), relu=nn.ReLU(),
        ))
    return StreamSequential(OrderedDict(sum=StreamSum(shortcut, main), relu=nn.ReLU()))


class TCResNet(StreamClassifier):
    """TC-ResNet on (batch, in_features, frames) MFCC features (input_kind "1d").

    Args:
        num_classes: output classes.
        in_features: MFCC coefficients per frame (the first conv's input channels).
        widths: output width of each block (before ``width`` scaling); a block whose width
            differs from its input's strides time by 2.
        width: width multiplier k (channels = int(c * k), as the authors' code rounds).
        dropout: dropout before the FC (0.5 in the authors' code).
        causal: pad time causally (no look-ahead) instead of 'same'.
    """

    def __init__(self, num_classes: int, in_features: int = 40,
                 widths=(24, 32, 48), width: float = 1.0, dropout: float = 0.5,
                 causal: bool = False):
        pad = "causal" if causal else "same"
        first = int(BASE_CHANNELS[0] * width)
        layers = OrderedDict(
            conv0=StreamConv1d(in_features, first, FIRST_KERNEL, bias=False, padding=pad),
            bn0=nn.BatchNorm1d(first), relu0=nn.ReLU(),
        )
        in_ch = first
        for i, c in enumerate(widths, start=1):
            out_ch = int(c * width)
            layers[f"block{i}"] = tc_block(in_ch, out_ch, pad)
            in_ch = out_ch
        head = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_ch, num_classes))
        super().__init__(StreamSequential(layers), head, in_features=in_features,
                         input_kind="1d")
        self.num_classes, self.width = num_classes, width


def _published(params: float, flops: float, acc_v1: float) -> dict:
    # Table 1 reports FLOPs; they are not 2 x our MACs (see README / tests), so kept as given.
    return {"params": params, "flops": flops, "macs": None, "acc_v1": acc_v1, "acc_v2": None,
            "source": "arXiv:1904.03814 Table 1 (GSC v1, 12 classes)",
            "note": "flops as published; our MACs for 98 frames differ (see tests)"}


_SIZES = {
    # name: (block widths, width multiplier, published)
    "tcresnet8": ((24, 32, 48), 1.0, _published(66e3, 1.12e6, 96.1)),
    "tcresnet14": ((24, 24, 32, 32, 48, 48), 1.0, _published(137e3, 2.61e6, 96.2)),
    "tcresnet14_1_5": ((24, 24, 32, 32, 48, 48), 1.5, _published(305e3, 5.76e6, 96.6)),
}


def _register(name: str):
    widths, width, published = _SIZES[name]

    @register_model(name, family="tcresnet", paper=PAPER, input="1d", frontend=FRONTEND,
                    published=published)
    def constructor(num_classes: int = 12, in_features: int = 40, dropout: float = 0.5,
                    causal: bool = False) -> TCResNet:
        check_positive_int(name, "num_classes", num_classes)
        check_positive_int(name, "in_features", in_features)
        return TCResNet(num_classes, in_features, widths, width,
                        check_probability(name, "dropout", dropout), bool(causal))

    constructor.__name__ = constructor.__qualname__ = name
    constructor.__doc__ = (f"TC-ResNet{2 + 2 * len(widths)}-{width:g}: blocks of "
                           f"{[int(c * width) for c in widths]} channels.")
    return constructor


tcresnet8 = _register("tcresnet8")
tcresnet14 = _register("tcresnet14")
tcresnet14_1_5 = _register("tcresnet14_1_5")
