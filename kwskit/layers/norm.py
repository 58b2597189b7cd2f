"""SubSpectral Normalization (Chang et al. 2021, "Subspectral normalization for neural audio
data processing", ICASSP 2021): BatchNorm with separate statistics and affine parameters for
each of ``sub_bands`` contiguous frequency bands."""

from __future__ import annotations

import torch
from torch import nn

from kwskit.errors import KwsError


class SubSpectralNorm(nn.Module):
    """BatchNorm over (channels x sub-bands) groups of (batch, channels, freq, frames).

    Frequency is split into ``sub_bands`` equal contiguous bands; each (channel, band) pair
    gets its own statistics and affine weight and bias: a BatchNorm2d of
    ``channels * sub_bands`` features on the tensor reshaped to
    (batch, channels*sub_bands, freq/sub_bands, frames). Frame-wise (stateless) in eval mode.
    """

    def __init__(self, channels: int, sub_bands: int = 5, eps: float = 1e-5,
                 momentum: float = 0.1, affine: bool = True):
        super().__init__()
        self.channels, self.sub_bands = channels, sub_bands
        self.bn = nn.BatchNorm2d(channels * sub_bands, eps=eps, momentum=momentum, affine=affine)

    def forward(self, x):
        b, c, f, t = x.shape
        if not torch.jit.is_tracing() and f % self.sub_bands:
            raise KwsError(f"SubSpectralNorm: {f} frequency bins do not split into "
                           f"{self.sub_bands} equal sub-bands (sub_bands must divide freq)")
        if not self.training and self.bn.track_running_stats:
            # inference: one per-(channel, bin) affine map, two graph nodes instead of a
            # reshape / BatchNorm / reshape round trip (the same numbers)
            scale, shift = self._affine(f // self.sub_bands)
            return x * scale + shift
        y = self.bn(x.reshape(b, c * self.sub_bands, f // self.sub_bands, t))
        return y.reshape(b, c, f, t)

    def _affine(self, band: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift), each (channels, freq, 1): the eval-mode BatchNorm per sub-band."""
        bn = self.bn
        scale = torch.rsqrt(bn.running_var + bn.eps)
        shift = -bn.running_mean * scale
        if bn.affine:
            scale, shift = scale * bn.weight, shift * bn.weight + bn.bias
        shape = (self.channels, self.sub_bands, 1)
        scale = scale.reshape(shape).expand(-1, -1, band).reshape(self.channels, -1, 1)
        shift = shift.reshape(shape).expand(-1, -1, band).reshape(self.channels, -1, 1)
        return scale, shift

    def extra_repr(self) -> str:
        return f"channels={self.channels}, sub_bands={self.sub_bands}"
