"""Linear-attention mixers: kernel feature maps over one ``ops.linear_attention`` core.

A subclass chooses the feature map (``map_features``, which sees each token's position),
whether the output is normalized by the sum of similarities or post-scaled another way
(``normalize``, ``rescale_output``), and may add a local term (``local_output``).
"""
from __future__ import annotations

import abc

import torch
import torch.nn.functional as F

from attnarena import ops
from attnarena._validate import check_int
from attnarena.mixers.qkv import QKVMixer
from attnarena.registry import FORMS, PATTERNS, register_mixer


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
    streams = True  # a fixed-size state: long inference forwards run in pieces

    def __init__(self, dim, heads=1, causal=False, *, form="chunk", chunk_size=64, bias=True):
        super().__init__(dim, heads, causal, form=form, chunk_size=chunk_size, bias=bias)
        if self.info.decodes and type(self).local_output is not LinearAttentionBase.local_output:
            raise TypeError(f"mixer {self.info.name!r} adds a local_output, which has no "
                            "decoding state: it cannot declare the recurrent form")

    @property
    def feature_dim(self) -> int:
        """Width of the feature-mapped keys (the state's first dimension)."""
        return self.head_dim

    @abc.abstractmethod
    def map_features(self, x, positions, is_query):
        """Feature-map (B, H, N, D) queries (``is_query``) or keys at token ``positions``
        (N,) -> (B, H, N, feature_dim)."""

    def rescale_output(self, o, counts):
        """Post-scale (B, H, L, D) outputs, given (B or 1, 1, L, 1) counts of visible keys."""
        return o

    def local_output(self, x, mask):
        """An extra (B, L, dim) term added before the output projection, or None."""
        return None

    def _mapped(self, q, k, v, start=0):
        """Feature-mapped q, k and v (tokens from position ``start``), in float32 for
        half-precision inputs: feature maps exponentiate or raise to powers, which overflow
        float16's range."""
        wide = ops._checks.compute_dtype(q.dtype)
        q_positions = torch.arange(start, start + q.shape[2], device=q.device)
        k_positions = torch.arange(start, start + k.shape[2], device=k.device)
        return (self.map_features(q.to(wide), q_positions, True),
                self.map_features(k.to(wide), k_positions, False), v.to(wide))

    def _forward(self, x, context, mask):
        q, k, v = self._mapped(*self.project(x, context))
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
        o = self.merge_heads(self.rescale_output(o, counts)).to(x.dtype)
        local = self.local_output(x, mask)
        return self.o_proj(o if local is None else o + local)

    def _init_state(self, batch_size, device, dtype):
        width = self.head_dim + (1 if self.normalize else 0)
        dtype = ops._checks.compute_dtype(dtype)
        return {"state": torch.zeros(batch_size, self.heads, self.feature_dim, width,
                                     device=device, dtype=dtype), "position": 0}

    def _step(self, x_t, state):
        """One token, without the sequence machinery: (B, dim) in, (B, dim) out."""
        position = state["position"]
        q, k, v = self._mapped(*self.project(x_t[:, None]), start=position)
        o, s = ops.linear_attention_step(q[:, :, 0], k[:, :, 0], v[:, :, 0],
                                         state=state["state"], normalize=self.normalize)
        counts = o.new_full((1, 1, 1, 1), position + 1)
        y = self.o_proj(self.merge_heads(self.rescale_output(o[:, :, None], counts))
                        .to(x_t.dtype))
        return y[:, 0], {"state": s, "position": position + 1}

    def _prefill(self, x, state):
        """Causal forward over x continuing from ``state``; it serves step too."""
        position = state["position"]
        q, k, v = self._mapped(*self.project(x), start=position)
        L = x.shape[1]
        form = "recurrent" if L == 1 else self.form
        o, s = ops.linear_attention(q, k, v, causal=True, normalize=self.normalize, form=form,
                                    chunk_size=self.chunk_size,
                                    initial_state=state["state"], return_state=True)
        counts = torch.arange(position + 1, position + L + 1, device=x.device,
                              dtype=o.dtype)[None, None, :, None]
        y = self.o_proj(self.merge_heads(self.rescale_output(o, counts)).to(x.dtype))
        return y, {"state": s, "position": position + L}



@register_mixer(
    "linear", family="linear attention",
    paper="Katharopoulos et al. 2020, Transformers are RNNs: Fast Autoregressive Transformers "
          "with Linear Attention",
    complexity="O(L D^2)", patterns=PATTERNS, forms=FORMS)
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
        if feature_map not in ops.FEATURE_MAPS:
            raise ValueError(f"unknown feature_map {feature_map!r}; valid: "
                             f"{', '.join(ops.FEATURE_MAPS)}")
        if not isinstance(normalize, bool):
            raise TypeError(f"normalize must be a bool, got {normalize!r}")
        self.feature_map, self.normalize = feature_map, normalize
        self._phi = ops.FEATURE_MAPS[feature_map]

    def map_features(self, x, positions, is_query):
        return self._phi(x)


@register_mixer(
    "cosine", family="linear attention",
    step_export_caveat=("its step reads the token's position from a Python int in its state, "
                        "which the trace fixes (the logits differ from the second token on)"),
    paper="Mongaras et al. 2024, Cottention: Linear Transformers With Cosine Attention",
    complexity="O(L D^2)", patterns=PATTERNS, forms=FORMS,
    approximates_softmax=True)
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

    def map_features(self, x, positions, is_query):
        return ops.cosine_features(x)

    def rescale_output(self, o, counts):
        power = torch.sigmoid(self.length_power).to(o.dtype)[None, :, None, None]
        return o / counts.clamp_min(1.0).to(o.dtype) ** power


@register_mixer(
    "flatten", family="linear attention",
    paper="Han et al. 2023, FLatten Transformer: Vision Transformer using Focused Linear "
          "Attention",
    complexity="O(L D^2)", patterns=("self", "causal"), forms=("parallel", "chunk"))
class FocusedLinearAttention(LinearAttentionBase):
    """Focused linear attention (Han et al. 2023): features f_p(relu(x)) that sharpen the
    attention distribution (p = 3 by default), normalized linear attention, and a
    depthwise convolution over the values added to the output to restore feature
    diversity (causal when the mixer is causal).

    Options: focusing_power, conv_kernel, form, chunk_size.
    """

    def __init__(self, dim, heads=1, causal=False, *, focusing_power=3.0, conv_kernel=5,
                 form="chunk", chunk_size=64):
        super().__init__(dim, heads, causal, form=form, chunk_size=chunk_size)
        if focusing_power <= 0:
            raise ValueError(f"focusing_power must be > 0, got {focusing_power}")
        check_int(conv_kernel, "conv_kernel")
        self.focusing_power, self.conv_kernel = focusing_power, conv_kernel
        self.conv = torch.nn.Conv1d(dim, dim, conv_kernel, groups=dim)

    def map_features(self, x, positions, is_query):
        return ops.focused(x, self.focusing_power)

    def local_output(self, x, mask):
        values = self.v_proj(x)
        if mask is not None:
            values = values * mask[..., None].to(values.dtype)
        K = self.conv_kernel
        left = K - 1 if self.causal else K // 2
        padded = F.pad(values.transpose(1, 2), (left, K - 1 - left))
        return self.conv(padded).transpose(1, 2)


@register_mixer(
    "hedgehog", family="linear attention",
    paper="Zhang et al. 2024, The Hedgehog & the Porcupine: Expressive Linear Attentions with "
          "Softmax Mimicry",
    complexity="O(L D^2)", patterns=PATTERNS, forms=FORMS,
    approximates_softmax=True)
class Hedgehog(LinearAttentionBase):
    """Hedgehog (Zhang et al. 2024): a learnable feature map per head,
    phi(x) = [softmax(W x), softmax(-W x)] (W initialized to the identity), trained so
    that normalized linear attention mimics softmax attention; ``distillation_loss``
    is the paper's attention-distillation objective (cross-entropy from the softmax
    attention weights to the linear ones).

    Options: feature_size (rows of W per head, default head_dim; the map has twice as
    many features), form, chunk_size.
    """

    def __init__(self, dim, heads=1, causal=False, *, feature_size=None, form="chunk",
                 chunk_size=64):
        super().__init__(dim, heads, causal, form=form, chunk_size=chunk_size)
        size = self.head_dim if feature_size is None else feature_size
        check_int(size, "feature_size")
        eye = torch.eye(size, self.head_dim).repeat(heads, 1, 1)
        self.feature_weight = torch.nn.Parameter(eye)  # (H, F, D): the identity when square

    @property
    def feature_dim(self) -> int:
        return 2 * self.feature_weight.shape[1]

    def map_features(self, x, positions, is_query):
        return ops.hedgehog_features(x, self.feature_weight)

    def distillation_loss(self, x, mask=None):
        """Cross-entropy between softmax attention weights (the teacher, no gradient) and
        the normalized linear attention weights of the feature maps, over (B, L, dim)."""
        q, k, _ = self.project(x)
        positions = torch.arange(q.shape[2], device=x.device)
        return ops.attention_distillation_loss(
            q, k, self.map_features(q, positions, True), self.map_features(k, positions, False),
            causal=self.causal, mask=mask)


@register_mixer(
    "lolcats", family="linear attention",
    paper="Zhang et al. 2025, LoLCATs: On Low-Rank Linearizing of Large Language Models",
    complexity="O(L W D + L D^2)", patterns=("self", "causal"), forms=("parallel", "chunk"),
    approximates_softmax=True)
class SlidingWindowHedgehog(Hedgehog):
    """LoLCATs' hybrid attention (Zhang et al. 2025): exact softmax weights for the
    ``window`` nearest keys (the most recent ones when causal), Hedgehog's learnable feature
    map for every key outside the window, one normalizer over both
    (``ops.window_linear_attention``). The paper linearizes pretrained models with it,
    window 64.

    Options: window, feature_size, form ("chunk" is linear in length; "parallel" is the
    quadratic reference), chunk_size (blocks of max(chunk_size, window)).
    """

    def __init__(self, dim, heads=1, causal=False, *, window=64, feature_size=None,
                 form="chunk", chunk_size=64):
        super().__init__(dim, heads, causal, feature_size=feature_size, form=form,
                         chunk_size=chunk_size)
        check_int(window, "window")
        self.window = window

    def _forward(self, x, context, mask):
        q, k, v = self.project(x)
        wide = ops._checks.compute_dtype(q.dtype)
        q, k, v = q.to(wide), k.to(wide), v.to(wide)
        positions = torch.arange(q.shape[2], device=q.device)
        fq = self.map_features(q, positions, True)
        fk = self.map_features(k, positions, False)
        o = ops.window_linear_attention(q, k, v, fq, fk, window=self.window,
                                        causal=self.causal, mask=mask, form=self.form,
                                        chunk_size=self.chunk_size)
        return self.o_proj(self.merge_heads(o).to(x.dtype))
