"""Linear-attention mixers: kernel feature maps over one ``ops.linear_attention`` core.

A subclass chooses the feature map (``features``) and whether the output is normalized by
the sum of similarities, or post-scaled another way (``rescale``).
"""
from __future__ import annotations

import abc

import torch
import torch.nn.functional as F

from attnarena import ops
from attnarena.mixers.qkv import QKVMixer
from attnarena.registry import register_mixer

ALL_PATTERNS = ("self", "causal", "cross", "causal_cross")
ALL_FORMS = ("parallel", "chunk", "recurrent")

FEATURE_MAPS = {
    "elu": lambda x: F.elu(x) + 1.0,  # Katharopoulos et al. 2020
    "relu": F.relu,
    "identity": lambda x: x,  # plain linear self-attention, as in von Oswald et al. 2023
}


def align_context(k, v, length):
    """Causal cross attention: query i sees context positions j <= i. Keys past the last
    query are never seen (dropped); a shorter context is padded with zero keys, which add
    nothing to the state."""
    S = k.shape[2]
    if S >= length:
        return k[:, :, :length], v[:, :, :length]
    return F.pad(k, (0, 0, 0, length - S)), F.pad(v, (0, 0, 0, length - S))


class LinearAttentionBase(QKVMixer):
    """Feature-mapped q, k through ``ops.linear_attention`` in the chosen form."""

    normalize = True

    def __init__(self, dim, heads=1, causal=False, *, form="chunk", chunk_size=64, bias=True):
        super().__init__(dim, heads, causal, bias=bias)
        if form not in self.info.forms:
            raise ValueError(f"form must be one of {sorted(self.info.forms)}, got {form!r}")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        self.form, self.chunk_size = form, chunk_size

    @property
    def feature_dim(self) -> int:
        """Width of the feature-mapped keys (the state's first dimension)."""
        return self.head_dim

    @abc.abstractmethod
    def features(self, q, k):
        """Feature-map (B, H, *, D) queries and keys."""

    def rescale(self, o, counts):
        """Post-scale (B, H, L, D) outputs, given (B or 1, 1, L, 1) counts of visible keys."""
        return o

    def _forward(self, x, context, mask):
        q, k, v = self.project(x, context)
        q, k = self.features(q, k)
        L = q.shape[2]
        keep = torch.ones(k.shape[0], k.shape[2], dtype=torch.bool, device=k.device) \
            if mask is None else mask
        k = k * keep[:, None, :, None].to(k.dtype)  # padded keys add nothing
        if context is not None and self.causal:
            k, v = align_context(k, v, L)
            S = keep.shape[1]
            keep = keep[:, :L] if S >= L else F.pad(keep, (0, L - S), value=False)
        if self.causal:
            counts = keep.to(q.dtype).cumsum(-1)[:, None, :, None]
        else:
            counts = keep.to(q.dtype).sum(-1)[:, None, None, None].expand(-1, 1, L, 1)
        o = ops.linear_attention(q, k, v, causal=self.causal, normalize=self.normalize,
                                 form=self.form, chunk_size=self.chunk_size)
        return self.o_proj(self.merge_heads(self.rescale(o, counts)))

    def _init_state(self, batch_size, device, dtype):
        width = self.head_dim + (1 if self.normalize else 0)
        dtype = ops._checks.compute_dtype(dtype)
        return {"state": torch.zeros(batch_size, self.heads, self.feature_dim, width,
                                     device=device, dtype=dtype), "position": 0}

    def _step(self, x_t, state):
        y, new = self._run(x_t[:, None], state)
        return y[:, 0], new

    def prefill(self, x, state=None):
        self._check_decodes()
        self._check_tokens(x, "x")
        if state is None:
            state = self.init_state(x.shape[0], x.device, x.dtype)
        return self._run(x, state)

    def _run(self, x, state):
        """Causal forward over x continuing from ``state``; one call serves step and prefill."""
        q, k, v = self.project(x)
        q, k = self.features(q, k)
        L = x.shape[1]
        form = "recurrent" if L == 1 else self.form
        o, s = ops.linear_attention(q, k, v, causal=True, normalize=self.normalize, form=form,
                                    chunk_size=self.chunk_size,
                                    initial_state=state["state"], return_state=True)
        position = state["position"]
        counts = torch.arange(position + 1, position + L + 1, device=x.device,
                              dtype=o.dtype)[None, None, :, None]
        y = self.o_proj(self.merge_heads(self.rescale(o, counts)))
        return y, {"state": s, "position": position + L}

    def extra_repr(self):
        return f"{super().extra_repr()}, form={self.form!r}, chunk_size={self.chunk_size}"


@register_mixer(
    "linear", family="linear attention",
    paper="Katharopoulos et al. 2020, Transformers are RNNs: Fast Autoregressive Transformers "
          "with Linear Attention",
    complexity="O(L D^2)", patterns=ALL_PATTERNS, forms=ALL_FORMS)
class LinearAttention(LinearAttentionBase):
    """Linear attention (Katharopoulos et al. 2020, "Transformers are RNNs"):
    sim(q, k) = phi(q) . phi(k) with phi(x) = elu(x) + 1, normalized by the sum of
    similarities.

    Options: feature_map ("elu", "relu", "identity"), normalize (False gives unnormalized
    linear attention, e.g. with "identity" the linear self-attention of von Oswald et al.
    2023), form, chunk_size, bias.
    """

    def __init__(self, dim, heads=1, causal=False, *, feature_map="elu", normalize=True,
                 form="chunk", chunk_size=64, bias=True):
        super().__init__(dim, heads, causal, form=form, chunk_size=chunk_size, bias=bias)
        if feature_map not in FEATURE_MAPS:
            raise ValueError(f"unknown feature_map {feature_map!r}; valid: "
                             f"{', '.join(FEATURE_MAPS)}")
        if not isinstance(normalize, bool):
            raise TypeError(f"normalize must be a bool, got {normalize!r}")
        self.feature_map, self.normalize = feature_map, normalize
        self._phi = FEATURE_MAPS[feature_map]

    def features(self, q, k):
        return self._phi(q), self._phi(k)


@register_mixer(
    "cosine", family="linear attention",
    paper="Mongaras et al. 2024, Cottention: Linear Transformers With Cosine Attention",
    complexity="O(L D^2)", patterns=ALL_PATTERNS, forms=ALL_FORMS)
class CosineAttention(LinearAttentionBase):
    """Cottention (Mongaras et al. 2024, "Cottention: Linear Transformers With Cosine
    Attention"): sim(q, k) = cos(q, k), no softmax, so (N(Q) N(K)^T) V = N(Q) (N(K)^T V)
    is linear in length. For stability the output is divided by n^sigmoid(m), with n the
    number of keys a query sees and m a learned scalar per head (the paper's stabilized form).
    """

    normalize = False

    def __init__(self, dim, heads=1, causal=False, *, form="chunk", chunk_size=64, bias=True):
        super().__init__(dim, heads, causal, form=form, chunk_size=chunk_size, bias=bias)
        self.length_power = torch.nn.Parameter(torch.zeros(heads))

    def features(self, q, k):
        return F.normalize(q, dim=-1), F.normalize(k, dim=-1)

    def rescale(self, o, counts):
        power = torch.sigmoid(self.length_power).to(o.dtype)[None, :, None, None]
        return o / counts.clamp_min(1.0).to(o.dtype) ** power
