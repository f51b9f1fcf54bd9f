"""Token mixing without attention: FNet's Fourier transform (Lee-Thorp et al. 2022, "FNet:
Mixing Tokens with Fourier Transforms") and PoolFormer's pooling (Yu et al. 2022,
"MetaFormer Is Actually What You Need for Vision")."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from attnarena._validate import check_int


def fourier_mix(x):
    """y = Re(FFT_seq(FFT_hidden(x))) over (B, L, C), computed in float32 for half inputs."""
    wide = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    return torch.fft.fft2(wide, dim=(-2, -1)).real.to(x.dtype)


def pool_mix(x, pool_size, *, mask=None):
    """Average of the ``pool_size`` neighbouring tokens (odd, centred) minus the token
    itself, over (B, L, C); padded tokens (``mask`` False) are not counted in the average."""
    check_int(pool_size, "pool_size")
    if pool_size % 2 == 0:
        raise ValueError(f"pool_size must be a positive odd int, got {pool_size!r}")
    keep = (torch.ones_like(x[..., :1]) if mask is None
            else mask[..., None].to(x.dtype))  # (B, L, 1)
    pad = pool_size // 2
    sums = F.avg_pool1d((x * keep).transpose(1, 2), pool_size, stride=1, padding=pad,
                        count_include_pad=True) * pool_size
    counts = F.avg_pool1d(keep.transpose(1, 2), pool_size, stride=1, padding=pad,
                          count_include_pad=True) * pool_size
    return (sums / counts.clamp_min(1.0)).transpose(1, 2) - x
