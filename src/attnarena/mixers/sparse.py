"""Fixed sparsity patterns over softmax attention: the Sparse Transformer, Longformer and
BigBird. Each computes softmax attention under its (L, L) boolean pattern (``ops.sparse``)
by a block-sparse kernel that touches only the attended blocks, so each equals softmax
attention with that explicit mask (checked in the tests) at a cost linear in the pattern's
size."""
from __future__ import annotations

import abc

import torch

from attnarena._validate import check_int
from attnarena import ops
from attnarena.mixers.softmax import DotProductAttention
from attnarena.registry import register_mixer


class PatternAttention(DotProductAttention):
    """Softmax attention restricted to ``pattern(L, device)``, computed by a block-sparse
    kernel that touches only the attended blocks (``sparse_attention``); the dense masked
    form (``dense_attention``) is the reference it is tested against. No decoding form."""

    @abc.abstractmethod
    def pattern(self, L, device) -> torch.Tensor:
        """(L, L) bool: True where query i may attend to key j."""

    @abc.abstractmethod
    def sparse_attention(self, q, k, v, mask, alibi_slopes, dropout):
        """The block-sparse kernel of ``ops.sparse`` for this pattern."""

    def dense_attention(self, q, k, v, mask):
        """Softmax attention under the explicit (L, L) pattern: O(L^2) time and memory."""
        return ops.pattern_attention(q, k, v, self.pattern(q.shape[2], q.device),
                                     causal=self.causal, mask=mask,
                                     alibi_slopes=self.alibi_slopes,
                                     dropout=self.attn_dropout if self.training else 0.0)

    def _attend(self, q, k, v, mask):
        return self.sparse_attention(q, k, v, mask, self.alibi_slopes,
                                     self.attn_dropout if self.training else 0.0)


@register_mixer(
    "sparse", family="sparse attention",
    export_caveat=("its masked attention calls torch's CPU flash-attention kernel, which has no "
                   "ONNX operator"),
    paper="Child et al. 2019, Generating Long Sequences with Sparse Transformers",
    complexity="O(L sqrt(L) D)", patterns=("self", "causal"), forms=("parallel",),
    approximates_softmax=True)
class SparseAttention(PatternAttention):
    """Sparse Transformer factorized attention (Child et al. 2019), both factors merged in
    one pattern. ``strided``: the previous ``block`` positions and every ``block``-th one
    before them. ``fixed``: positions in the same block of ``block`` tokens, and the last
    ``summary`` positions of every block. Noncausal use mirrors the pattern.

    Options: kind ("strided" or "fixed"), block, summary.
    """

    def __init__(self, dim, heads=1, causal=False, *, kind="fixed", block=32, summary=4,
                 attn_dropout=0.0):
        super().__init__(dim, heads, causal, attn_dropout=attn_dropout)
        if kind not in ("strided", "fixed"):
            raise ValueError(f"kind must be 'strided' or 'fixed', got {kind!r}")
        check_int(block, "block")
        check_int(summary, "summary")
        if summary > block:
            raise ValueError(f"summary ({summary}) cannot exceed block ({block})")
        self.kind, self.block, self.summary = kind, block, summary

    def pattern(self, L, device):
        if self.kind == "strided":
            return ops.sparse.strided_pattern(L, self.block, device)
        return ops.sparse.fixed_pattern(L, self.block, self.summary, device)

    def sparse_attention(self, q, k, v, mask, alibi_slopes, dropout):
        options = dict(causal=self.causal, mask=mask, alibi_slopes=alibi_slopes,
                       dropout=dropout)
        if self.kind == "strided":
            return ops.sparse.strided_attention(q, k, v, self.block, **options)
        return ops.sparse.fixed_attention(q, k, v, self.block, self.summary, **options)


@register_mixer(
    "longformer", family="sparse attention",
    export_caveat=("its masked attention calls torch's CPU flash-attention kernel, which has no "
                   "ONNX operator"),
    paper="Beltagy et al. 2020, Longformer: The Long-Document Transformer",
    complexity="O(L (W + G) D)", patterns=("self",), forms=("parallel",),
    approximates_softmax=True)
class Longformer(PatternAttention):
    """Longformer (Beltagy et al. 2020): sliding-window attention over ``window`` keys
    centred on each query, plus ``global_tokens`` leading positions that attend to and are
    attended by every position.

    Options: window (keys per query, centred), global_tokens.
    """

    def __init__(self, dim, heads=1, causal=False, *, window=64, global_tokens=1,
                 attn_dropout=0.0):
        super().__init__(dim, heads, causal, attn_dropout=attn_dropout)
        check_int(window, "window")
        check_int(global_tokens, "global_tokens", minimum=0)
        self.window, self.global_tokens = window, global_tokens

    def pattern(self, L, device):
        return ops.sparse.longformer_pattern(L, self.window, self.global_tokens, device)

    def sparse_attention(self, q, k, v, mask, alibi_slopes, dropout):
        return ops.sparse.longformer_attention(q, k, v, self.window, self.global_tokens,
                                               mask=mask, alibi_slopes=alibi_slopes,
                                               dropout=dropout)


@register_mixer(
    "bigbird", family="sparse attention",
    export_caveat=("seeds its random blocks' generator from the input's shape, a tensor while "
                   "tracing (torch.manual_seed takes an int)"),
    paper="Zaheer et al. 2020, Big Bird: Transformers for Longer Sequences",
    complexity="O(L (3 + G + R) B D)", patterns=("self",), forms=("parallel",),
    approximates_softmax=True)
class BigBird(PatternAttention):
    """BigBird (Zaheer et al. 2020) block-sparse attention over blocks of ``block`` tokens:
    each query block sees its own and the two neighbouring blocks, ``global_blocks``
    leading blocks (which see everything), and ``random_blocks`` random key blocks drawn
    once per sequence length from ``seed`` (fixed, so the layer is deterministic).

    Options: block, global_blocks, random_blocks, seed.
    """

    def __init__(self, dim, heads=1, causal=False, *, block=16, global_blocks=1,
                 random_blocks=2, seed=0, attn_dropout=0.0):
        super().__init__(dim, heads, causal, attn_dropout=attn_dropout)
        check_int(block, "block")
        for name, value in (("global_blocks", global_blocks), ("random_blocks", random_blocks)):
            check_int(value, name, minimum=0)
        self.block, self.global_blocks, self.random_blocks, self.seed = (
            block, global_blocks, random_blocks, seed)

    def block_pattern(self, n):
        """(n, n) bool over blocks."""
        return ops.sparse.bigbird_blocks(n, self.global_blocks, self.random_blocks, self.seed)

    def pattern(self, L, device):
        return ops.sparse.bigbird_pattern(L, self.block, self.global_blocks,
                                          self.random_blocks, self.seed, device)

    def sparse_attention(self, q, k, v, mask, alibi_slopes, dropout):
        return ops.sparse.bigbird_attention(q, k, v, self.block, self.global_blocks,
                                            self.random_blocks, self.seed, mask=mask,
                                            alibi_slopes=alibi_slopes, dropout=dropout)
