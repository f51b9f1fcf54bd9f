"""Outliers after LayerNorm, folded away: RepQuant (Li et al. 2024, "RepQuant: Towards
Accurate Post-Training Quantization of Large Transformer Models via Scale
Reparameterization").

Post-LayerNorm activations have a few channels with ranges far wider than the rest, so one
per-tensor scale wastes most of its levels on them. Quantizing per channel would fix that
but needs a per-channel dequantization inside the matrix product. RepQuant gets the same
effect for free: with each channel's calibration range [lo_c, hi_c], centre m_c and width
ratio s_c = (hi_c - lo_c) / mean width, the LayerNorm's affine becomes
(gamma_c, beta_c) -> (gamma_c / s_c, (beta_c - m_c) / s_c) and every linear layer reading
it absorbs the inverse, W[:, c] -> W[:, c] s_c, b -> b + W m. The float model computes the
same function; every channel now spans the same range, so per-tensor activation
quantization behaves like per-channel quantization.

A LayerNorm is folded only when every consumer of its output is a linear layer (found by
tracing one calibration batch) and the model's output is unchanged afterwards; the others
are listed in the report.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from attnarena.compress.quantize import IntStaticConfig, fake_quantize, restore_fake
from attnarena.subject import subject_of
from attnarena.compress.recipe import model_output, register_method


@torch.no_grad()
def norm_consumers(model, batch, loss) -> dict[str, tuple[list[str], torch.Tensor]]:
    """For each affine LayerNorm: the linear layers fed its exact output tensor, and that
    output's (N, channels) rows on ``batch``."""
    norms = {n: m for n, m in model.named_modules()
             if isinstance(m, nn.LayerNorm) and m.elementwise_affine}
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    produced, seen = {}, {n: [] for n in norms}
    outputs = {}
    handles = []
    for name, norm in norms.items():
        def after(module, args, out, name=name):
            produced[id(out)] = name
            outputs[name] = out  # holds the tensor, so its id is not reused
        handles.append(norm.register_forward_hook(after))
    for name, linear in linears.items():
        def before(module, args, name=name):
            source = produced.get(id(args[0]))
            if source is not None:
                seen[source].append(name)
        handles.append(linear.register_forward_pre_hook(before))
    try:
        loss(model, batch)
    finally:
        for h in handles:
            h.remove()
    return {n: (sorted(set(seen[n])), outputs[n].reshape(-1, outputs[n].shape[-1]))
            for n in norms if seen[n] and n in outputs}


@torch.no_grad()
def fold_norm(model, norm_name: str, consumers: list[str], rows: torch.Tensor) -> None:
    """Fold per-channel centres and range ratios of a LayerNorm's output (rows: (N, C)
    calibration activations) into its affine and its consumers' weights."""
    norm = model.get_submodule(norm_name)
    low, high = rows.amin(0), rows.amax(0)
    centre = (low + high) / 2
    width = (high - low).clamp_min(1e-8)
    ratio = width / width.mean()
    norm.weight.div_(ratio)
    norm.bias.sub_(centre).div_(ratio)
    for name in consumers:
        linear = model.get_submodule(name)
        shift = linear.weight @ centre
        linear.weight.mul_(ratio)
        if linear.bias is None:
            linear.bias = nn.Parameter(shift.clone())
        else:
            linear.bias.add_(shift)


@dataclass
class RepQuantConfig(IntStaticConfig):
    """Fold LayerNorm outliers (RepQuant), then ``int_static`` quantization (k-bit
    per-channel weights, per-tensor static activations)."""


@torch.no_grad()
def fold_layernorms(subject, data, tolerance: float = 1e-4) -> dict:
    """Fold every LayerNorm whose output only linear layers read; returns what was folded
    and what was not (and why)."""
    subject = subject_of(subject)
    model = subject.model
    was_training = model.training
    model.eval()
    batch = data.calibration[0]
    found = norm_consumers(model, batch, data.loss)
    rows = {n: [r] for n, (_, r) in found.items()}
    for other in data.calibration[1:]:
        for n, (_, r) in norm_consumers(model, other, data.loss).items():
            rows.setdefault(n, []).append(r)
    folded, skipped = {}, {}
    for name, (consumers, _) in found.items():
        reference = model_output(subject, batch, data.loss)
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        added_bias = [c for c in consumers if model.get_submodule(c).bias is None]
        fold_norm(model, name, consumers, torch.cat(rows[name]))
        if not torch.allclose(model_output(subject, batch, data.loss), reference,
                              rtol=tolerance, atol=tolerance * reference.abs().max()):
            for c in added_bias:
                model.get_submodule(c).bias = None
            model.load_state_dict(saved)
            skipped[name] = "something besides linear layers reads its output"
            continue
        folded[name] = consumers
    model.train(was_training)
    return {"folded": folded, "not_folded": skipped,
            "biased": sorted(c for cs in folded.values() for c in cs)}


def _add_biases(subject, names):
    model = subject.model
    for name in names:
        linear = model.get_submodule(name)
        if linear.bias is None:
            linear.bias = nn.Parameter(torch.zeros(linear.out_features,
                                                   device=linear.weight.device))


@register_method("repquant", RepQuantConfig, family="quantization",
                 paper="Li et al. 2024, RepQuant: Towards Accurate Post-Training Quantization of "
                       "Large Transformer Models via Scale Reparameterization",
                 restore=lambda m, c, r: restore_fake(_add_biases(m, r["biased"]) or m,
                                                      fmt="int", act_bits=c.act_bits,
                                                      bits_of=r["bits"]))
def repquant(subject, config, data):
    folding = fold_layernorms(subject, data)
    report = fake_quantize(subject, data, fmt="int", bits=config.weight_bits,
                           act_bits=config.act_bits, search=config.search)
    return subject, {**folding, **report}
