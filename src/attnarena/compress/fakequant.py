"""Simulated ("fake") quantization of linear layers, for the formats torchao has no CPU
kernel for: k-bit integers with static per-tensor activation ranges (the W8A8 setting of
Bondarenko et al. 2023), and 4-bit floating point E2M1 with searched scales (LLM-FP4, Liu
et al. 2023, "LLM-FP4: 4-Bit Floating-Point Quantized Transformers").

A ``QuantLinear`` stores its weight as integer codes (two 4-bit codes to a byte) and one
scale per output channel, so the saved model is as small as the format; it computes with
the dequantized weight (rounded exactly onto the format's grid) and rounds its input onto
the activation grid first. The arithmetic is float, so the outputs are those of the
quantized model; the speed is not that of a low-bit kernel.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FORMATS = ("int", "fp4")
# E2M1: sign, 2 exponent bits, 1 mantissa bit; the non-negative values it represents.
FP4_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
SEARCH_FACTORS = 40  # candidate scales tried per channel, the naive one among them


def fp4_grid(device=None, dtype=torch.float32) -> torch.Tensor:
    """The 15 distinct E2M1 values, ascending (-6 ... 6)."""
    magnitudes = torch.tensor(FP4_MAGNITUDES, device=device, dtype=dtype)
    return torch.cat([-magnitudes.flip(0)[:-1], magnitudes])


def check_format(fmt: str, bits: int) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown number format {fmt!r}; valid: {', '.join(FORMATS)}")
    if fmt == "fp4" and bits != 4:
        raise ValueError(f"fp4 is a 4-bit format, got bits={bits}")
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an integer from 2 to 8, got {bits!r}")


def grid_max(fmt: str, bits: int) -> float:
    """Largest code value: 6 for E2M1, 2^(bits-1) - 1 for symmetric integers."""
    return 6.0 if fmt == "fp4" else float(2 ** (bits - 1) - 1)


def to_codes(x: torch.Tensor, scale: torch.Tensor, fmt: str, bits: int) -> torch.Tensor:
    """Nearest representable value of x / scale, as an unsigned code (uint8)."""
    y = x / scale
    if fmt == "fp4":
        grid = fp4_grid(x.device, x.dtype)
        # nearest grid value: between two neighbours, the midpoint decides (a tie goes down)
        return torch.bucketize(y, (grid[1:] + grid[:-1]) / 2).to(torch.uint8)
    top = 2 ** (bits - 1) - 1
    return (y.round().clamp(-top, top) + top).to(torch.uint8)


def from_codes(codes: torch.Tensor, scale: torch.Tensor, fmt: str, bits: int) -> torch.Tensor:
    if fmt == "fp4":
        return fp4_grid(scale.device, scale.dtype)[codes.long()] * scale
    return (codes.to(scale.dtype) - (2 ** (bits - 1) - 1)) * scale


def quantize(x: torch.Tensor, scale: torch.Tensor, fmt: str, bits: int) -> torch.Tensor:
    """x rounded onto the grid of ``fmt`` at ``scale`` (broadcast), saturating at its ends."""
    return from_codes(to_codes(x, scale, fmt, bits), scale, fmt, bits)


def search_weight_scales(weight: torch.Tensor, fmt: str, bits: int,
                         search: bool = True) -> torch.Tensor:
    """(out, 1) scales: the naive per-channel max-abs scale, or, with ``search``, the
    candidate among ``SEARCH_FACTORS`` fractions of it (1 included) with the least squared
    error on that channel's weights (LLM-FP4's per-channel search; the naive scale is a
    candidate, so the searched one is never worse on this objective)."""
    w = weight.detach().float()
    naive = (w.abs().amax(dim=1, keepdim=True) / grid_max(fmt, bits)).clamp_min(1e-12)
    if not search:
        return naive
    best, best_error = naive, ((quantize(w, naive, fmt, bits) - w) ** 2).sum(1, keepdim=True)
    for factor in torch.linspace(0.3, 1.0, SEARCH_FACTORS)[:-1].tolist():
        scale = naive * factor
        error = ((quantize(w, scale, fmt, bits) - w) ** 2).sum(1, keepdim=True)
        better = error < best_error
        best, best_error = torch.where(better, scale, best), torch.minimum(error, best_error)
    return best


def activation_error(inputs, weight, bias, scale, fmt, bits) -> float:
    """Squared error of the layer output when its input is quantized at ``scale`` (the
    objective LLM-FP4 minimizes for activations)."""
    reference = F.linear(inputs, weight, bias)
    return float(((F.linear(fake_activation(inputs, scale, fmt, bits), weight, bias)
                   - reference) ** 2).sum())


def fake_activation(x, scale, fmt, bits):
    """Per-tensor activation quantization: symmetric for E2M1 (scale alone), asymmetric
    for integers (scale and zero point packed as a 2-vector)."""
    if fmt == "fp4":
        return quantize(x, scale, fmt, bits)
    step, low = scale[0], scale[1]
    levels = 2 ** bits - 1
    return ((x - low) / step).round().clamp(0, levels) * step + low


def search_activation_scale(inputs, weight, bias, fmt, bits, search=True) -> torch.Tensor:
    """The activation scale from calibration inputs (N, in): min-max (naive), or the
    candidate with the least output error among fractions of it (naive included)."""
    x = inputs.detach().float()
    weight = weight.detach().float()
    bias = None if bias is None else bias.detach().float()
    if fmt == "fp4":
        naive = (x.abs().max() / grid_max(fmt, bits)).clamp_min(1e-12).reshape(1)
        candidates = [naive * f for f in torch.linspace(0.3, 1.0, SEARCH_FACTORS).tolist()]
    else:
        low, high = x.min().clamp_max(0), x.max().clamp_min(0)
        levels = 2 ** bits - 1

        def ranged(f):
            return torch.stack([((high - low) * f / levels).clamp_min(1e-12), low * f])
        naive = ranged(1.0)
        candidates = [ranged(f) for f in torch.linspace(0.3, 1.0, SEARCH_FACTORS).tolist()]
    if not search:
        return naive
    errors = [activation_error(x, weight, bias, c, fmt, bits) for c in candidates]
    return candidates[min(range(len(errors)), key=errors.__getitem__)]


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Two 4-bit codes to a byte when bits <= 4 (the last dimension padded to even)."""
    if bits > 4:
        return codes
    if codes.shape[-1] % 2:
        codes = F.pad(codes, (0, 1))
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack(packed: torch.Tensor, bits: int, columns: int) -> torch.Tensor:
    if bits > 4:
        return packed
    codes = torch.stack([packed & 0xF, packed >> 4], dim=-1).flatten(-2)
    return codes[..., :columns]


class QuantLinear(nn.Module):
    """A linear layer with quantized weights (per-output-channel scales) and, when
    ``act_bits`` is set, quantized inputs (one static scale, from calibration)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, *, fmt: str = "int",
                 bits: int = 8, act_bits: int | None = None, act_fmt: str | None = None):
        super().__init__()
        check_format(fmt, bits)
        act_fmt = act_fmt or fmt
        if act_bits is not None:
            check_format(act_fmt, act_bits)
        self.in_features, self.out_features = in_features, out_features
        self.fmt, self.bits, self.act_fmt, self.act_bits = fmt, bits, act_fmt, act_bits
        columns = in_features if bits > 4 else -(-in_features // 2)
        self.register_buffer("codes", torch.zeros(out_features, columns, dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(out_features, 1))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        size = 1 if act_fmt == "fp4" else 2
        self.register_buffer("act_scale", torch.ones(size) if act_bits else None)
        self._weight = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, fmt="int", bits=8, act_bits=None, act_fmt=None,
                    inputs=None, search=True) -> QuantLinear:
        """Quantize ``linear``; ``inputs`` (N, in) calibrate the activation scale."""
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, fmt=fmt,
                    bits=bits, act_bits=act_bits, act_fmt=act_fmt)
        weight = linear.weight.detach()
        scale = search_weight_scales(weight, fmt, bits, search)
        layer.codes.copy_(pack(to_codes(weight.float(), scale, fmt, bits), bits))
        layer.scale.copy_(scale)
        if linear.bias is not None:
            layer.bias.data.copy_(linear.bias.detach())
        if act_bits:
            if inputs is None:
                raise ValueError("activation quantization needs calibration inputs")
            layer.act_scale.copy_(search_activation_scale(
                inputs, layer.weight, layer.bias, layer.act_fmt, act_bits, search))
        return layer.to(weight.device)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized (out, in) weight, exactly on the format's grid."""
        if self._weight is None or self._weight.device != self.codes.device:
            codes = unpack(self.codes, self.bits, self.in_features)
            self._weight = from_codes(codes, self.scale, self.fmt, self.bits)
        return self._weight

    def _load_from_state_dict(self, *args, **kwargs):
        self._weight = None
        super()._load_from_state_dict(*args, **kwargs)

    def forward(self, x):
        if self.act_bits:
            x = fake_activation(x, self.act_scale, self.act_fmt, self.act_bits)
        return F.linear(x, self.weight.to(x.dtype), self.bias)

    def extra_repr(self):
        acts = f", act={self.act_fmt}{self.act_bits}" if self.act_bits else ""
        return f"{self.in_features}, {self.out_features}, weight={self.fmt}{self.bits}{acts}"
