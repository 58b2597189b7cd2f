"""Temporal Lambda-ResNet18: a 1-D ResNet18 whose blocks use lambda layers along time.

Tura et al. 2021, "Efficient Keyword Spotting through long-range interactions with
Temporal Lambda Networks" (arXiv:2104.08086; Telefonica Research), with the lambda layer of
Bello 2021 (arXiv:2102.08602, see ``kwskit.layers.lambda_layer``).

Layout (channel multiplier ``width`` = the paper's k = 1), input 40 log-mel x T frames as
channels (1-D convolutions over time):

    conv1d 3, 40 -> 16, BN, ReLU; max pool 3, stride 2               T -> ceil(T/2)
    stage 1: 2 blocks, 24 channels, stride 1
    stage 2: 2 blocks, 36 channels, stride 2 in the first             -> /4
    stage 3: 2 blocks, 48 channels, stride 2 in the first             -> /8
    stage 4: 2 blocks, 60 channels, stride 2 in the first             -> /16
    average over time, linear -> classes

Block (in -> out channels, stride s):
    main:     conv1d 3 (stride s), BN, ReLU -> lambda layer (out -> out) [-> avg pool 3,
              stride 1, in blocks that change shape] -> BN -> ReLU
    shortcut: identity, or conv1d 1 (stride s) + BN when the shape changes
    out = ReLU(main + shortcut)
Lambda layer: 4 heads, key depth k = 16, intra-depth u = 1, value depth out / 4, position
lambdas over m = 23 frames (a lambda convolution).

Details the paper leaves open, taken from the authors' released code (Telefonica/
LambdaNetwork, models/LambdaResnet.py, models/LambdaLayers.py, configs/google_commands/) or
decided here -- written down so a reader knows what was chosen:
- Stage widths 24/36/48/60, stem 16, 2 blocks per stage, lambda hyper-parameters h=4, k=16,
  u=1, m=23, the extra avg pool in shape-changing blocks and the ReLU inside the main branch
  before the sum: as the authors' code.
- Front-end: the authors' code feeds 40 log-mel bands (n_fft 512, 20 ms window, 10 ms hop,
  log(mel + 1e-3)); the recipe uses the same (not MFCC).
- Time padding: the authors' stem conv has none ('valid'), every other conv/pool is centred.
  Here every op pads 'same' (or 'causal' with ``causal=True``), so frames stay on kwskit's
  grid. With center=False framing (99 frames per second) this gives the authors' frame counts
  exactly: 99 -> 50 -> 50 -> 25 -> 13 -> 7.
- Head: the authors L2-normalise the logits (their loss then sees logits in [-1, 1]); here the
  head is a plain linear layer trained with ordinary cross-entropy. ``dropout`` (0 in the
  paper) goes before it.
- Position embeddings start N(0, 1) as the authors' code.
- ``context``: the paper's content lambda summarises the WHOLE clip (``context=None``, the
  default), so frame 0 depends on the last frame and the model cannot stream. With
  ``context=W`` (input feature frames) every lambda layer summarises only a causal window of
  the last ceil(W / stride) of its own frames; that variant streams exactly (tested) and,
  trained that way, is the streaming version of the model. The position lambdas and convs
  still look ahead unless ``causal=True``: 23-frame 'same' position windows at strides up
  to 16 add up to 738 input frames (7.4 s) of look-ahead, so streaming wants ``causal=True``
  (look-ahead 0). The windowed content lambda costs 2.96 M MACs per 1-s clip (context=100)
  against 2.24 M for the global one.

Parameter count: 86,020 trainable parameters for 12 classes. The paper's "~83 K" (65 %
lighter than Res15's 238 K; the authors' logs print 83,015 for 11 classes and 84,479 for 35)
is torchsummary's total, which counts only module ``weight``/``bias`` tensors and so misses
the 8 lambda layers' position embeddings (8 x 16 x 23 = 2,944). Without them: 83,076 for 12
classes. (tests/test_lambda_crnn.py checks both.)
"""

from __future__ import annotations

import math
from collections import OrderedDict

from torch import nn

from kwskit.errors import KwsError
from kwskit.layers import (Identity, StreamClassifier, StreamConv1d, StreamPool1d,
                           StreamSequential, StreamSum)
from kwskit.layers.lambda_layer import LambdaLayer1d
from kwskit.models.registry import check_positive_int, check_probability, register_model

PAPER = ("Tura et al. 2021, Efficient Keyword Spotting through long-range interactions "
         "with Temporal Lambda Networks, arXiv:2104.08086")
# The authors' recipe: torchaudio MelSpectrogram(n_fft=512, win 20 ms, hop 10 ms, 40 mels),
# log(mel + 1e-3); kwskit frames with center=False (99 frames per second).
FRONTEND = {"type": "logmel", "n_mels": 40, "n_fft": 512, "win_length": 320,
            "hop_length": 160, "f_min": 0.0, "log_offset": 1e-3}
PUBLISHED = {
    "params": 83.0e3, "macs": None, "acc_v1": None, "acc_v2": None,
    "acc_v2_11": 96.46, "acc_v2_35": 92.53,
    "source": "arXiv:2104.08086 (~83 K params: 65 % lighter than Res15); accuracies are the "
              "final validation accuracies in the authors' training logs (Telefonica/"
              "LambdaNetwork logs/LambdaResnet18_k1_10.out: 10 words + unknown; "
              "_k1_35.out: 35 words), GSC v2",
    "note": "published params = torchsummary total, without the position embeddings "
            "(2,944); trainable params are 86.0 K for 12 classes",
}
STAGES = ((24, 1), (36, 2), (48, 2), (60, 2))  # (channels at width 1, first block's stride)
STEM = 16


def lambda_block(in_ch: int, out_ch: int, stride: int, padding: str, context: int | None,
                 heads: int, key_dim: int, pos_kernel: int) -> StreamSequential:
    """One residual lambda block (see the module docstring)."""
    reshape = stride != 1 or in_ch != out_ch
    main = OrderedDict(
        conv=StreamConv1d(in_ch, out_ch, 3, stride=stride, bias=False, padding=padding),
        bn1=nn.BatchNorm1d(out_ch), relu1=nn.ReLU(),
        lam=LambdaLayer1d(out_ch, out_ch, heads=heads, key_dim=key_dim, pos_kernel=pos_kernel,
                          context=context, padding=padding),
    )
    if reshape:
        main["pool"] = StreamPool1d("avg", 3, stride=1, padding=padding)
    main.update(bn2=nn.BatchNorm1d(out_ch), relu2=nn.ReLU())
    shortcut = StreamSequential(OrderedDict(
        conv=StreamConv1d(in_ch, out_ch, 1, stride=stride, bias=False, padding=padding),
        bn=nn.BatchNorm1d(out_ch))) if reshape else Identity()
    return StreamSequential(OrderedDict(sum=StreamSum(shortcut, StreamSequential(main)),
                                        relu=nn.ReLU()))


class LambdaResNet(StreamClassifier):
    """Temporal Lambda-ResNet on (batch, in_features, frames) features.

    Args:
        num_classes: output classes.
        in_features: mel bins (input channels of the 1-D stem).
        blocks: blocks per stage ((2, 2, 2, 2) = ResNet18).
        width: channel multiplier of the stages (the paper's k).
        heads, key_dim, pos_kernel: lambda-layer h, k and m.
        context: content-lambda window in input feature frames (None = the whole clip, the
            paper; then the model does not stream).
        dropout: dropout before the classifier (0 in the paper).
        causal: causal time padding everywhere (zero look-ahead) instead of 'same'.
    """

    def __init__(self, num_classes: int, in_features: int = 40, blocks=(2, 2, 2, 2),
                 width: float = 1.0, heads: int = 4, key_dim: int = 16, pos_kernel: int = 23,
                 context: int | None = None, dropout: float = 0.0, causal: bool = False):
        pad = "causal" if causal else "same"
        layers = OrderedDict(
            stem=StreamConv1d(in_features, STEM, 3, bias=False, padding=pad),
            stem_bn=nn.BatchNorm1d(STEM), stem_relu=nn.ReLU(),
            stem_pool=StreamPool1d("max", 3, stride=2, padding=pad),
        )
        in_ch, total_stride = STEM, 2
        for s, ((ch, first_stride), n) in enumerate(zip(STAGES, blocks), start=1):
            out_ch = int(ch * width)
            if out_ch % heads:
                raise KwsError(f"LambdaResNet: width={width:g} gives {out_ch} channels in "
                               f"stage {s}, not divisible by heads={heads}")
            for i in range(n):
                stride = first_stride if i == 0 else 1
                total_stride *= stride
                ctx = None if context is None else math.ceil(context / total_stride)
                layers[f"stage{s}_{i + 1}"] = lambda_block(in_ch, out_ch, stride, pad, ctx,
                                                           heads, key_dim, pos_kernel)
                in_ch = out_ch
        head = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_ch, num_classes))
        super().__init__(StreamSequential(layers), head, in_features=in_features,
                         input_kind="1d")
        self.num_classes, self.width, self.context = num_classes, width, context
        self.streamable = context is not None
        self.stream_note = "" if self.streamable else (
            "the content lambdas summarise the whole clip (context=None, as the paper), so "
            "every frame depends on the last one; build it with context=<frames> (e.g. 100) "
            "for a model that streams exactly")


@register_model("lambda_resnet18", family="lambda_resnet", paper=PAPER, input="1d",
                frontend=FRONTEND, published=PUBLISHED)
def lambda_resnet18(num_classes: int = 12, in_features: int = 40, dropout: float = 0.0,
                    width: float = 1.0, context: int | None = None,
                    causal: bool = False) -> LambdaResNet:
    """Temporal Lambda-ResNet18 (k = 1): 86.0 K params for 12 classes, 83.1 K without the
    position embeddings (the paper's ~83 K)."""
    name = "lambda_resnet18"
    check_positive_int(name, "num_classes", num_classes)
    check_positive_int(name, "in_features", in_features)
    dropout = check_probability(name, "dropout", dropout)
    if isinstance(width, bool) or not isinstance(width, (int, float)) or width <= 0:
        raise KwsError(f"{name}: width must be a positive number, got {width!r}")
    if context is not None:
        check_positive_int(name, "context", context)
    return LambdaResNet(num_classes, in_features, (2, 2, 2, 2), float(width), context=context,
                        dropout=dropout, causal=bool(causal))
