"""Post-training quantization of linear layers.

torchao (the ``compress`` extra) does what it has CPU kernels or fallbacks for: int8
weight-only, int8 dynamic activations with int8 weights, 4-bit group-wise weights (held
unpacked in int8 by its CPU path), int8 activations with 4-bit weights, float8 weights.
What torchao lacks is written here on ``fakequant``: E2M1 4-bit floating point for weights
and activations with searched scales (LLM-FP4, Liu et al. 2023) and k-bit integers with
static per-tensor activation ranges (the W8A8 setting of Bondarenko et al. 2023).

Every method quantizes the model's ``nn.Linear`` layers; whatever else holds weights
(embeddings, norms, convolutions, a recurrent mixer's decay parameters) stays in float
and is listed in the step's report under ``kept_float``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from attnarena.compress.fakequant import QuantLinear
from attnarena.subject import subject_of
from attnarena.compress.recipe import (check_number, float_parameters, linear_inputs,
                                       register_method, set_module)
from attnarena.extras import quiet_imports as _quiet


def torchao():
    """The torchao package, imported quietly, or one line naming the pip command."""
    from attnarena.extras import require

    with _quiet():
        module = require("torchao", "torchao quantization methods", extra="compress")
        require("torchao.quantization", "torchao quantization methods", extra="compress")
    return module


# -- torchao ------------------------------------------------------------------------------

@dataclass
class Int8WeightConfig:
    """int8 weights, one scale per output channel; activations stay float."""


@dataclass
class Int8DynamicConfig:
    """int8 weights per channel, activations quantized to int8 per token at run time."""


@dataclass
class Int4WeightConfig:
    """4-bit integer weights with one scale per ``group_size`` input columns."""
    group_size: int = 32

    def __post_init__(self):
        if self.group_size not in (16, 32, 64, 128, 256):
            raise ValueError(f"group_size must be one of 16, 32, 64, 128, 256, got "
                             f"{self.group_size!r}")


@dataclass
class Int8DynamicInt4Config(Int4WeightConfig):
    """int8 per-token activations with 4-bit group-wise weights."""


@dataclass
class Float8WeightConfig:
    """float8 (e4m3) weights, one scale per output channel."""


def _torchao_config(config):
    torchao()
    from torchao.quantization import (Float8WeightOnlyConfig,
                                      Int8DynamicActivationInt8WeightConfig,
                                      Int8DynamicActivationIntxWeightConfig,
                                      Int8WeightOnlyConfig, IntxWeightOnlyConfig, PerGroup)
    if isinstance(config, Int8DynamicInt4Config):
        return Int8DynamicActivationIntxWeightConfig(
            weight_dtype=torch.int4, weight_granularity=PerGroup(config.group_size))
    if isinstance(config, Int4WeightConfig):
        return IntxWeightOnlyConfig(weight_dtype=torch.int4,
                                    granularity=PerGroup(config.group_size))
    return {Int8WeightConfig: Int8WeightOnlyConfig,
            Int8DynamicConfig: Int8DynamicActivationInt8WeightConfig,
            Float8WeightConfig: Float8WeightOnlyConfig}[type(config)]()


def _takes(config, linear) -> str | None:
    """Why torchao cannot quantize ``linear`` under ``config`` (None when it can)."""
    group = getattr(config, "group_size", None)
    if group is not None and linear.in_features % group:
        return f"{linear.in_features} input features, not a multiple of group_size {group}"
    return None


def torchao_quantize(subject, config, data=None):
    """Quantize every linear layer torchao can take, in place; returns (subject, report)."""
    model = subject.model
    layers = subject.linear_layers()
    refused = {n: why for n, m in layers.items() if (why := _takes(config, m))}
    done = set(layers) - set(refused)
    _quantize_named(subject, config, done)
    kept = float_parameters(model, done)
    for entry in kept:
        if entry["module"] in refused:
            entry["reason"] = refused[entry["module"]]
    return subject, {"quantized": sorted(done), "kept_float": kept}


def _quantize_named(subject, config, names):
    torchao()
    from torchao.quantization import quantize_

    chosen = {id(m) for n, m in subject.linear_layers().items() if n in names}
    with _quiet():
        quantize_(subject.model, _torchao_config(config),
                  filter_fn=lambda module, name: id(module) in chosen)
    return subject


def _torchao_restore(subject, config, report):
    return _quantize_named(subject, config, set(report["quantized"]))


TORCHAO_PAPER = "torchao: PyTorch native quantization (PyTorch team, 2024)"
for _name, _config in (("int8_weight", Int8WeightConfig), ("int8_dynamic", Int8DynamicConfig),
                       ("int4_weight", Int4WeightConfig),
                       ("int8_dynamic_int4", Int8DynamicInt4Config),
                       ("float8_weight", Float8WeightConfig)):
    register_method(_name, _config, family="quantization (torchao)", paper=TORCHAO_PAPER,
                    restore=_torchao_restore,
                    check=lambda m, c: torchao())(torchao_quantize)


# -- written here -------------------------------------------------------------------------

@dataclass
class FP4Config:
    """E2M1 weights (per-channel scales) and, with ``activations``, E2M1 inputs (one
    per-tensor scale per layer), both scales searched on calibration data."""
    activations: bool = True
    search: bool = True

    def __post_init__(self):
        for name in ("activations", "search"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")


@dataclass
class IntStaticConfig:
    """k-bit integer weights (per-channel, symmetric) and inputs (per-tensor, asymmetric,
    a static min-max range from calibration); ``act_bits=0`` leaves inputs float."""
    weight_bits: int = 8
    act_bits: int = 8
    search: bool = False

    def __post_init__(self):
        check_number("weight_bits", self.weight_bits, 2, 8, integer=True)
        if self.act_bits != 0:
            check_number("act_bits", self.act_bits, 2, 8, integer=True)


def fake_quantize(subject, data, *, fmt, bits, act_bits, search, names=None, bits_of=None):
    """Replace the named linear layers (default: all) by ``QuantLinear``; ``bits_of`` maps
    a name to its own weight bit width (mixed precision)."""
    subject = subject_of(subject)
    model = subject.model
    layers = subject.linear_layers()
    names = sorted(layers) if names is None else sorted(names)
    inputs = (linear_inputs(model, names, data.calibration, data.loss) if act_bits else {})
    for name in names:
        set_module(model, name, QuantLinear.from_linear(
            layers[name], fmt=fmt, bits=(bits_of or {}).get(name, bits),
            act_bits=act_bits or None, inputs=inputs.get(name), search=search))
    return {"quantized": names, "kept_float": float_parameters(model, set(names)),
            "bits": {n: (bits_of or {}).get(n, bits) for n in names}}


def restore_fake(subject, *, fmt, act_bits, bits_of):
    for name, linear in subject.linear_layers().items():
        if name in bits_of:
            set_module(subject.model, name, QuantLinear(
                linear.in_features, linear.out_features, linear.bias is not None, fmt=fmt,
                bits=bits_of[name], act_bits=act_bits or None).to(linear.weight.device))
    return subject


@register_method("fp4", FP4Config, family="quantization",
                 paper="Liu et al. 2023, LLM-FP4: 4-Bit Floating-Point Quantized Transformers",
                 restore=lambda m, c, r: restore_fake(m, fmt="fp4",
                                                      act_bits=4 if c.activations else 0,
                                                      bits_of=r["bits"]))
def fp4(subject, config, data):
    return subject, fake_quantize(subject, data, fmt="fp4", bits=4,
                                act_bits=4 if config.activations else 0, search=config.search)


@register_method("int_static", IntStaticConfig, family="quantization",
                 paper="Bondarenko et al. 2023, Quantizable Transformers: Removing Outliers by "
                       "Helping Attention Heads Do Nothing (W8A8 static ranges)",
                 restore=lambda m, c, r: restore_fake(m, fmt="int", act_bits=c.act_bits,
                                                      bits_of=r["bits"]))
def int_static(subject, config, data):
    return subject, fake_quantize(subject, data, fmt="int", bits=config.weight_bits,
                                act_bits=config.act_bits, search=config.search)


# -- bfloat16 in torch --------------------------------------------------------------------

@dataclass
class BF16Config:
    """Every floating-point weight, and so the computation, in bfloat16; floating-point
    inputs are cast to it and outputs back to float32."""


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags as Linux lists them (x86 "flags", ARM "Features"); None
    where /proc/cpuinfo cannot be read."""
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return None
    flags = set()
    for line in text.splitlines():
        if line.split(":")[0].strip() in ("flags", "Features"):
            flags |= set(line.split(":", 1)[1].split())
    return flags


def bf16_unsupported(device: torch.device | str = "cpu") -> str | None:
    """Why ``device`` cannot compute in bfloat16 at speed (None when it can): a CPU needs
    AVX512-BF16 or AMX (x86) or the BF16 extension (ARM), as its flags say."""
    device = torch.device(device)
    if device.type == "cuda":
        return None if torch.cuda.is_bf16_supported() else "this GPU has no bfloat16 support"
    if device.type != "cpu":
        return None
    flags = cpu_flags()
    if flags is None:
        return "the CPU's flags cannot be read (no /proc/cpuinfo) to check for bfloat16"
    if flags & {"avx512_bf16", "amx_bf16", "bf16"}:
        return None
    return ("this CPU has no bfloat16 instructions (its flags list none of avx512_bf16, "
            "amx_bf16, bf16): bfloat16 would run emulated, slower than float32")


def _check_bf16(subject, config):
    parameter = next(iter(subject.model.parameters()), None)
    why = bf16_unsupported(parameter.device if parameter is not None else "cpu")
    if why:
        raise ValueError(f"bf16: {why}")


def _cast(value, dtype):
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(dtype)
    if isinstance(value, tuple):
        return tuple(_cast(v, dtype) for v in value)
    return value


def _to_bf16(subject):
    model = subject.model.to(torch.bfloat16)
    if not getattr(model, "_bf16_hooks", False):
        model.register_forward_pre_hook(
            lambda m, args, kwargs: (_cast(args, torch.bfloat16),
                                     {k: _cast(v, torch.bfloat16) for k, v in kwargs.items()}),
            with_kwargs=True)
        model.register_forward_hook(lambda m, args, out: _cast_output(out))
        model._bf16_hooks = True
    return subject


def _cast_output(out):
    if hasattr(out, "keys") and hasattr(out, "to_tuple"):  # a transformers ModelOutput
        for key in list(out.keys()):
            if isinstance(out[key], torch.Tensor) and out[key].is_floating_point():
                out[key] = out[key].float()
        return out
    return _cast(out, torch.float32)


@register_method("bf16", BF16Config, family="bfloat16 (torch)",
                 paper="Kalamkar et al. 2019, A Study of BFLOAT16 for Deep Learning Training",
                 restore=lambda s, c, r: _to_bf16(s), check=_check_bf16)
def bf16(subject, config, data=None):
    converted = sum(p.numel() for p in subject.model.parameters() if p.is_floating_point())
    return _to_bf16(subject), {"backend": "torch", "dtype": "bfloat16",
                               "converted": int(converted)}
