"""Activation outlier measures of Bondarenko et al. 2023 ("Quantizable Transformers:
Removing Outliers by Helping Attention Heads Do Nothing"): the largest magnitude any block
output reaches (max infinity norm) and the kurtosis of block outputs, the two numbers that
predict how much 8-bit activation quantization will cost."""
from __future__ import annotations

import torch

from attnarena.compress.distill import block_outputs
from attnarena.subject import subject_of


@torch.no_grad()
def outlier_measures(subject, batches, loss) -> dict:
    """Over ``batches``: ``max_inf_norm`` (largest |value| of any block's output) and
    ``kurtosis`` (each block output's kurtosis over its token vectors' values, averaged
    over tokens, batches and blocks; 3 for a Gaussian) and ``max_kurtosis`` (the largest
    block's)."""
    subject = subject_of(subject)
    model = subject.model
    was_training = model.training
    model.eval()
    peak, per_block = 0.0, {}
    try:
        for batch in batches:
            outputs, handles = block_outputs(subject)
            try:
                loss(model, batch)
            finally:
                for h in handles:
                    h.remove()
            for index, out in enumerate(outputs):
                x = out.detach().double()
                peak = max(peak, float(x.abs().max()))
                centred = x - x.mean(-1, keepdim=True)
                variance = centred.pow(2).mean(-1)
                kurt = centred.pow(4).mean(-1) / variance.pow(2).clamp_min(1e-30)
                per_block.setdefault(index, []).append(float(kurt.mean()))
    finally:
        model.train(was_training)
    means = [sum(v) / len(v) for v in per_block.values()]
    return {"max_inf_norm": peak, "kurtosis": sum(means) / max(len(means), 1),
            "max_kurtosis": max(means, default=0.0)}
