"""BC-ResNet: broadcasted residual learning.

Kim, Chang, Lee, Sung, "Broadcasted Residual Learning for Efficient Keyword Spotting",
Interspeech 2021, arXiv:2106.04140 (Table 1: BC-ResNet-1; Table 3: sizes and accuracy).

Input 40 log-mel x T frames (30 ms window, 10 ms hop). Widths scale with tau (base 8*tau):

    conv 5x5, stride (2,1) (freq, time) -> 16t, BN, ReLU        freq 40 -> 20
    stage 1: 2 BC-ResBlocks,  8t channels, dilation 1
    stage 2: 2 BC-ResBlocks, 12t channels, dilation 2, freq stride 2 in the first  20 -> 10
    stage 3: 4 BC-ResBlocks, 16t channels, dilation 4, freq stride 2 in the first  10 -> 5
    stage 4: 4 BC-ResBlocks, 20t channels, dilation 8
    depthwise 5x5 (no freq padding: 5 -> 1), 1x1 conv -> 32t, BN, ReLU, avg pool, 1x1 -> classes

BC-ResBlock: y = ReLU(x + f2(x) + BC(f1(avg_freq(f2(x))))) with
    f2 = depthwise (3x1) freq conv + SubSpectralNorm(5 sub-bands)      (frame-wise)
    f1 = depthwise (1x3) dilated time conv + BN + swish + 1x1 conv + channel dropout
and BC broadcasting the 1-D result back over frequency. A transition block (channels change)
starts with 1x1 conv + BN + ReLU and has no identity shortcut. Time is never strided.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from kwskit.errors import KwsError
from kwskit.layers import (DepthwiseConv2d, FreqMean, PointwiseConv2d, Residual,
                           StreamClassifier, StreamConv2d, StreamSequential, SubSpectralNorm)
from kwskit.layers.fused import (NormReLUSequential, fusable_norm, fused_step_applies,
                                 residual_relu, sub_band_norm)
from kwskit.models.registry import check_positive_int, check_probability, register_model

PAPER = ("Kim et al. 2021, Broadcasted Residual Learning for Efficient Keyword Spotting, "
         "arXiv:2106.04140")
FRONTEND = {"type": "logmel", "n_mels": 40, "win_length": 480, "hop_length": 160, "n_fft": 512}
STAGE_BLOCKS = (2, 2, 4, 4)
STAGE_WIDTH = (1.0, 1.5, 2.0, 2.5)  # x base channels (8*tau)
STAGE_FREQ_STRIDE = (1, 2, 2, 1)


class BCResBlock(StreamSequential):
    """A BC-ResBlock as StreamSequential(sum=Residual(body) or body, relu=ReLU), body =
    (f2, Residual(f1)) with f1 starting at its frequency mean (``bc_res_block`` builds it).

    Its CPU training step runs the tail fused (``kwskit.layers.fused``): SubSpectralNorm
    returns f2's output and its frequency mean (f1's input) in one pass, and
    ReLU(x + f2 + broadcast f1) is one kernel, backward included. The same modules, state dict,
    streaming and export as the plain StreamSequential."""

    uses_cpu_kernels = True

    def forward(self, x):
        residual = isinstance(self.sum, Residual)
        body = self.sum.branches[1] if residual else self.sum
        f2, f1 = body.f2, body.broadcast.branches[1]
        if not (fused_step_applies(self, x) and fusable_norm(f2[-1])):
            return super().forward(x)
        a, freq_mean = sub_band_norm(f2[-1], f2.forward_range(x, stop=-1), freq_mean=True)
        b = freq_mean
        for layer in list(f1)[1:]:  # f1 after its FreqMean
            b = layer(b)
        return residual_relu(x if residual else None, a, b)


def bc_res_block(in_ch: int, out_ch: int, freq_stride: int, dilation: int, dropout: float,
                 sub_bands: int, padding: str) -> BCResBlock:
    """One BC-ResBlock (a transition block when ``in_ch != out_ch``)."""
    transition = in_ch != out_ch
    f2 = []
    if transition:
        f2 += [PointwiseConv2d(in_ch, out_ch), nn.BatchNorm2d(out_ch), nn.ReLU()]
    f2 += [DepthwiseConv2d(out_ch, (3, 1), stride=(freq_stride, 1), padding=(1, 0)),
           SubSpectralNorm(out_ch, sub_bands)]
    f1 = StreamSequential(OrderedDict(
        avg_freq=FreqMean(keepdim=True),
        tconv=StreamConv2d(out_ch, out_ch, (1, 3), dilation=(1, dilation), groups=out_ch,
                           bias=False, padding=padding),
        bn=nn.BatchNorm2d(out_ch), act=nn.SiLU(),
        pconv=PointwiseConv2d(out_ch, out_ch),
        drop=nn.Dropout2d(dropout),
    ))
    # f2(x) + BC(f1(avg(f2(x)))): the (B, C, 1, T) f1 output broadcasts over frequency
    body = StreamSequential(OrderedDict(f2=NormReLUSequential(*f2), broadcast=Residual(f1)))
    return BCResBlock(OrderedDict(sum=body if transition else Residual(body), relu=nn.ReLU()))


def freq_sizes(in_features: int) -> list[int]:
    """Frequency bins after the stem and after each stage."""
    sizes = [(in_features + 1) // 2]  # 5x5 conv, stride 2, 'same' padding: ceil(F/2)
    for s in STAGE_FREQ_STRIDE:
        sizes.append((sizes[-1] + s - 1) // s)
    return sizes


class BCResNet(StreamClassifier):
    """BC-ResNet-tau on (batch, 1, in_features, frames) features.

    Args:
        num_classes: output classes.
        in_features: mel bins (F); the frequency sizes inside must split into ``sub_bands``
            and end >= 5 (F = 40 -> 20, 10, 5).
        tau: width multiplier (base channels = int(8 * tau)).
        dropout: channel dropout rate in every block (0.1 in the paper).
        sub_bands: SubSpectralNorm sub-bands (5 in the paper).
        causal: pad time causally (no look-ahead) instead of 'same'.
    """

    def __init__(self, num_classes: int, in_features: int = 40, tau: float = 1.0,
                 dropout: float = 0.1, sub_bands: int = 5, causal: bool = False):
        name = f"BC-ResNet-{tau:g}"
        sizes = freq_sizes(in_features)
        if any(f % sub_bands for f in sizes[1:]) or sizes[-1] < 5:
            raise KwsError(f"{name}: in_features={in_features} gives block frequency sizes "
                           f"{sizes[1:]}; each must divide into sub_bands="
                           f"{sub_bands} and the last must be >= 5 (e.g. in_features=40)")
        pad = "causal" if causal else "same"
        base = int(8 * tau)
        widths = [int(base * w) for w in STAGE_WIDTH]
        stem, head_ch = 2 * base, 4 * base
        layers = OrderedDict(
            stem=StreamConv2d(1, stem, 5, stride=(2, 1), bias=False, padding=pad),
            stem_bn=nn.BatchNorm2d(stem), stem_relu=nn.ReLU(),
        )
        in_ch = stem
        for stage, (n, width, fs) in enumerate(zip(STAGE_BLOCKS, widths, STAGE_FREQ_STRIDE)):
            for i in range(n):
                layers[f"stage{stage + 1}_{i + 1}"] = bc_res_block(
                    in_ch, width, fs if i == 0 else 1, 2 ** stage, dropout, sub_bands, pad)
                in_ch = width
        layers["head_dw"] = StreamConv2d(in_ch, in_ch, 5, groups=in_ch, bias=False,
                                         padding=pad, freq_padding="valid")
        layers["head_pw"] = PointwiseConv2d(in_ch, head_ch)
        layers["head_bn"] = nn.BatchNorm2d(head_ch)
        layers["head_relu"] = nn.ReLU()
        layers["freq_mean"] = FreqMean()  # with the time pool = the paper's global avg pool
        super().__init__(NormReLUSequential(layers), nn.Linear(head_ch, num_classes),
                         in_features=in_features, input_kind="2d")
        self.num_classes, self.tau = num_classes, tau


def _published(params: float, macs: float, v1: float, v2: float) -> dict:
    return {"params": params, "macs": macs, "acc_v1": v1, "acc_v2": v2,
            "source": "arXiv:2106.04140 Table 3 (12 classes; #Mult = MACs)"}


def _build(name: str, tau: float, num_classes, in_features, dropout, sub_bands, causal):
    check_positive_int(name, "num_classes", num_classes)
    check_positive_int(name, "in_features", in_features)
    check_positive_int(name, "sub_bands", sub_bands)
    dropout = check_probability(name, "dropout", dropout)
    return BCResNet(num_classes, in_features, tau, dropout, sub_bands, bool(causal))


def _register(name: str, tau: float, published: dict):
    @register_model(name, family="bcresnet", paper=PAPER, input="2d", frontend=FRONTEND,
                    published=published)
    def constructor(num_classes: int = 12, in_features: int = 40, dropout: float = 0.1,
                    sub_bands: int = 5, causal: bool = False) -> BCResNet:
        return _build(name, tau, num_classes, in_features, dropout, sub_bands, causal)

    constructor.__name__ = constructor.__qualname__ = name
    constructor.__doc__ = f"BC-ResNet-{tau:g} (base channels {int(8 * tau)})."
    return constructor


bcresnet1 = _register("bcresnet1", 1.0, _published(9.2e3, 3.1e6, 96.6, 96.9))
bcresnet1_5 = _register("bcresnet1_5", 1.5, _published(17.2e3, 5.5e6, 97.2, 97.6))
bcresnet2 = _register("bcresnet2", 2.0, _published(27.3e3, 8.5e6, 97.3, 97.8))
bcresnet3 = _register("bcresnet3", 3.0, _published(54.2e3, 16.2e6, 97.6, 98.2))
bcresnet6 = _register("bcresnet6", 6.0, _published(188e3, 53.1e6, 97.9, 98.6))
bcresnet8 = _register("bcresnet8", 8.0, _published(321e3, 89.1e6, 98.0, 98.7))
