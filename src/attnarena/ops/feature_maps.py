"""Feature maps of linear attention: phi such that phi(q) . phi(k) stands for the similarity
of q and k, applied to (..., D) queries or keys."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from attnarena.ops.softmax import masked_softmax


def elu_features(x):
    """elu(x) + 1 (Katharopoulos et al. 2020, "Transformers are RNNs")."""
    return F.elu(x) + 1.0


def identity_features(x):
    """The identity: plain linear self-attention, as in von Oswald et al. 2023."""
    return x


FEATURE_MAPS = {"elu": elu_features, "relu": F.relu, "identity": identity_features}


def cosine_features(x):
    """Unit-normalized vectors, so phi(q) . phi(k) = cos(q, k) (Mongaras et al. 2024,
    "Cottention")."""
    return F.normalize(x, dim=-1)


def focused(x, power):
    """Focused Linear Attention's focusing function (Han et al. 2023, "FLatten
    Transformer"): relu, then raise each entry to ``power`` and rescale to the original
    norm, sharpening the feature direction."""
    x = F.relu(x) + 1e-6
    powered = x ** power
    return powered * (x.norm(dim=-1, keepdim=True) / powered.norm(dim=-1, keepdim=True))


def hedgehog_features(x, weight):
    """Hedgehog's learnable map (Zhang et al. 2024): [softmax(W x), softmax(-W x)] per head.

    x: (B, H, L, D); weight: (H, D, D) -> (B, H, L, 2D).
    """
    projected = torch.einsum("bhld,hed->bhle", x, weight.to(x.dtype))
    return torch.cat([torch.softmax(projected, -1), torch.softmax(-projected, -1)], -1)


def orthogonal_gaussian(rows: int, dim: int, generator=None, device=None) -> torch.Tensor:
    """(rows, dim) random matrix: blocks of orthogonal rows, each row rescaled to the norm
    of a Gaussian vector so that marginals match i.i.d. N(0, I) rows (FAVOR+'s ORF,
    Choromanski et al. 2021, "Rethinking Attention with Performers")."""
    blocks = []
    for _ in range(-(-rows // dim)):
        gaussian = torch.randn(dim, dim, generator=generator, device=device)
        q, _ = torch.linalg.qr(gaussian)
        blocks.append(q.T)
    w = torch.cat(blocks)[:rows]
    norms = torch.randn(rows, dim, generator=generator, device=device).norm(dim=1)
    return w * norms[:, None]


def favor_features(x, projection, is_query):
    """FAVOR+'s positive random features phi(x) = exp(w.x - |x|^2/2 - c) / sqrt(m).

    x: (B, H, L, D) already scaled by D^-1/4; projection: (m, D). The offset c cancels in
    the normalized output: per query its own max (any per-query constant cancels); for keys
    the bound max_w |w|^2 / 2 >= w.x - |x|^2/2, minus a margin, which depends on no input,
    so causal use and token-by-token decoding see the same features.
    """
    logits = x @ projection.T - (x * x).sum(-1, keepdim=True) / 2  # (B, H, L, m)
    if is_query:
        offset = logits.amax(-1, keepdim=True).detach()
    else:
        offset = (projection * projection).sum(-1).max() / 2 - 30.0
    return torch.exp(logits - offset) / math.sqrt(projection.shape[0])


def attention_distillation_loss(q, k, fq, fk, *, causal=False, mask=None):
    """Hedgehog's attention distillation (Zhang et al. 2024): cross-entropy from the softmax
    attention weights of q, k (the teacher, no gradient) to the normalized linear attention
    weights of their feature maps fq, fk.

    Args:
        q, k: (B, H, L, D); fq, fk: (B, H, L, F).
        causal: query i sees keys j <= i.  mask: optional (B, L) bool, True = real token;
            padded keys are left out and padded queries do not count.

    Returns:
        The mean cross-entropy over (real) queries and heads, a scalar.
    """
    L = q.shape[2]
    allowed = torch.ones(L, L, dtype=torch.bool, device=q.device)
    if causal:
        allowed = allowed.tril()
    allowed = allowed[None, None]
    if mask is not None:
        allowed = allowed & mask[:, None, None, :]
    scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    teacher = masked_softmax(scores, allowed).detach()
    similarity = (fq @ fk.transpose(-1, -2)) * allowed
    student = similarity / similarity.sum(-1, keepdim=True).clamp_min(1e-12)
    loss = -(teacher * torch.log(student.clamp_min(1e-12))).sum(-1)
    if mask is not None:
        return (loss * mask[:, None, :]).sum() / (mask.sum() * q.shape[1])
    return loss.mean()
