"""Token mixers without attention: FNet's Fourier mixing and PoolFormer's pooling."""
from __future__ import annotations

from attnarena import ops
from attnarena._validate import check_int
from attnarena.mixers.base import Mixer
from attnarena.registry import register_mixer


@register_mixer(
    "fnet", family="parameter-free mixing",
    export_caveat="the 2-D Fourier transform (torch.fft.fft2) has no ONNX operator",
    paper="Lee-Thorp et al. 2022, FNet: Mixing Tokens with Fourier Transforms",
    complexity="O(L log L D)", patterns=("self",), forms=("parallel",),
    padding_caveat="the Fourier transform runs over the padded length (as FNet pads every "
                   "input to one length), so its frequencies depend on the padding")
class FNet(Mixer):
    """FNet (Lee-Thorp et al. 2022): y = Re(FFT_seq(FFT_hidden(x))), no parameters."""

    def _forward(self, x, context, mask):
        return ops.fourier_mix(x)


@register_mixer(
    "pooling", family="parameter-free mixing",
    paper="Yu et al. 2022, MetaFormer Is Actually What You Need for Vision",
    complexity="O(L D)", patterns=("self",), forms=("parallel",))
class Pooling(Mixer):
    """PoolFormer's token mixer (Yu et al. 2022): average pooling over ``pool_size``
    neighbouring tokens minus the token itself; padding is not counted in the average."""

    def __init__(self, dim, heads=1, causal=False, *, pool_size=3):
        super().__init__(dim, heads, causal)
        check_int(pool_size, "pool_size")
        if pool_size % 2 == 0:
            raise ValueError(f"pool_size must be a positive odd int, got {pool_size!r}")
        self.pool_size = pool_size

    def _forward(self, x, context, mask):
        return ops.pool_mix(x, self.pool_size, mask=mask)
